"""Analysis reads stored runs into tidy tables; comparisons carry their statistics."""


import pytest

from lt_utils import results
from lt_utils.runs import write_json, write_jsonl


def fake_run(root, arm, seed, accs, family_accs):
    d = root / "02_synthetic_thoughts" / "train" / arm / f"seed{seed}"
    write_json(d / "run.json", {"arm": arm, "seed": seed, "stage": "02_synthetic_thoughts"})
    recs = [{"kind": "train", "step": 1, "loss": 1.0}]
    for i, (a, fa) in enumerate(zip(accs, family_accs)):
        recs.append({"kind": "eval", "step": 10 * i, "tokens": 100 * i, "raw_tokens": 50 * i, "accuracy": a,
                     "accuracy/addition": fa, "val_nll": 1.0})
    write_jsonl(d / "metrics.jsonl", recs)
    (d / "DONE").write_text("{}")


def test_collect_final_summary_and_comparison(tmp_path):
    for s, (hi, lo) in enumerate([(0.9, 0.1), (0.8, 0.2), (0.85, 0.15)]):
        fake_run(tmp_path, "latent_thoughts", s, [0.0, hi], [0.0, hi])
        fake_run(tmp_path, "raw_repeat", s, [0.0, lo], [0.0, lo])
    # an unfinished run is ignored
    fake_run(tmp_path, "raw_repeat", 9, [0.0, 0.99], [0.0, 0.99])
    (tmp_path / "02_synthetic_thoughts" / "train" / "raw_repeat" / "seed9" / "DONE").unlink()
    evals = results.collect_evals(tmp_path)
    assert len(evals) == 12 and set(evals["seed"]) == {0, 1, 2}
    finals = results.final_points(evals)
    assert len(finals) == 6 and (finals["step"] == 10).all()
    summary = results.summary_table(finals).set_index("arm")
    assert summary.loc["latent_thoughts", "accuracy_%"] == pytest.approx(85.0)
    assert summary.loc["raw_repeat", "seeds"] == 3
    rows = results.comparison_rows(finals, "latent_thoughts", "raw_repeat").set_index("metric")
    assert rows.loc["all families", "diff_pts"] == pytest.approx(70.0)
    assert rows.loc["addition", "ci95_low"] < 70.0 < rows.loc["addition", "ci95_high"]
    assert rows.loc["all families", "welch_p"] < 0.01
    fam = results.by_family(evals)
    assert set(fam["family"]) == {"addition"} and len(fam) == 12
