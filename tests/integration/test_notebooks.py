"""Every example notebook runs top to bottom on the small budget (SKSELFLABEL_QUICK=1).

The kernel is this interpreter's own: a kernelspec pointing at ``sys.executable`` is written
to a temporary directory, so the test needs no kernel installed by hand and cannot pick up
another Python from the machine.
"""
import json
import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the dev extra is not installed")
nbclient = pytest.importorskip("nbclient", reason="the dev extra is not installed")

from skselflabel.datasets import load_fashion_mnist  # noqa: E402

pytestmark = pytest.mark.slow  # integration: `make test-fast` leaves it out

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
KERNEL = "skselflabel-test-python"


def _fashion_mnist_missing():
    try:
        load_fashion_mnist(split="test", return_X_y=True)
    except FileNotFoundError:
        return True
    return False


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """Environment for the kernel: quick budget, and a kernelspec for this interpreter."""
    jupyter_path = tmp_path_factory.mktemp("jupyter")
    spec_dir = jupyter_path / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "skselflabel tests",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return {
        "SKSELFLABEL_QUICK": "1",
        "JUPYTER_PATH": os.pathsep.join(
            [str(jupyter_path)] + [p for p in [os.environ.get("JUPYTER_PATH")] if p]
        ),
        # Plots render off screen; no display is needed.
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    }


def test_every_notebook_is_tested_and_stored_without_outputs():
    names = [p.name for p in NOTEBOOKS]
    assert names == [
        "01_quickstart.ipynb",
        "02_fashion_mnist.ipynb",
        "03_balanced_assignment.ipynb",
    ]
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, kernel_env, monkeypatch):
    if "fashion_mnist" in path.name and _fashion_mnist_missing():
        pytest.skip(
            "Fashion-MNIST files not found (apt-get install dataset-fashion-mnist, or set "
            "SKSELFLABEL_FASHION_MNIST_HOME); CI installs them"
        )
    for name, value in kernel_env.items():
        monkeypatch.setenv(name, value)
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, kernel_name=KERNEL, timeout=300, resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any error
    errors = [out for cell in nb.cells if cell.cell_type == "code"
              for out in cell.outputs if out.output_type == "error"]
    assert not errors
    # The figures were drawn: every plotting cell produced an image.
    images = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
              if "image/png" in out.get("data", {})]
    plotting_cells = [cell for cell in nb.cells if cell.cell_type == "code"
                      and (cell.source.strip().splitlines()[-1].startswith("plot_")
                           or "plt.show()" in cell.source)]
    assert len(images) >= len(plotting_cells) > 0
