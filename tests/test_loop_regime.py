"""The fidelity curve's runs and the cobweb's table, on constructed summaries (no training)."""

import json

import pytest
import yaml

from lt_utils.runtime.config import ConfigError
from lt_utils.sweeps import cobweb_map
from lt_utils.sweeps import fidelity_curve


def test_each_width_gets_its_own_base_and_the_curve_shares_the_maps_warmstarts():
    cfg = fidelity_curve.FidelityCurveConfig(map="loop_map_transfer", budgets=[300, 1000], widths=[64, 128])
    cells = fidelity_curve.cells(cfg)
    assert [(w, c.row_value) for w, c in cells] == [(64, 300), (64, 1000), (128, 300), (128, 1000)]
    by_width = {w: {c.data_id for v, c in cells if v == w} for w in (64, 128)}
    assert len(by_width[64]) == 1 and len(by_width[128]) == 1 and by_width[64] != by_width[128]
    wide = [c for w, c in cells if w == 128][0]
    assert wide.data_params["base_n_embd"] == 128 and wide.boot_params["n_embd"] == 128
    assert wide.boot_params["intermediate_size"] == 512
    # the map's own warmstart of 300 steps is the curve's width-64 point: same data group, same warmstart id
    from lt_utils.sweeps import loop_map

    m = loop_map.expand(loop_map.load_map("loop_map_transfer"))
    assert {(c.data_id, c.warm_id) for c in m} == {(c.data_id, c.warm_id) for w, c in cells if w == 64}
    with pytest.raises(ConfigError, match="widths"):
        fidelity_curve.FidelityCurveConfig(widths=[30])


def test_a_curve_row_reads_the_fidelity_summary():
    fid = {"bootstrap": {"f": 0.5, "nll_per_token": 0.1, "by_position": {"first": {"f": 0.8}, "later": {"f": 0.4}},
                         "by_family": {"linear": {"p": 0.3}}, "greedy": {"correct": 0.6},
                         "by_operation": {"linear /": {"nll_share": 0.7}, "linear -": {"nll_share": 0.3}}},
           "dev": {"f": 0.55, "greedy": {"correct": 0.7}, "sampled": {"correct": 0.5}}}
    r = fidelity_curve.row(64, {"fidelity": fid, "dev": {"accuracy": 0.9}, "steps": 300, "tokens": 614400}, "w")
    assert (r["f"], r["f_first_chunks"], r["f_later_chunks"], r["f_dev"]) == (0.5, 0.8, 0.4, 0.55)
    assert (r["greedy_correct"], r["sampled_dev_correct"], r["dev_accuracy"]) == (0.6, 0.5, 0.9)
    assert r["p_linear"] == 0.3 and r["p_word"] is None
    assert (r["worst_operation"], r["worst_operation_nll_share"]) == ("linear /", 0.7)


def _summary(sample, selected, trained):
    return {"loop_posterior_sample_correct": sample, "loop_selected_correct": selected,
            "loop_trained_on_correct": trained}


def test_a_loops_estep_summaries_give_e_points_m_points_and_its_trajectory(tmp_path):
    stage = tmp_path / "runs" / "loopA" / "03_bootstrap_em"
    stage.mkdir(parents=True)
    (stage / "config.yaml").write_text(yaml.safe_dump({"seeds": [1]}))
    for it, s in ((1, _summary(0.8, 0.9, 1.0)), (2, _summary(0.82, 0.91, 0.9)), (3, _summary(0.84, 0.92, 0.91))):
        (stage / f"iter{it}").mkdir()
        (stage / f"iter{it}/estep_summary.json").write_text(json.dumps(s))
    df = cobweb_map.build_table(cobweb_map.loop_rows(stage))
    e, m, loop = (df[df["kind"] == k] for k in ("E", "M", "loop"))
    assert list(e["x"]) == [0.8, 0.82, 0.84] and list(e["y"]) == [0.9, 0.91, 0.92]
    assert list(m["x"]) == [0.9, 0.91] and list(m["y"]) == [0.82, 0.84]   # the warmstart is no M-step point
    assert list(loop["y"]) == [0.9, 0.91, 0.92] and set(loop["seed"]) == {1}
    fit, pred = cobweb_map.predictions(df)
    assert fit["M"].endswith(" c") and fit["E"].startswith("1 - (1 - s)^")
    # one loop alone cannot be predicted out of sample: its own points are all the maps have
    assert pred["measured"] == [0.9, 0.91, 0.92] and pred["predicted"] is None
    other = df.assign(source="another loop", y=df["y"] - 0.01)
    both = cobweb_map.build_table(df.to_dict("records") + other.to_dict("records"))
    preds = {p["source"]: p for p in cobweb_map.predictions(both) if "source" in p}
    assert len(preds["loopA seed 1"]["predicted"]) == 3 and preds["loopA seed 1"]["predicted"][0] == 0.9


def test_map_cells_give_points_from_both_esteps(tmp_path):
    cell = tmp_path / "transfer" / "d_x" / "03_cell_y"
    cell.mkdir(parents=True)
    (cell / "cell.json").write_text(json.dumps({"row_param": "warmstart_steps", "row_value": 300, "col_param": "steps",
                                                "col_value": 3000, "estep1": _summary(0.2, 0.3, 1.0),
                                                "estep2": _summary(0.15, 0.25, 0.3)}))
    df = cobweb_map.build_table(cobweb_map.map_rows(tmp_path / "transfer"))
    assert sorted(zip(df["kind"], df["x"], df["y"])) == [("E", 0.15, 0.25), ("E", 0.2, 0.3), ("M", 0.3, 0.15)]
    assert "loop" not in set(df["kind"])


def test_missing_runs_are_one_line_errors(tmp_path):
    from lt_utils.runtime.runs import MissingInputError

    with pytest.raises(MissingInputError, match="no stage-03 run here"):
        cobweb_map.run(cobweb_map.CobwebConfig(loops=[str(tmp_path / "nothing")], figures_dir=""))
    with pytest.raises(ConfigError, match="at least one"):
        cobweb_map.CobwebConfig()


def test_a_width_may_have_its_own_budgets():
    cfg = fidelity_curve.FidelityCurveConfig(map="loop_map_transfer", budgets=[300, 3000], widths=[64, 128],
                                             budgets_by_width={128: [300]})
    assert [(w, c.row_value) for w, c in fidelity_curve.cells(cfg)] == [(64, 300), (64, 3000), (128, 300)]
    with pytest.raises(ConfigError, match="budgets_by_width"):
        fidelity_curve.FidelityCurveConfig(widths=[64], budgets_by_width={128: [300]})
    assert fidelity_curve.load_curve().budgets_of(128) == [300, 1000, 3000]


def test_the_curves_cells_keep_the_ids_of_its_committed_runs():
    """Fields added to stage 03 after the maps ran (at their defaults) must not rename a finished warmstart:
    every cell of the curve is the warmstart its committed table names, so `make fidelity` reuses it."""
    import pandas as pd

    from lt_utils.runtime.paths import FIGURES_DIR

    table = pd.read_csv(FIGURES_DIR / "data" / fidelity_curve.TABLE)
    named = {(int(r.width), int(r.layers), int(r.steps)): r.warmstart for r in table.itertuples()}
    cfg = fidelity_curve.load_curve()
    cells = [(w, 4, c) for w, c in fidelity_curve.cells(cfg)]
    cells += [(cfg.widths[0], d, c) for d, c in fidelity_curve.depth_cells(cfg)]
    assert {(w, d, c.row_value): f"{c.data_id}/03_warmstart_{c.warm_id}" for w, d, c in cells} == named


def test_a_deeper_model_gets_its_own_base_at_the_first_width():
    cfg = fidelity_curve.FidelityCurveConfig(map="loop_map_transfer", budgets=[300, 1000], widths=[64, 128],
                                             depths=[8])
    deep = fidelity_curve.depth_cells(cfg)
    assert [(d, c.row_value) for d, c in deep] == [(8, 300), (8, 1000)]
    wide = {c.data_id for _, c in fidelity_curve.cells(cfg)}
    assert len({c.data_id for _, c in deep}) == 1 and not wide & {c.data_id for _, c in deep}
    c = deep[0][1]
    assert (c.data_params["base_n_layer"], c.boot_params["n_layer"], c.boot_params["n_embd"]) == (8, 8, 64)
    assert fidelity_curve.depth_cells(fidelity_curve.FidelityCurveConfig()) == []
    with pytest.raises(ConfigError, match="depths"):
        fidelity_curve.FidelityCurveConfig(depths=[0])
    own = fidelity_curve.FidelityCurveConfig(budgets=[300, 1000, 6000], depths=[8], budgets_by_depth={8: [1000]})
    assert [(d, c.row_value) for d, c in fidelity_curve.depth_cells(own)] == [(8, 1000)]
    with pytest.raises(ConfigError, match="budgets_by_depth"):
        fidelity_curve.FidelityCurveConfig(depths=[8], budgets_by_depth={6: [300]})
    r = fidelity_curve.row(64, {"fidelity": {}, "steps": 300, "tokens": 614400}, "w", layers=8)
    assert r["layers"] == 8 and list(fidelity_curve.build_table([r]).columns) == fidelity_curve.COLUMNS
