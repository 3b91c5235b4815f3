"""The loop-gain map: grid expansion and sharing, the table from E-step summaries, the figure, one tiny map end to end."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.patches import Rectangle

from lt_utils.runtime.config import ConfigError
from lt_utils.loop_diagnostics import Check, estep_diagnostics
from lt_utils.sweeps import loop_map as lm

OK, WRONG = Check(True, True, False), Check(False, False, False)


def _cfg(**kw):
    base = dict(name="t", run_root="/tmp/unused", profile="smoke", row_values=[0.0, 0.1, 0.3], col_values=[10, 20, 40])
    return lm.LoopMapConfig(**{**base, **kw})


def test_grid_shares_data_warmstart_and_estep_across_mstep_budgets():
    cells = lm.expand(_cfg())
    assert [(c.row_value, c.col_value) for c in cells] == [(r, s) for r in (0.0, 0.1, 0.3) for s in (10, 20, 40)]
    assert len({c.cell_id for c in cells}) == 9
    for key in ("data_id", "warm_id", "estep_id"):      # one per base: the budget does not touch them
        assert len(lm._unique(cells, key)) == 3
        for r in (0.0, 0.1, 0.3):
            assert len({getattr(c, key) for c in cells if c.row_value == r}) == 1
    c = cells[4]
    assert c.data_params["base_worked_share"] == 0.1 and c.boot_params["steps"] == 20
    assert c.boot_params["study"] == c.data_params["study"] == c.data_id
    assert c.boot_params["iterations"] == 2 and c.boot_params["k_ablation"] == [] and c.boot_params["baselines"] == []


def test_ablation_adds_labelled_cells_that_share_the_warmstart_not_the_estep():
    cells = lm.expand(_cfg(ablation={"estep_temperature": 0.7}, ablation_rows=[0.1]))
    extra = [c for c in cells if c.variant != lm.BASELINE_VARIANT]
    assert len(cells) == 12 and len(extra) == 3
    assert {c.variant for c in extra} == {"estep_temperature=0.7"}
    assert all(c.boot_params["estep_temperature"] == 0.7 and c.row_value == 0.1 for c in extra)
    plain = [c for c in cells if c.variant == lm.BASELINE_VARIANT and c.row_value == 0.1]
    assert {c.warm_id for c in extra} == {c.warm_id for c in plain}          # same warmstart model
    assert {c.estep_id for c in extra}.isdisjoint({c.estep_id for c in plain})   # its own proposal
    assert len(lm._unique(cells, "warm_id")) == 3 and len(lm._unique(cells, "estep_id")) == 4


def test_axes_are_parameters_and_a_warmstart_axis_splits_the_warmstarts():
    cells = lm.expand(_cfg(row_param="warmstart_steps", row_values=[5, 10], col_param="base_steps",
                           col_values=[3, 6]))
    assert len(lm._unique(cells, "data_id")) == 2          # base_steps is stage 01
    assert len(lm._unique(cells, "warm_id")) == 4          # every (base, warmstart) pair trains its own warmstart
    assert {c.boot_params["warmstart_steps"] for c in cells} == {5, 10}
    assert {c.data_params["base_steps"] for c in cells} == {3, 6}


@pytest.mark.parametrize("kw, message", [
    (dict(row_param="no_such_param"), "unknown parameter 'no_such_param'"),
    (dict(col_param="seeds"), "'seeds' is set by the map itself"),
    (dict(ablation={"estep_temperature": 0.7}, ablation_rows=[0.2]), "ablation_rows: 0.2"),
    (dict(col_values=[10, 10]), "col_values: a value is listed twice"),
])
def test_bad_map_params_fail_in_one_line(kw, message):
    with pytest.raises(ConfigError, match=message):
        _cfg(**kw)


def test_overrides_must_belong_to_their_stage():
    with pytest.raises(ConfigError, match="data_prep: 'steps' is a parameter of the other stage"):
        lm.expand(_cfg(data_prep={"steps": 5}))


def test_bad_cell_value_names_the_cell():
    with pytest.raises(ConfigError, match="steps=0"):
        lm.expand(_cfg(col_values=[0, 10]))


def test_estimate_counts_each_shared_unit_once():
    cfg = _cfg()   # smoke stages: base 30 steps, warmstart 30, eval every 15 on 20 dev + 60 test, 40 bootstrap docs, K 4
    steps_only = lm.estimate(cfg, lm.Rates(1.0, 0.0, 0.0, 1.0), workers=1)
    assert steps_only["core_seconds"] == 3 * 30 + 3 * 30 + 3 * (10 + 20 + 40)
    problems_only = lm.estimate(cfg, lm.Rates(0.0, 1.0, 0.0, 1.0), workers=1)
    # bases: 60 test each; warmstarts: 2 dev evaluations + test; cells of 10, 20, 40 steps: 1, 2, 3 dev evaluations
    assert problems_only["core_seconds"] == 3 * 60 + 3 * (2 * 20 + 60) + 3 * ((20 + 60) + (40 + 60) + (60 + 60))
    samples_only = lm.estimate(cfg, lm.Rates(0.0, 0.0, 1.0, 1.0), workers=1)
    # 3 E-steps 1 and 9 E-steps 2, each 40 chunks × K = 4 plus 40 prior samples (fewer chunks than 64)
    assert samples_only["core_seconds"] == (3 + 9) * (40 * 4 + 40)
    assert samples_only["levels"]["E-steps 1"]["units"] == 3 and samples_only["levels"]["cells"]["units"] == 9
    two = lm.estimate(cfg, lm.Rates(1.0, 0.0, 0.0, 1.0), workers=2)
    assert two["levels"]["cells"]["wall_seconds"] == 110      # 210 s of cells, longest first: 40+40+20+10 | 40+20+20+10+10
    assert lm._makespan([3, 3, 2, 2, 2], 2) == 7


def _estep_summary(single_ok: list[list[bool]], selected: list[int], trained_on: float) -> dict:
    """A stage-03 E-step summary whose loop diagnostics come from constructed verdicts."""
    records = [{"candidates": [{"tokens": [j], "log_w": -1.0, "terminated": True} for j in range(len(oks))],
                "selected": s} for oks, s in zip(single_ok, selected)]
    checks = [[OK if ok else WRONG for ok in oks] for oks in single_ok]
    return {f"loop_{k}": v for k, v in estep_diagnostics(records, checks, trained_on_correct=trained_on).items()}


def test_table_row_takes_rho_lift_gain_from_the_second_estep():
    # E-step 1: 2 of 8 samples verify (0.25), the selected verify in 2 of 4 chunks (0.5) -> λ1 = 2
    s1 = _estep_summary([[True, False], [True, False], [False, False], [False, False]], [0, 0, 0, 0], trained_on=1.0)
    # E-step 2 trained on 0.5: 1 of 8 samples verify (ρ = 0.125 / 0.5 = 0.25), selected 1 of 4 (λ = 2, G = 0.5)
    s2 = _estep_summary([[True, False], [False, False], [False, False], [False, False]], [0, 0, 0, 0],
                        trained_on=s1["loop_selected_correct"])
    meta = {"variant": "paper", "row_param": "base_worked_share", "row_value": 0.1, "col_param": "steps",
            "col_value": 700, "mstep_steps": 700, "cell": "d_x/03_cell_y"}
    row = lm.cell_row(meta, s1, s2, {"accuracy": 0.3, "split": "dev"})
    assert row["warmstart_posterior_correct"] == pytest.approx(0.25)
    assert row["estep1_selected_correct"] == pytest.approx(0.5) and row["estep1_lift"] == pytest.approx(2.0)
    assert row["trained_on_correct"] == pytest.approx(0.5)
    assert row["rho"] == pytest.approx(0.25) and row["lift"] == pytest.approx(2.0)
    assert row["gain"] == pytest.approx(0.5) == pytest.approx(row["rho"] * row["lift"])
    assert row["mstep_dev_accuracy"] == 0.3
    # nothing verified in E-step 1: ρ and G of E-step 2 have no denominator and stay missing, not 0
    s0 = _estep_summary([[False, False]] * 4, [0] * 4, trained_on=1.0)
    empty = lm.cell_row(meta, s0, _estep_summary([[False, False]] * 4, [0] * 4, trained_on=0.0))
    assert np.isnan(empty["rho"]) and np.isnan(empty["gain"])


def _table(gains: dict) -> pd.DataFrame:
    rows = [lm.cell_row({"variant": v, "row_param": "base_worked_share", "row_value": r, "col_param": "steps",
                         "col_value": c}, {}, {"loop_gain": g, "loop_rho": g / 2, "loop_lift": 2.0})
            for (v, r, c), g in gains.items()]
    return lm.build_table(rows)


GAINS = {("paper", 0.1, 700): 1.2, ("paper", 0.0, 350): 0.4, ("paper", 0.0, 700): 0.6, ("paper", 0.1, 350): 1.0,
         ("estep_temperature=0.7", 0.1, 350): 0.8, ("estep_temperature=0.7", 0.1, 700): 2.4}


def test_table_order_is_fixed_and_round_trips(tmp_path):
    df = _table(GAINS)
    assert list(df.columns) == lm.COLUMNS
    assert list(zip(df["variant"], df["row_value"], df["col_value"])) == [
        ("paper", 0.0, 350), ("paper", 0.0, 700), ("paper", 0.1, 350), ("paper", 0.1, 700),
        ("estep_temperature=0.7", 0.1, 350), ("estep_temperature=0.7", 0.1, 700)]
    back = lm.read_table(lm.write_table(df, tmp_path / "loop_map.csv"))
    pd.testing.assert_frame_equal(back[["row_value", "col_value", "gain", "rho"]], df[["row_value", "col_value",
                                                                                        "gain", "rho"]])


def test_figure_has_a_g_and_rho_panel_per_variant_and_frames_cells_at_or_above_one():
    from lt_utils.report import plots

    fig = plots.FIGURES[lm.FIGURE](_table(GAINS))
    panels = [ax for ax in fig.axes if ax.get_images()]
    assert len(panels) == 4                                  # (G, ρ) × (paper, tempered)
    g_paper, rho_paper, g_temp, _ = panels
    framed = [sum(isinstance(p, Rectangle) and not p.get_fill() for p in ax.patches) for ax in panels]
    assert framed == [2, 0, 1, 1]                            # G ≥ 1: 1.0, 1.2 | 2.4 | ρ = 1.2
    assert sorted(t.get_text() for t in g_paper.texts) == ["0.40", "0.60", "1.00", "1.20"]
    assert g_paper.get_images()[0].get_array().shape == (2, 2)
    assert g_temp.get_images()[0].get_array().shape == (1, 2)


def test_redraw_from_the_stored_table_is_byte_stable(tmp_path):
    table = lm.write_table(_table(GAINS), tmp_path / "data" / "loop_map.csv")
    assert lm.main(["--redraw", "--table", str(table), "--out", str(tmp_path / "a")]) == 0
    assert lm.main(["--redraw", "--table", str(table), "--out", str(tmp_path / "b")]) == 0
    for ext in ("pdf", "png"):
        assert (tmp_path / "a" / f"loop_gain_map.{ext}").read_bytes() == \
            (tmp_path / "b" / f"loop_gain_map.{ext}").read_bytes()
    assert lm.main(["--redraw", "--table", str(tmp_path / "missing.csv")]) == 2


def test_map_params_files_load():
    for name in ("loop_map", "loop_map_smoke"):
        cfg = lm.load_map(name)
        assert len(lm.expand(cfg)) >= len(cfg.row_values) * len(cfg.col_values)
    full = lm.load_map("loop_map")
    assert len(full.row_values) >= 3 and len(full.col_values) >= 3 and 0.0 in full.row_values
    assert full.ablation.get("estep_temperature", 1.0) < 1


@pytest.mark.slow
def test_tiny_map_end_to_end(tmp_path):
    # one process: at this size, spawning a worker (a fresh torch import) costs more than all of its work
    cfg = dataclasses.replace(lm.load_map("loop_map_smoke"), run_root=str(tmp_path), ablation={}, ablation_rows=[],
                              workers=1)
    df = lm.run_map(cfg)
    root = tmp_path / cfg.name
    assert len(df) == 4 and (root / "DONE").exists() and (root / "figures" / "loop_gain_map.png").exists()
    assert lm.read_table(root / lm.TABLE)[["row_value", "col_value"]].values.tolist() == \
        df[["row_value", "col_value"]].values.tolist()
    # one data run, warmstart and E-step 1 per base; a cell per (base, budget), each finished and self-describing
    for stage, n in (("01_data_prep", 2), ("03_warmstart_*", 2), ("03_estep1_*", 2), ("03_cell_*", 4)):
        dirs = sorted(root.glob(f"d_*/{stage}"))
        assert len(dirs) == n, stage
        assert all((d / "DONE").exists() and (d / "config.yaml").exists() for d in dirs)
    for cell in root.glob("d_*/03_cell_*"):
        out = json.loads((cell / "cell.json").read_text())
        assert (cell / "iter2/estep_summary.json").exists() and "loop_rho" in out["estep2"]
        # the M-step trained as many steps as the cell's budget, and E-step 2 sampled from its model
        assert out["mstep_final"]["step"] == out["col_value"]
        # E-step 2's "trained on" is E-step 1's selected correctness, shared by the base's cells
        assert out["estep2"]["loop_trained_on_correct"] == out["estep1"]["loop_selected_correct"]
    rates = lm.measure(root)
    assert rates.chunks_per_doc == out["estep2"]["n_chunks"] / cfg.data_prep["bootstrap_docs"]
    assert all(np.isfinite(v) for v in dataclasses.astuple(rates))
    links = {Path(p).resolve() for p in root.glob("d_*/03_estep1_*/train/warmstart/seed0")}
    assert len(links) == 2 and all(p.parent.parent.parent.name.startswith("03_warmstart_") for p in links)
    # a rerun reuses every finished unit and gives the same table
    before = {p: p.stat().st_mtime for p in root.glob("d_*/*/DONE")}
    again = lm.run_map(cfg)
    pd.testing.assert_frame_equal(again, df)
    assert {p: p.stat().st_mtime for p in root.glob("d_*/*/DONE")} == before


def test_make_figures_redraws_a_stored_loop_map_table(tmp_path):
    from lt_utils.report import redraw

    lm.write_table(_table(GAINS), tmp_path / "data" / lm.TABLE)
    produced = redraw.draw(tmp_path / "data")
    assert list(produced) == [lm.FIGURE]
    assert sorted(p.name for p in produced[lm.FIGURE]) == ["loop_gain_map.pdf", "loop_gain_map.png"]
    assert all(p.parent == tmp_path for p in produced[lm.FIGURE])
