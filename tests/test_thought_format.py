"""The thought-format sweep: its cells reuse the fidelity curve's compact warmstarts, its C1 rows and comparisons
come from finished stage-02 runs, its table draws its figure (constructed runs, no training)."""

import json

import pandas as pd
import pytest

from lt_utils.runtime.config import ConfigError
from lt_utils.sweeps import fidelity_curve
from lt_utils.sweeps import thought_format as tf


def test_compact_cells_are_the_fidelity_curves_own_and_spelled_ones_are_new():
    cfg = tf.ThoughtFormatConfig(budgets=[1000, 3000])
    cells = tf.cells(cfg)
    assert [(s, c.row_value) for s, c in cells] == [("compact", 1000), ("compact", 3000), ("spelled", 1000),
                                                    ("spelled", 3000)]
    curve = {c.row_value: c for w, c in fidelity_curve.cells(fidelity_curve.load_curve()) if w == 64}
    for style, c in cells:
        same = (c.data_id, c.warm_id, c.estep_id) == (curve[c.row_value].data_id, curve[c.row_value].warm_id,
                                                      curve[c.row_value].estep_id)
        assert same == (style == "compact")
        assert c.boot_params["thought_style"] == style and c.data_id == curve[c.row_value].data_id


def test_a_second_seed_is_a_warmstart_of_its_own_on_the_same_data():
    cfg = tf.ThoughtFormatConfig(budgets=[1000, 3000], styles=["compact"], seeds_at={3000: [0, 1]})
    cells = tf.cells(cfg)
    assert [(c.row_value, c.boot_params["seeds"]) for _, c in cells] == [(1000, [0]), (3000, [0]), (3000, [1])]
    (_, s0), (_, s1) = cells[1:]
    assert s0.data_id == s1.data_id and len({s0.warm_id, s1.warm_id}) == 2 and len({s0.estep_id, s1.estep_id}) == 2
    assert {k: v for k, v in s1.boot_params.items() if k != "seeds"} == \
        {k: v for k, v in s0.boot_params.items() if k != "seeds"}
    with pytest.raises(ConfigError, match="seeds_at"):
        tf.ThoughtFormatConfig(budgets=[1000], seeds_at={3000: [1]})
    only = tf.ThoughtFormatConfig(budgets=[3000], styles=["compact", "spelled"], seeds_at={3000: [0, 1]},
                                  seeds_styles=["spelled"])
    assert [(s, c.boot_params["seeds"]) for s, c in tf.cells(only)] == [("compact", [0]), ("spelled", [0]),
                                                                       ("spelled", [1])]
    with pytest.raises(ConfigError, match="seeds_styles"):
        tf.ThoughtFormatConfig(styles=["compact"], seeds_styles=["spelled"])


def test_bad_params_are_one_line_errors():
    with pytest.raises(ConfigError, match="verbose"):
        tf.ThoughtFormatConfig(styles=["compact", "verbose"])
    with pytest.raises(ConfigError, match="budgets"):
        tf.ThoughtFormatConfig(budgets=[])


def _stage02(root, arm, accs, dev):
    """A finished stage-02 run with one arm: final test accuracy per seed and a dev evaluation along training."""
    root.mkdir(parents=True)
    final = [{"arm": arm, "seed": s, "step": 1200, "accuracy": a} for s, a in enumerate(accs)]
    (root / "final_metrics.json").write_text(json.dumps(final))
    for s, d in enumerate(dev):
        run = root / "train" / arm / f"seed{s}"
        run.mkdir(parents=True)
        rows = [{"kind": "eval", "split": "dev", "step": 400, "accuracy": d / 2},
                {"kind": "eval", "split": "dev", "step": 1200, "accuracy": d}]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "DONE").write_text("{}")   # a finished run (no manifest: nothing to check)
    return root


def test_c1_rows_and_comparisons_read_finished_stage02_runs(tmp_path):
    raw = _stage02(tmp_path / "raw", "raw_repeat", [0.14, 0.13, 0.16], [0.10, 0.12, 0.11])
    compact = _stage02(tmp_path / "compact", "latent_thoughts", [0.80, 0.88, 0.85], [0.78, 0.80, 0.79])
    spelled = _stage02(tmp_path / "spelled", "latent_thoughts", [0.90, 0.92, 0.91], [0.85, 0.86, 0.90])
    rows = tf.c1_rows("compact", raw, "raw_repeat") + tf.c1_rows("compact", compact, "latent_thoughts") \
        + tf.c1_rows("spelled", spelled, "latent_thoughts")
    df = tf.build_table(rows)
    assert len(df) == 9 and set(df["part"]) == {"c1"}
    assert df.loc[(df["style"] == "spelled") & (df["seed"] == 2), "dev_accuracy"].item() == 0.90   # the last dev eval
    comps = {(c.label_a, c.label_b): c for c in tf.c1_comparisons(df)}
    gap = comps[("latent spelled (test)", "raw_repeat (test)")]
    assert gap.diff == pytest.approx(100 * (0.91 - 0.1433333), abs=1e-3) and gap.n_a == gap.n_b == 3
    assert comps[("latent spelled (test)", "latent compact (test)")].diff == pytest.approx(100 * (0.91 - 0.8433333),
                                                                                          abs=1e-3)
    with pytest.raises(ValueError, match="wrap_cot"):
        tf.c1_rows("compact", raw, "wrap_cot")


def test_a_missing_stage02_run_fails_before_any_training(tmp_path, capsys, monkeypatch):
    params = tmp_path / "params" / "p"
    params.mkdir(parents=True)
    (params / tf.PARAMS_FILE).write_text(f"c1_runs: {{spelled: {tmp_path / 'nowhere'}}}\n"
                                         f"c1_raw_run: {tmp_path / 'nowhere'}\n")
    monkeypatch.setattr(tf, "PARAMS_DIR", tmp_path / "params")
    monkeypatch.setattr(tf, "cells", lambda cfg: pytest.fail("trained before checking its inputs"))
    assert tf.main(["--params", "p"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "nowhere" in err and "\n" not in err


def test_the_figure_draws_from_its_table(tmp_path):
    rows = [{"part": "fidelity", "style": st, "steps": s, "f": f, "f_dev": f, "p_addition": 0.9, "p_linear": f / 2,
             "p_word": f, "sampled_dev_correct": f, "dev_accuracy": 0.5 + f / 3, "source": "x"}
            for st, s, f in (("compact", 1000, 0.2), ("compact", 3000, 0.87), ("spelled", 1000, 0.3),
                             ("spelled", 3000, 0.9))]
    rows += [{"part": "c1", "style": st, "arm": arm, "seed": seed, "steps": 1200, "test_accuracy": 0.1 + 0.3 * i}
             for i, (st, arm) in enumerate((("compact", "raw_repeat"), ("compact", "latent_thoughts"),
                                            ("spelled", "latent_thoughts"))) for seed in range(3)]
    df = tf.build_table(rows)
    back = tf.read_table(tf.tables.write_table(df, tmp_path / "data" / tf.TABLE))
    pd.testing.assert_frame_equal(back, pd.read_csv(tmp_path / "data" / tf.TABLE))
    paths = tf.draw(back, tmp_path)
    assert {p.suffix for p in paths} == {".pdf", ".png"} and all(p.stat().st_size > 0 for p in paths)


def test_a_style_with_another_stages_thoughts_is_a_one_line_error():
    from lt_utils.stages.bootstrap_em import BootstrapConfig
    from lt_utils.stages.synthetic_thoughts import SyntheticThoughtsConfig

    with pytest.raises(ConfigError, match="thought_style.*warmstart_thoughts_stage"):
        BootstrapConfig(study="x", thought_style="spelled", warmstart_thoughts_stage="02_synthetic_thoughts")
    with pytest.raises(ConfigError, match="thought_style"):
        SyntheticThoughtsConfig(study="x", thought_style="verbose")
    assert BootstrapConfig(study="x", thought_style="spelled_linear").thought_style == "spelled_linear"
