"""The M-step transfer sweep: its params fail in one line naming the key, its table draws its figure."""

import pytest

from lt_utils.sweeps import mstep_transfer as mt
from test_bootstrap import _break_first_step, _oracle, study  # noqa: F401 (study: a tiny stage-03 run, a fixture)


def test_cells_must_be_multiple_and_steps_pairs():
    with pytest.raises(ValueError, match="cells"):
        mt.MStepTransferConfig(cells=[[4]])
    with pytest.raises(ValueError, match="cells"):
        mt.MStepTransferConfig(cells=[[0, 3000]])
    with pytest.raises(ValueError, match="measure_chunks"):
        mt.MStepTransferConfig(measure_chunks=0)
    for bad in ([[1.0, 3000]], [[0.0, 3000]], [[0.5]], [[0.5, 0]]):
        with pytest.raises(ValueError, match="correctness_cells"):
            mt.MStepTransferConfig(correctness_cells=bad)
    assert mt.MStepTransferConfig(correctness_cells=[[0.2, 3000]]).correctness_cells == [[0.2, 3000]]


@pytest.mark.parametrize("target", [0.1, 0.3, 0.8])
def test_the_exchange_reaches_its_target_touching_only_the_side_in_excess(target):
    right = [i % 10 < 5 for i in range(200)]                 # half the chunks verify
    can = [i % 7 != 0 for i in range(200)]
    plan = mt.exchange_plan(right, can, target, seed=3)
    after = [r != e for r, e in zip(right, plan)]
    assert sum(after) == round(target * 200)
    assert all(c for c, e in zip(can, plan) if e)            # only chunks with a thought of the other verdict
    assert all(r == (target < 0.5) for r, e in zip(right, plan) if e)
    assert plan == mt.exchange_plan(right, can, target, seed=3)      # seeded
    assert plan != mt.exchange_plan(right, can, target, seed=4)


def test_the_exchange_keeps_the_corpus_at_its_own_share_and_names_an_unreachable_target():
    right = [True, False] * 50
    assert not any(mt.exchange_plan(right, [True] * 100, 0.5, seed=0))
    with pytest.raises(ValueError, match=r"correctness_cells: target 0.9 .* 0.600"):
        mt.exchange_plan(right, [i < 20 for i in range(100)], 0.9, seed=0)


def test_a_missing_run_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    params = tmp_path / "params" / "p"
    params.mkdir(parents=True)
    (params / mt.PARAMS_FILE).write_text(f"run: {tmp_path / 'nowhere' / '03_bootstrap_em'}\n")
    monkeypatch.setattr(mt, "PARAMS_DIR", tmp_path / "params")
    assert mt.main(["--params", "p"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "nowhere" in err and "\n" not in err


def test_the_figure_draws_from_its_table(tmp_path):
    rows = [{"source": src, "corpus": "selected", "multiple": m, "steps": s, "seed": seed, "docs": 2000 * m, "trained_on_correct": 0.46,
             "sample_correct": 0.3 + 0.01 * m, "rho": (0.3 + 0.01 * m) / 0.46, "retention": 0.6, "repair": 0.1,
             "dev_accuracy": 0.5, "test_accuracy": 0.55, "n_chunks": 10}
            for src, m, s, seed in (("study", 1, 3000, 0), ("study", 1, 3000, 1), ("sweep", 1, 1500, 0),
                                    ("sweep", 4, 3000, 0), ("sweep", 4, 6000, 0))]
    rows += [{**rows[0], "source": "sweep", "corpus": "controlled", "trained_on_correct": c, "oracle_share": 0.1,
              "sample_correct": 0.8 * c, "rho": 0.8} for c in (0.8, 0.2)]
    df = mt.build_table(rows)
    assert list(df["steps"][:3]) == [1500, 3000, 3000]
    assert list(df["corpus"][-2:]) == ["controlled"] * 2 and list(df["trained_on_correct"][-2:]) == [0.2, 0.8]
    paths = mt.draw(df, tmp_path)
    assert {p.suffix for p in paths} == {".pdf", ".png"} and all(p.stat().st_size > 0 for p in paths)


def test_the_runs_own_cobweb_finds_the_fixed_point_of_known_maps():
    """E(s) = 1 − (1 − s)² and M(c) = 0.1 + 0.5 c (a 4× row beside them is ignored): the stable c* solves
    c = 1 − (0.9 − 0.5 c)²."""
    import numpy as np
    import pandas as pd

    e_points = [(s, 1 - (1 - s) ** 2) for s in (0.2, 0.35, 0.5)]
    df = pd.DataFrame([{"multiple": 1, "steps": 3000, "trained_on_correct": c, "sample_correct": 0.1 + 0.5 * c}
                       for c in (0.2, 0.5, 0.8)] + [{"multiple": 4, "steps": 3000, "trained_on_correct": 0.5,
                                                     "sample_correct": 0.0}])
    got = mt.regime_cobweb(e_points, df, 3000)
    assert got["gamma"] == pytest.approx(2.0, rel=2e-3) and got["m_points"] == 3
    assert got["a"] == pytest.approx(0.1) and got["b"] == pytest.approx(0.5)
    g = lambda c: 1 - (0.9 - 0.5 * c) ** 2 - c
    stable = [f for f in got["fixed_points"] if f["stable"]]
    assert len(stable) == 1 and abs(g(stable[0]["c"])) < 1e-3
    assert got["predicted"][0] == got["measured"][0] == e_points[0][1]
    assert got["predicted"][1] == pytest.approx(1 - (0.9 - 0.5 * e_points[0][1]) ** 2, rel=2e-3)


def test_a_controlled_corpus_exchanges_thoughts_for_the_chunks_own_or_the_oracles(study):
    """Chunk i's E-step-1 candidates: even chunks hold one right thought and three wrong ones, odd chunks only wrong
    ones; the selected thought is the first candidate.  Raising c takes right thoughts from a chunk's own candidates
    where it has one and from the oracle where it has none; lowering c takes one of the chunk's own wrong ones."""
    from lt_utils.runtime.runs import read_json, read_jsonl, write_jsonl
    from lt_utils.stages import em_estep

    oracle = _oracle(study)
    n = len(study.boot_chunks)
    cands = [([t] if i % 2 == 0 else []) + [_break_first_step(t)] * (4 - (i % 2 == 0)) for i, t in enumerate(oracle)]
    cands = [c[::-1] if i % 4 == 0 else c for i, c in enumerate(cands)]   # some chunks select a right thought
    write_jsonl(study.run.file("iter1/estep.jsonl"),
                [{"position": i, "thought": c[0], "candidates": [{"text": t} for t in c]} for i, c in enumerate(cands)])
    stage = study.run.path
    selected = [em_estep.chunk_is_correct(ch, c[0]) for ch, c in zip(study.boot_chunks, cands)]
    for target in (0.1, 0.9):
        path, verdicts, oracle_share = mt.controlled_corpus(study, stage, target, seed=0)
        thoughts = [t for d in read_jsonl(path) for t in d["thoughts"]]
        assert verdicts == [em_estep.chunk_is_correct(ch, t) for ch, t in zip(study.boot_chunks, thoughts)]
        assert sum(verdicts) == round(target * n)
        for i, (t, before, after) in enumerate(zip(thoughts, selected, verdicts)):
            assert t == cands[i][0] or before != after                 # only exchanged chunks change
            assert t in cands[i] or t == oracle[i]                      # exchanged for the chunk's own, or the oracle's
        from_oracle = [t == oracle[i] and t not in cands[i] for i, t in enumerate(thoughts)]
        assert oracle_share == sum(from_oracle) / n
        assert (oracle_share > 0) == (target > 0.5)                     # only raising c can need the oracle
        assert read_json(path.with_suffix(".json"))["correct"] == sum(verdicts) / n
