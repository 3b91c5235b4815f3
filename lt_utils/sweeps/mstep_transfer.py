"""The M-step's transfer curve over its budget and the bootstrap corpus' size, from a finished stage-03 run.

    python -m lt_utils.sweeps.mstep_transfer            # params/mstep_transfer/mstep.yaml (make mstep-transfer)
    python -m lt_utils.sweeps.mstep_transfer --redraw   # figures/data/mstep_transfer.csv -> figures/mstep_transfer.*

Retention ρ = s' / c (one sample's correctness after the M-step ÷ that of the thoughts it trained on) decides,
with the E-step's lift λ, whether the loop climbs (G = ρλ ≥ 1).  In a stage-03 run every M-step has one budget and
one corpus.  This sweep trains more M-steps on the run's own iteration-1 thoughts, from the same base model:

* **budget**: the same corpus (1×: the run's bootstrap corpus) for more or fewer optimizer steps;
* **corpus size**: the run's corpus plus `multiple − 1` times as many further documents, drawn from the data
  stage's `fresh` split (same world, disjoint from every other split) and given thoughts by the same E-step 1
  (the run's warmstart, K and seed), so the added thoughts are as good as the run's own.

* **trained-on correctness** (a diagnostic): the run's 1× corpus with its selected thoughts exchanged on a random
  share of chunks so that a target share verifies: a right thought becomes one of the chunk's own wrong E-step-1
  candidates, a wrong one becomes one of its right candidates or, where none is right, the world's oracle thought.
  The verifier builds these corpora to place points on the M-step map c → s' that the loop itself does not reach;
  no loop ever trains on them.

Every M-step model, the run's own included (its iteration-1 seeds), is then measured on the same chunks of the
1× corpus: `measure_k` samples per chunk at T = 1 in the E-step's proposal, checked by the world's verifier, split
into retention r₁ (chunks whose trained thought was right) and repair r₀ (chunks whose thought was wrong).  The
verifier only measures; nothing it says reaches training.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from lt_utils.runtime.config import ConfigError, require
from lt_utils.runtime.paths import FIGURES_DIR, PARAMS_DIR, resolve  # noqa: F401 (the dirs: read by sweep_main)
from lt_utils.report import tables
from lt_utils.sweeps.entry import sweep_main

PARAMS_FILE = "mstep.yaml"
TABLE = "mstep_transfer.csv"
FIGURE = "mstep_transfer"
MAKER = "make mstep-transfer"
COLUMNS = ["source", "corpus", "multiple", "steps", "seed", "docs", "trained_on_correct", "oracle_share",
           "sample_correct", "rho", "retention", "repair", "dev_accuracy", "test_accuracy", "n_chunks"]
# corpus: "selected" (the E-step's own thoughts) or "controlled" (exchanged to a target correctness, above)


@dataclass(frozen=True)
class MStepTransferConfig:
    run: str = "runs/cpu/03_bootstrap_em"            # a finished stage-03 run: its warmstart, iter1 thoughts, M-steps
    cells: list[list[int]] = field(default_factory=lambda: [[1, 1500], [1, 6000], [4, 3000], [4, 6000]])
    correctness_cells: list[list[float]] = field(default_factory=list)   # [target correctness in (0, 1), steps]
    seed: int = 0                                    # of the new M-steps (the run's own keep their seeds)
    measure_chunks: int = 1000                       # chunks of the 1× corpus every model is measured on
    measure_k: int = 4                               # samples per chunk
    work_dir: str = "runs/mstep_transfer"
    figures_dir: str = "figures"

    def __post_init__(self):
        require(all(isinstance(c, list) and len(c) == 2 and c[0] >= 1 and c[1] >= 1 for c in self.cells),
                "cells: a list of [corpus multiple ≥ 1, M-step steps ≥ 1] pairs")
        require(all(isinstance(c, list) and len(c) == 2 and 0 < c[0] < 1 and int(c[1]) == c[1] >= 1
                    for c in self.correctness_cells),
                "correctness_cells: a list of [target correctness in (0, 1), M-step steps ≥ 1] pairs")
        require(self.measure_chunks >= 1 and self.measure_k >= 1, "measure_chunks, measure_k: must be ≥ 1")


def _study(stage_dir: Path, work: Path):
    """A `Study` that reads the finished run at `stage_dir` (data stage, base model, warmstart) and writes its
    new training runs and corpora under `work`."""
    from lt_utils.runtime.runs import MissingInputError
    from lt_utils.stages.bootstrap_em import Study

    for need in ("config.yaml", "iter1/estep.jsonl", "iter1/corpus.jsonl", "train/warmstart"):
        if not (stage_dir / need).exists():
            raise MissingInputError(f"{stage_dir / need} not found: no finished iteration 1 of a stage-03 run here "
                                    f"(make study writes runs/cpu/03_bootstrap_em)")
    study = Study.of_finished(stage_dir, writes_to=work)
    require(not study.text, f"{stage_dir}: a text corpus has no verifier; this sweep needs the world's")
    return study


def grown_corpus(study, stage_dir: Path, multiple: int) -> tuple[Path, float]:
    """The run's iteration-1 corpus plus (multiple − 1) × its documents from the fresh split with E-step-1
    thoughts; returns its path and the share of its chunks whose thought verifies."""
    from lt_utils.runtime.runs import read_jsonl, write_jsonl
    from lt_utils.stages import em_estep
    from lt_utils.stages.bootstrap_em import _chunks
    from lt_utils.stages.data_prep import load_documents

    base_records = read_jsonl(stage_dir / "iter1" / "corpus.jsonl")
    right = [em_estep.chunk_is_correct(c, r["thought"])
             for c, r in zip(study.boot_chunks, read_jsonl(stage_dir / "iter1" / "estep.jsonl"))]
    path = study.run.file(f"corpora/corpus_x{multiple}.jsonl")
    if multiple == 1:
        return stage_dir / "iter1" / "corpus.jsonl", sum(right) / len(right)
    n_extra = (multiple - 1) * len(base_records)
    fresh = load_documents(study.data, "fresh")
    if len(fresh) < n_extra:
        raise ConfigError(f"cells: multiple {multiple} needs {n_extra} fresh documents; the data stage has "
                          f"{len(fresh)} (raise fresh_docs in 01_data_prep)")
    docs = fresh[:n_extra]
    heads, chunks, spans = _chunks(study.cfg, docs, study.cfg.prefix_chunks)
    records_path = study.run.file(f"corpora/fresh_{n_extra}_estep.jsonl")
    if records_path.exists():
        records = read_jsonl(records_path)
    else:
        ecfg = em_estep.estep_config(study.cfg, k=study.cfg.k, seed=em_estep.estep_seed(study.cfg, 1))   # E-step 1's seed
        records = em_estep.stage_sample_and_score(study.cfg, study.tok_dir, stage_dir / "train/warmstart/seed0/model",
                                                  chunks, ecfg, study.run.file(f"corpora/fresh_{n_extra}.sqlite"))
        write_jsonl(records_path, records)
    thoughts = [r["thought"] for r in records]
    right += [em_estep.chunk_is_correct(c, t) for c, t in zip(chunks, thoughts)]
    if not path.exists():
        extra = study.run.file(f"corpora/fresh_{n_extra}_corpus.jsonl")
        em_estep.write_corpus(extra, docs, heads, chunks, spans, thoughts)
        write_jsonl(path, base_records + read_jsonl(extra))
    return path, sum(right) / len(right)


def exchange_plan(selected_right: Sequence[bool], can_exchange: Sequence[bool], target: float,
                  seed: int) -> list[bool]:
    """Which chunks get their thought exchanged so that round(target · n) chunks verify.

    Only chunks on the side that has too many are exchanged (right ones when the target is below the selected
    share, wrong ones when above), each only where `can_exchange` says a thought of the other verdict exists; which
    of them, a seeded random draw, so the rest of the corpus keeps the E-step's own thoughts.
    """
    n = len(selected_right)
    if len(can_exchange) != n:
        raise ValueError("one exchange flag per chunk")
    want = round(target * n)
    have = sum(selected_right)
    side = have > want                                  # exchange right chunks (True) or wrong ones (False)
    pool = [i for i in range(n) if bool(selected_right[i]) == side and can_exchange[i]]
    need = abs(have - want)
    if need > len(pool):
        reach = (have - len(pool) if side else have + len(pool)) / n
        raise ConfigError(f"correctness_cells: target {target} is out of reach; this corpus can go to "
                          f"{reach:.3f} at most in that direction")
    chosen = set(np.random.default_rng(seed).choice(pool, size=need, replace=False).tolist()) if need else set()
    return [i in chosen for i in range(n)]


def controlled_corpus(study, stage_dir: Path, target: float, seed: int) -> tuple[Path, list[bool], float]:
    """The run's 1× corpus with thoughts exchanged (see `exchange_plan`) so that `target` of its chunks verify;
    returns its path, each chunk's verdict and the share of chunks whose thought is the oracle's."""
    from lt_utils.runtime.runs import read_jsonl, write_json
    from lt_utils.stages import em_estep
    from lt_utils.teacher import OracleTeacher

    records = read_jsonl(stage_dir / "iter1" / "estep.jsonl")
    chunks = study.boot_chunks
    oracle = OracleTeacher(study.cfg.thought_style)
    selected, alt, is_oracle = [], [], []
    for c, r in zip(chunks, records):
        right = em_estep.chunk_is_correct(c, r["thought"])
        other = [x["text"] for x in r["candidates"] if em_estep.chunk_is_correct(c, x["text"]) != right]
        from_oracle = not other and not right
        if from_oracle:
            z = oracle.thought_for(c)
            other = [z] if z and em_estep.chunk_is_correct(c, z) else []
        selected.append(right)
        alt.append(other[0] if other else None)
        is_oracle.append(from_oracle and bool(other))
    plan = exchange_plan(selected, [a is not None for a in alt], target, seed)
    thoughts = [a if ex else r["thought"] for r, a, ex in zip(records, alt, plan)]
    verdicts = [s != ex for s, ex in zip(selected, plan)]
    n_oracle = sum(ex and o for ex, o in zip(plan, is_oracle))
    tag = f"c{target:g}_seed{seed}"
    path = em_estep.write_corpus(study.run.file(f"corpora/corpus_{tag}.jsonl"), study.boot_docs, study.boot_heads,
                                 chunks, study.boot_spans, thoughts)
    write_json(study.run.file(f"corpora/corpus_{tag}.json"),
               {"target": target, "seed": seed, "correct": sum(verdicts) / len(verdicts),
                "exchanged": sum(plan), "oracle": n_oracle, "n_chunks": len(plan)})
    return path, verdicts, n_oracle / len(plan)


def measure(study, model_dir: Path, chunks, trained_right: list[bool], cfg: MStepTransferConfig) -> dict:
    """One sample's correctness on `chunks` (measure_k samples each) with its retention / repair split."""
    from lt_utils.loop_diagnostics import retention_repair
    from lt_utils.stages import em_estep

    ecfg = em_estep.estep_config(study.cfg, k=cfg.measure_k, seed=4242)
    records = em_estep.stage_sample_and_score(study.cfg, study.tok_dir, model_dir, chunks, ecfg, None,
                                              progress=False)
    verdicts = [[em_estep.chunk_is_correct(c, x["text"]) for x in r["candidates"]]
                for c, r in zip(chunks, records)]
    s = sum(map(sum, verdicts)) / sum(map(len, verdicts))
    return {"sample_correct": s, **retention_repair(trained_right, verdicts)}


def _accuracies(run_dir: Path) -> tuple[float | None, float | None]:
    """(last dev accuracy, test accuracy) of a finished training run."""
    from lt_utils.runtime.runs import read_json
    from lt_utils.sweeps.fidelity_curve import last_dev_eval

    return (last_dev_eval(run_dir) or {}).get("accuracy"), read_json(run_dir / "final.json").get("accuracy")


def run(cfg: MStepTransferConfig):
    from lt_utils.runtime.runs import read_json, read_jsonl, write_json
    from lt_utils.stages import em_estep

    stage_dir = resolve(cfg.run)
    study = _study(stage_dir, resolve(cfg.work_dir) / stage_dir.parent.name)
    positions = em_estep.spread_positions(len(study.boot_chunks), cfg.measure_chunks)
    chunks = [study.boot_chunks[p] for p in positions]
    own = read_jsonl(stage_dir / "iter1" / "estep.jsonl")
    selected_right = [em_estep.chunk_is_correct(study.boot_chunks[p], own[p]["thought"]) for p in positions]
    n_docs = len(study.boot_docs)

    corpora = {m: grown_corpus(study, stage_dir, m) for m in sorted({c[0] for c in cfg.cells} | {1})}
    controlled = {target: controlled_corpus(study, stage_dir, target, cfg.seed)
                  for target in sorted({c[0] for c in cfg.correctness_cells})}
    jobs = [study.job(f"x{m}_steps{steps}", corpora[m][0], "random", steps, cfg.seed, arm=f"mstep_x{m}_{steps}",
                      multiple=m) for m, steps in cfg.cells]
    jobs += [study.job(f"c{target:g}_steps{int(steps)}", controlled[target][0], "random", int(steps), cfg.seed,
                       arm=f"mstep_c{target:g}_{int(steps)}", target_correct=target)
             for target, steps in cfg.correctness_cells]
    study.train(jobs, "M-steps")

    # (source, corpus, multiple, steps, seed, run dir, trained-on correctness, oracle share, verdicts measured)
    models = [("study", "selected", 1, study.cfg.steps, s, stage_dir / f"train/iter1/seed{s}", corpora[1][1], 0.0,
               selected_right) for s in study.cfg.seeds]
    models += [("sweep", "selected", m, steps, cfg.seed, study.run.file(f"train/x{m}_steps{steps}/seed{cfg.seed}"),
                corpora[m][1], 0.0, selected_right) for m, steps in cfg.cells]
    for target, steps in cfg.correctness_cells:
        _, verdicts, oracle_share = controlled[target]
        models.append(("sweep", "controlled", 1, int(steps), cfg.seed,
                       study.run.file(f"train/c{target:g}_steps{int(steps)}/seed{cfg.seed}"),
                       sum(verdicts) / len(verdicts), oracle_share, [verdicts[p] for p in positions]))
    rows = []
    for source, corpus, m, steps, seed, run_dir, c, oracle_share, trained_right in models:
        got = measure(study, run_dir / "model", chunks, trained_right, cfg)
        dev, test = _accuracies(run_dir)
        rows.append({"source": source, "corpus": corpus, "multiple": m, "steps": steps, "seed": seed,
                     "docs": m * n_docs, "trained_on_correct": c, "oracle_share": oracle_share,
                     "sample_correct": got["sample_correct"], "rho": got["sample_correct"] / c,
                     "retention": got["retention"], "repair": got["repair"], "dev_accuracy": dev,
                     "test_accuracy": test, "n_chunks": len(chunks)})
        print(rows[-1], flush=True)
    write_json(study.run.file("rows.json"), rows)
    df = build_table(rows)
    if cfg.figures_dir:
        tables.publish(df, resolve(cfg.figures_dir), TABLE, FIGURE, MAKER)
    if cfg.correctness_cells:
        points = []
        for it in range(1, study.cfg.iterations + 1):
            path = stage_dir / f"iter{it}" / "estep_summary.json"
            if path.exists():
                e = read_json(path)
                points.append((e["loop_posterior_sample_correct"], e["loop_selected_correct"]))
        own = regime_cobweb(points, df, study.cfg.steps)
        write_json(study.run.file("regime_cobweb.json"), own)
        print(f"the run's own cobweb: E(s) = 1 − (1 − s)^{own['gamma']:.2f}, M(c) = {own['a']:+.3f} + "
              f"{own['b']:.3f}·c ({own['m_points']} M-steps); fixed points "
              + ", ".join(f"c = {f['c']:.3f} (slope {f['slope']:.2f})" for f in own["fixed_points"])
              + "; c_t measured " + " → ".join(f"{c:.3f}" for c in own["measured"])
              + ", predicted " + " → ".join(f"{c:.3f}" for c in own["predicted"]), flush=True)
    return df


def regime_cobweb(estep_points: Sequence[tuple[float, float]], df, steps: int) -> dict:
    """The run's own cobweb: its E-steps' (s, c) fitted as E(s) = 1 − (1 − s)^γ, the M-step map fitted as
    M(c) = a + b·c to every 1×-corpus row at the run's budget (its own seeds and the controlled corpora), their
    fixed points, and the trajectory they predict from the run's c₁ beside the measured one."""
    from lt_utils import cobweb

    rows = df[(df["multiple"] == 1) & (df["steps"] == steps)]
    e = cobweb.SelectionMap.fit([s for s, _ in estep_points], [c for _, c in estep_points])
    m = cobweb.TrainingMap.fit(rows["trained_on_correct"], rows["sample_correct"])
    measured = [c for _, c in estep_points]
    return {"gamma": e.gamma, "e_span": list(e.span), "a": m.a, "b": m.b, "m_span": list(m.span),
            "m_points": len(rows), "fixed_points": [{"c": f.c, "slope": f.slope, "stable": f.stable}
                                                    for f in cobweb.fixed_points(e, m)],
            "measured": measured, "predicted": cobweb.trajectory(e, m, measured[0], len(measured) - 1)}


def build_table(rows: list[dict]):
    import pandas as pd

    df = pd.DataFrame(rows, columns=COLUMNS)
    order = ["corpus", "multiple", "steps", "trained_on_correct", "source", "seed"]
    return df.sort_values(order, ascending=[False, True, True, True, True, True],
                          kind="mergesort").reset_index(drop=True)


read_table = functools.partial(tables.read_table, maker=MAKER)   # read_table(path)
draw = functools.partial(tables.draw, figure=FIGURE)              # draw(df, out_dir)


def main(argv: list[str] | None = None) -> int:
    return sweep_main(sys.modules[__name__], MStepTransferConfig, argv, default_params="mstep_transfer",
                      what="M-step transfer", report=lambda df: print(df.round(3).to_string()))

if __name__ == "__main__":
    sys.exit(main())
