"""What the README, the docs and the CHANGELOG state about the code holds for the code."""
import re
from pathlib import Path

from skselflabel._fit import config

ROOT = Path(__file__).resolve().parents[2]


def _unreleased():
    text = (ROOT / "CHANGELOG.md").read_text()
    return text.split("## [Unreleased]", 1)[1].split("\n## [", 1)[0]


def test_every_path_the_changelog_names_exists():
    paths = set(re.findall(r"`((?:tests|skselflabel|benchmarks|docs|notebooks)/[\w/.-]+)`",
                           _unreleased()))
    assert paths
    # Folders that make bench writes (not tracked) are named as places, not files.
    generated = ("benchmarks/results/quick",)
    missing = sorted(p for p in paths
                     if not (ROOT / p).exists() and not p.startswith(generated))
    assert not missing, f"the CHANGELOG names paths that do not exist: {missing}"


def test_the_changelog_gives_the_diffusion_rule_of_the_code():
    # The rule in force, with the constants of _fit/config.py; an older rule may be named
    # only as replaced.
    rule = (f"`{config.DIFFUSION_STEPS_AT_200:g} * sqrt(n / n_clusters / 200)`, within "
            f"[{config.MIN_DIFFUSION_STEPS:g}, {config.MAX_DIFFUSION_STEPS:g}]")
    text = " ".join(_unreleased().split())
    assert rule in text
    for old in re.finditer(r"`20 \* sqrt\(n / 2000\)`", text):
        assert "replaced" in text[max(0, old.start() - 80):old.start()]


def test_the_docs_call_labels_what_the_code_makes_them():
    # Nothing balances labels_ (the network's own answer); only self_labels_ are sized.
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for line in page.read_text().splitlines():
            if "labels_" in line and "self_labels_" not in line:
                assert not re.search(r"labels_\W.*balanced clusters", line), (page, line)
