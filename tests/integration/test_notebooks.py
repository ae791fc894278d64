"""Every example notebook runs top to bottom on the small budget (SKSELFLABEL_QUICK=1).

The kernel is this interpreter's own: a kernelspec pointing at ``sys.executable`` is written
to a temporary directory, so the test needs no kernel installed by hand and cannot pick up
another Python from the machine.
"""
import json
import os
import re
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the dev extra is not installed")
nbclient = pytest.importorskip("nbclient", reason="the dev extra is not installed")

from skselflabel.datasets import fashion_mnist_available  # noqa: E402

pytestmark = pytest.mark.slow  # integration: `make test-fast` leaves it out

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
KERNEL = "skselflabel-test-python"


def _fashion_mnist_missing():
    return not fashion_mnist_available()


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


@pytest.fixture(scope="module")
def executed(kernel_env):
    """A function returning the notebook at a path, executed once per test module."""
    done = {}

    def run(path):
        if "fashion_mnist" in path.name and _fashion_mnist_missing():
            pytest.skip(
                "Fashion-MNIST files not found (apt-get install dataset-fashion-mnist, or "
                "set SKSELFLABEL_FASHION_MNIST_HOME); CI installs them"
            )
        if path not in done:
            nb = nbformat.read(path, as_version=4)
            client = nbclient.NotebookClient(
                nb, kernel_name=KERNEL, timeout=300,
                resources={"metadata": {"path": str(path.parent)}},
            )
            with pytest.MonkeyPatch.context() as patch:
                for name, value in kernel_env.items():
                    patch.setenv(name, value)
                client.execute()  # raises CellExecutionError (cell and traceback) on error
            done[path] = nb
        return done[path]

    return run


def _text(output):
    return output.get("text", "") + output.get("data", {}).get("text/plain", "")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, executed):
    nb = executed(path)
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


# ------------------------------------------------------------ claims true of the outputs
# Notebook 01's balance claim for the budget the tests run: a bold sentence "at the quick
# budget the self-labels are balanced" or "... are not balanced"; balanced means every
# cluster within BALANCE_TOLERANCE of N / K. (Its full-budget claim is checked by hand.)
BALANCE_CLAIM = re.compile(r"\*\*at the quick budget the self-labels are (not )?balanced\*\*", re.I)
BALANCE_TOLERANCE = 0.10


def _sizes_after(nb, claim_cell):
    """The self_labels_ row of the first table shown after the claim: cluster sizes."""
    for cell in nb.cells[claim_cell + 1:]:
        for out in cell.get("outputs", []):
            for line in out.get("data", {}).get("text/plain", "").splitlines():
                if line.startswith("self_labels_"):
                    return [int(v) for v in line.split()[1:]]
    raise AssertionError("no self_labels_ sizes shown after the balance claim")


def test_quickstart_balance_claim_is_true_of_its_output(executed):
    nb = executed(ROOT / "notebooks" / "01_quickstart.ipynb")
    claims = [(i, m) for i, cell in enumerate(nb.cells) if cell.cell_type == "markdown"
              for m in BALANCE_CLAIM.finditer(cell.source.replace("\n", " "))]
    assert len(claims) == 1, "notebook 01 must say once whether the quick budget's " \
                             "self-labels are balanced"
    index, claim = claims[0]
    sizes = _sizes_after(nb, index)
    per_cluster = sum(sizes) / len(sizes)
    balanced = all(abs(s - per_cluster) <= BALANCE_TOLERANCE * per_cluster for s in sizes)
    claims_balanced = claim.group(1) is None
    assert balanced == claims_balanced, (
        f"notebook 01 says the self-labels are {'' if claims_balanced else 'not '}balanced, "
        f"but its output shows sizes {sizes} (N / K = {per_cluster:.0f})")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebooks_print_no_progress_warning(path, executed):
    # tqdm.auto printed "TqdmWarning: IProgress not found" where ipywidgets was missing.
    outputs = [_text(out) for cell in executed(path).cells if cell.cell_type == "code"
               for out in cell.outputs]
    assert not [t for t in outputs if "TqdmWarning" in t or "IProgress not found" in t]


def test_fashion_notebook_shows_the_progress_bar_it_promises(executed):
    nb = executed(ROOT / "notebooks" / "02_fashion_mnist.ipynb")
    fit = next(cell for cell in nb.cells if cell.cell_type == "code"
               and "verbose=1" in cell.source)
    shown = "".join(_text(out) for out in fit.outputs)
    assert re.search(r"SelfLabelClusterer: 100%.*\d+/\d+ \[", shown), shown


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if "balanced_assignment" not in p.name],
                         ids=lambda p: p.stem)
def test_notebooks_that_train_say_at_the_top_what_the_quick_budget_shows(path):
    # The docs site runs them on the quick budget, which scores worse than the README: the
    # first cell must say so before any output.
    first = nbformat.read(path, as_version=4).cells[0]
    assert first.cell_type == "markdown"
    text = " ".join(first.source.split())
    assert "Read this first" in text and "quick mode" in text and "README" in text
