"""Smoke test of ``python -m skselflabel.demo`` with a tiny training budget."""
import pytest

from skselflabel import demo

pytestmark = pytest.mark.slow  # integration: `make test-fast` leaves it out


def test_demo_prints_the_comparison_and_saves_grids(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    rows = demo.run(tmp_path, inputs=("table", "images"), max_epochs=2)
    methods = [(r[0], r[1]) for r in rows]
    assert methods == [("KMeans(10)", "table"), ("Ward agglomerative", "table"),
                       ("SelfLabelClusterer", "table"), ("SelfLabelClusterer", "images")]
    for _, _, acc, nmi, ari, seconds in rows:
        assert 0 <= acc <= 1 and 0 <= nmi <= 1 and -1 <= ari <= 1 and seconds >= 0
    # The baselines are deterministic: the numbers quoted in the issue.
    assert rows[0][2] == pytest.approx(0.792, abs=0.01)
    assert rows[1][2] == pytest.approx(0.840, abs=0.01)
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
