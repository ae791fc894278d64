"""The documentation site builds with warnings treated as errors (what `make docs` runs)."""
import importlib.util
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from skselflabel.datasets import fashion_mnist_available

pytestmark = pytest.mark.slow  # integration: `make test-fast` leaves it out

ROOT = Path(__file__).resolve().parents[2]
# Anything a page would fetch from another site: the site must work offline.
REMOTE_ASSET = re.compile(r"""<(?:script|link|img|iframe)\b[^>]*(?:src|href)=["'](?:https?:)?//""")
CDN = re.compile(r"cdn\.|jsdelivr|unpkg|cdnjs|googleapis|mathjax\.org|polyfill\.io")


def _fashion_mnist_missing():
    return not fashion_mnist_available()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site built as `make docs` builds it (notebooks executed on the quick budget)."""
    tmp_path = tmp_path_factory.mktemp("docs")
    out = tmp_path / "html"
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         "-d", str(tmp_path / "doctrees"), str(ROOT / "docs"), str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, (
        f"sphinx failed (exit {result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    )
    return out


def test_docs_build_without_warnings(site):
    out = site
    # The pages the issue asks for exist and carry their content.
    for page in ["index", "getting_started", "user_guide", "api", "benchmarks", "notebooks",
                 "distributed"]:
        assert (out / f"{page}.html").is_file(), page
    several = (out / "distributed.html").read_text()
    for topic in ("One machine", "Several machines", "SLURM", "on a laptop", "torchrun"):
        assert topic in several, topic
    assert "distributed.html" in (out / "index.html").read_text()      # in the toctree
    api = (out / "generated" / "skselflabel.SelfLabelClusterer.html").read_text()
    assert "n_clusters" in api and "fit" in api
    assert (out / "generated" / "skselflabel.SinkhornAssigner.html").is_file()
    assert (out / "generated" / "skselflabel.datasets.load_fashion_mnist.html").is_file()
    guide = (out / "user_guide.html").read_text()
    assert "Sinkhorn" in guide and "math" in guide  # the math is rendered, not raw dollars
    assert "$$" not in guide
    rendered = sorted(p.stem for p in (out / "notebooks").glob("*.html"))
    expected = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert rendered == expected


def test_pages_load_nothing_from_other_sites(site):
    pages = sorted(site.rglob("*.html"))
    assert len(pages) > 10
    for page in pages:
        html = page.read_text()
        assert not REMOTE_ASSET.search(html), (page.name, REMOTE_ASSET.search(html).group())
        assert not CDN.search(html), (page.name, CDN.search(html).group())


def test_math_is_served_by_the_site(site):
    guide = (site / "user_guide.html").read_text()
    script = re.search(r'<script[^>]*src="(_static/mathjax/[^"]+)"', guide)
    assert script, "the user guide does not load MathJax from _static"
    assert (site / script.group(1).split("?")[0]).stat().st_size > 100_000
    # MathJax's fonts are there too (they load relative to the script).
    assert list((site / "_static" / "mathjax" / "output" / "chtml" / "fonts").rglob("*.woff"))


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb")))
def test_notebook_pages_show_outputs_and_figures(site, name):
    if "fashion_mnist" in name and _fashion_mnist_missing():
        pytest.skip("Fashion-MNIST files not found: the build shows that notebook as code")
    html = (site / "notebooks" / f"{name}.html").read_text()
    images = re.findall(r'<img[^>]*src="([^"]+)"', html)
    assert images, f"{name}: no figure on the page"
    for src in images:
        assert (site / "notebooks" / src).resolve().is_file(), src
    assert "cell_output" in html


def test_docs_fall_back_to_remote_math_without_the_offline_extension(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "sphinx-mathjax-offline"
                        else real(name, *a, **k))
    monkeypatch.setenv("SKSELFLABEL_DOCS_EXECUTE", "0")
    conf = runpy.run_path(str(ROOT / "docs" / "conf.py"))
    assert "sphinx.ext.mathjax" in conf["extensions"]
    assert "sphinx-mathjax-offline" not in conf["extensions"] and "mathjax_path" not in conf
    assert "sphinx-mathjax-offline is not installed" in capsys.readouterr().out
    monkeypatch.setattr(importlib.util, "find_spec", real)
    conf = runpy.run_path(str(ROOT / "docs" / "conf.py"))
    assert "sphinx-mathjax-offline" in conf["extensions"]
    assert conf["mathjax_path"] == "mathjax/tex-chtml.js"
