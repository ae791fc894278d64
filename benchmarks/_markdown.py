"""Shared pieces of the generated markdown: the provenance line of a section."""
import statistics


def _load(values):
    return "not recorded" if values is None else f"{values[0]:.1f}"


def source(r, stem):
    """Command, commit, date, machine, load and threads of one result file, in one paragraph.

    Result files written before these fields existed (the first scale_*.json) say what they
    lack instead."""
    machine = r.get("machine")
    if isinstance(machine, dict):
        machine = (f"{machine['cpu']}, {machine['cores']} cores, "
                   f"{machine.get('memory_gib', '?')} GiB, Python {machine['python']}")
    load_start = r.get("load_start")
    load_end = r.get("load_end")
    if isinstance(load_start, (int, float)):
        load_start = [load_start]
    if isinstance(load_end, (int, float)):
        load_end = [load_end]
    threads = r.get("threads") or {"fit": r.get("fit_threads")}
    versions = r.get("versions")
    parts = [f"Command: `{r['command']}`",
             f"commit {r['commit'][:12]}" if r.get("commit") else "commit not recorded",
             (r["date"][:10] if r.get("date") else "date not recorded"),
             f"budget: {r.get('budget', 'full')}"]
    text = "; ".join(parts) + ". "
    text += f"Machine: {machine}; 1-minute load average {_load(load_start)} at the start, "
    text += f"{_load(load_end)} at the end; "
    text += "threads: " + ", ".join(f"{k} {v}" for k, v in threads.items() if v is not None)
    if versions:
        text += "; " + ", ".join(f"{k} {v}" for k, v in versions.items())
    folder = "results/quick" if r.get("budget") == "quick" else "results"
    return text + f". Raw figures: `benchmarks/{folder}/{stem}.json`."


def budget(settings):
    """``{"max_epochs": 2}`` as "max_epochs=2"."""
    return ", ".join(f"{k}={v!r}" for k, v in settings.items())


def quick_banner(r):
    if r.get("budget") == "quick":
        return ("> Quick budget (`make bench`): a check that the benchmark runs, not the "
                "measurement; `make bench FULL=1` gives the published one.\n\n")
    return ""


def median(values):
    return statistics.median(values)


def table(head, rows):
    """A markdown table from a header list and rows of cells."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
