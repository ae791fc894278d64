"""Smoke test of ``python -m skselflabel.demo`` with a tiny training budget."""
import pytest

from skselflabel import demo

pytestmark = pytest.mark.slow  # integration: `make test-fast` leaves it out


def test_demo_beats_kmeans_and_ward_as_the_readme_says(tmp_path, capsys):
    # The README: at its default budget, SelfLabelClusterer clusters the digits better than
    # KMeans and Ward, on the table and on the images (ACC and NMI).
    pytest.importorskip("matplotlib")
    rows = demo.run(tmp_path, inputs=("table", "images"))
    methods = [(r[0], r[1]) for r in rows]
    assert methods == [("KMeans(10)", "table"), ("Ward agglomerative", "table"),
                       ("SelfLabelClusterer", "table"), ("SelfLabelClusterer", "images")]
    baselines = {r[0]: r for r in rows[:2]}
    # The baselines are deterministic.
    assert baselines["KMeans(10)"][2] == pytest.approx(0.792, abs=0.01)
    assert baselines["Ward agglomerative"][2] == pytest.approx(0.840, abs=0.01)
    for _, form, acc, nmi, ari, seconds in rows[2:]:
        for name, base in baselines.items():
            assert acc > base[2] and nmi > base[3], (form, name, acc, nmi, base)
    out = capsys.readouterr().out
    assert "ACC" in out and "SelfLabelClusterer" in out
    assert (tmp_path / "digits_table_clusters.png").stat().st_size > 1000
    assert (tmp_path / "digits_images_clusters.png").stat().st_size > 1000


def test_demo_command_line_parses(monkeypatch):
    seen = {}
    monkeypatch.setattr(demo, "run", lambda *a, **k: seen.update(args=a, kwargs=k))
    assert demo.main(["--input", "table", "--no-plot", "--output", "x"]) == 0
    assert seen["args"] == ("x", ("table",))
    assert seen["kwargs"] == {"verbose": 0, "plot": False}
