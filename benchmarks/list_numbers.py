"""List every measured number in README.md and docs/*.md with where it comes from.

    python benchmarks/list_numbers.py          # the list; exit 1 if a number has no source

A number is accounted for when it stands in a block ``<!-- BEGIN name -->...<!-- END name -->``
that either names its result file (``benchmarks/results/<file>.json``, which must exist) or
says it was measured by hand with its command (``**Measured by hand** ... `command` ``).
Outside such blocks, a number that looks measured (a decimal such as 0.913, or a quantity
with a unit: 45 s, 1.6 GiB, 5.3x, 8 %) must be one of the ``NOT_MEASURED`` figures below
(parameters, definitions, figures from papers); anything else is reported as unaccounted.
Code (fenced blocks, inline code), math and links are not prose and are left out.
"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"<!-- BEGIN ([^>]*?) -->(.*?)<!-- END [^>]*?-->", re.S)
RESULT = re.compile(r"benchmarks/results/([\w/]+\.json)")
HAND = re.compile(r"\*\*Measured by hand\*\*[^`]*`([^`]+)`", re.S)
MEASURED = re.compile(
    r"(?<![\w.=<>:])(\d[\d,]*\.\d+(?![\d.]|-million)|\d[\d,]*(?:\.\d+)?"
    r"(?:\s?(?:s|ms|min|minutes|GiB|MiB|GB|KiB|%|iterations)|x)(?![\w]))")
# Versions and citations: "Python >= 3.10", "CUDA 12.6", "scikit-learn >= 1.9".
VERSION = re.compile(r"(>=|==|CUDA|Python|PyTorch|torch|scikit-learn|version)\s*$")

# Figures outside generated blocks that are not measurements: (text around it, why).
NOT_MEASURED = {
    "between 0.5 and 1.5 times its share": "the default size_tolerance (a parameter)",
    "$\\varepsilon = 0.05$": "SwAV's published setting",
    "DEC 0.62 / 0.65, ClusterGAN 0.63 / 0.64": "published results, cited",
    "N2D 0.672 / 0.684": "published results, cited",
    "lower than 0.9 x `tol`": "a rule of the solver",
    "only below\n  0.9 x `tol`": "a rule of the solver",
    "only below 0.9 x `tol`": "a rule of the solver",
    "floored at $0.25 / K$": "a constant of the code",
    "a floor of $0.5 / K$": "a setting compared",
    "(0.7 of the old proportions kept)": "a setting compared",
    "1.3 x `n x n_clusters x 4` bytes": "memory formula of score (counted by the code)",
    "4.0 x": "memory formula before the change",
    "256 MiB": "a constant of the code",
    "less than 16 MiB": "a constant of the code (UNCHECKED_BELOW)",
    "for at most 100,000 rows and 10 million rows times": "constants of the code "
                                                         "(KMEANS_MAX_SAMPLES, _CELLS)",
    "at most 100,000 rows and 10 million rows": "constants of the code (KMEANS_MAX_*)",
    "has not halved over 25 iterations": "a constant of the solver (SETTLE_WINDOW)",
    "most 1% of the mass sits in the wrong columns": "a constant of the solver "
                                                     "(SETTLE_MASS)",
    "0.8 is two equal groups about 2.6 standard": "a constant of the code "
                                                  "(BIMODAL_KURTOSIS) and its arithmetic",
    "costs about 1.6 times a fit": "arithmetic: four trials of a fifth of the epochs, then "
                                   "the remaining four fifths",
    "trains 2.4 times the epochs of one run instead of 1.6": "arithmetic: four trials of "
                                   "a fifth of the epochs, then four fifths twice",
}


def _prose(text):
    """``text`` with code, math, comments and link targets blanked (offsets kept)."""
    def blank(m):
        return re.sub(r"[^\n]", " ", m.group(0))
    for pattern in (r"```.*?```", r"`[^`\n]*`", r"\$\$.*?\$\$", r"\$[^$\n]*\$",
                    r"\]\([^)]*\)", r"<!--.*?-->"):
        text = re.sub(pattern, blank, text, flags=re.S)
    return text


def accounted_blocks(text):
    """[(start, end, source)] of the blocks in ``text``; source None when the block has
    neither a result file nor a hand mark."""
    found = []
    for m in BLOCK.finditer(text):
        body = m.group(2)
        hand = HAND.search(body)
        files = list(RESULT.finditer(body))
        if hand and not files:
            command = re.sub(r"\n\s*>", " ", hand.group(1))       # a command across quoted lines
            source = f"measured by hand: {' '.join(command.split())}"
            found.append((m.start(), m.end(), m.group(1), source))
            continue
        # A block may hold several subsections, each naming its file before its numbers:
        # a number belongs to the file named last before it (or first, if none is).
        starts = [m.start(2)] + [m.start(2) + f.start() for f in files[1:]] + [m.end()]
        for i, f in enumerate(files):
            exists = (ROOT / "benchmarks" / "results" / f.group(1)).exists()
            source = f"result file benchmarks/results/{f.group(1)}" if exists else None
            found.append((starts[i], starts[i + 1], m.group(1), source))
        if not files:
            found.append((m.start(), m.end(), m.group(1), None))
    return found


def _allowed(text, pos):
    for context, why in NOT_MEASURED.items():
        for m in re.finditer(re.escape(context), text):
            if m.start() <= pos < m.end():
                return why
    return None


def listing():
    """[(page, line, number, source or None)] for every measured-looking number."""
    rows = []
    for page in PAGES:
        text = page.read_text()
        prose = _prose(text)
        blocks = accounted_blocks(text)
        for m in MEASURED.finditer(prose):
            pos = m.start()
            if VERSION.search(prose[max(0, pos - 20):pos]):
                continue
            line = text.count("\n", 0, pos) + 1
            block = next((b for b in blocks if b[0] <= pos < b[1]), None)
            if block is not None:
                source = block[3]
            else:
                why = _allowed(text, pos)
                source = f"not a measurement: {why}" if why else None
            rows.append((page.relative_to(ROOT), line, m.group(1).strip(), source))
    return rows


def main():
    rows = listing()
    width = max(len(f"{p}:{l}") for p, l, _, _ in rows)
    for page, line, number, source in rows:
        print(f"{f'{page}:{line}':{width}}  {number:>12}  {source or 'UNACCOUNTED'}")
    missing = [r for r in rows if r[3] is None]
    print(f"\n{len(rows)} numbers: {len(rows) - len(missing)} accounted for, "
          f"{len(missing)} unaccounted.")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
