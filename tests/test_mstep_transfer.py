"""The M-step transfer sweep: its params fail in one line naming the key, its table draws its figure."""

import pytest

from lt_utils.sweeps import mstep_transfer as mt


def test_cells_must_be_multiple_and_steps_pairs():
    with pytest.raises(ValueError, match="cells"):
        mt.MStepTransferConfig(cells=[[4]])
    with pytest.raises(ValueError, match="cells"):
        mt.MStepTransferConfig(cells=[[0, 3000]])
    with pytest.raises(ValueError, match="measure_chunks"):
        mt.MStepTransferConfig(measure_chunks=0)


def test_a_missing_run_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    params = tmp_path / "params" / "p"
    params.mkdir(parents=True)
    (params / mt.PARAMS_FILE).write_text(f"run: {tmp_path / 'nowhere' / '03_bootstrap_em'}\n")
    monkeypatch.setattr(mt, "PARAMS_DIR", tmp_path / "params")
    assert mt.main(["--params", "p"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "nowhere" in err and "\n" not in err


def test_the_figure_draws_from_its_table(tmp_path):
    rows = [{"source": src, "multiple": m, "steps": s, "seed": seed, "docs": 2000 * m, "trained_on_correct": 0.46,
             "sample_correct": 0.3 + 0.01 * m, "rho": (0.3 + 0.01 * m) / 0.46, "retention": 0.6, "repair": 0.1,
             "dev_accuracy": 0.5, "test_accuracy": 0.55, "n_chunks": 10}
            for src, m, s, seed in (("study", 1, 3000, 0), ("study", 1, 3000, 1), ("sweep", 1, 1500, 0),
                                    ("sweep", 4, 3000, 0), ("sweep", 4, 6000, 0))]
    df = mt.build_table(rows)
    assert list(df["steps"][:3]) == [1500, 3000, 3000]
    paths = mt.draw(df, tmp_path)
    assert {p.suffix for p in paths} == {".pdf", ".png"} and all(p.stat().st_size > 0 for p in paths)
