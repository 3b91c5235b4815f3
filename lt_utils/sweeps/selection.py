"""How the E-step's choice among K samples works, and what else could choose: K up to 16, and two selection rules
that need no verifier, measured on the generators of a finished stage-03 run.

    python -m lt_utils.sweeps.selection              # params/selection/selection.yaml (make selection)
    python -m lt_utils.sweeps.selection --redraw     # figures/data/selection_ablation.csv -> figures/selection_ablation.*

For each E-step of the run, its generator draws K = 16 posterior samples for a spread of bootstrap chunks, in the
E-step's own proposal and with its own seeds: the E-step's candidate cache is copied first, so the first 4
samples of every chunk are the very ones the study drew (checked) and 12 more are new.  The world's verifier then
marks every candidate, and for each K in {1, 2, 4, 8, 16} (the first K samples) the share of chunks whose chosen
thought verifies is computed under each rule:

* ``resample`` -- BoLT's E-step: one draw with probability ∝ w = p(z, x) / q(z | x).  Its *expected* correctness
  (Σ w_j · right_j per chunk) is reported, which is what a draw averages to, without the draw's noise;
* ``argmax`` -- the candidate of largest log w (beyond the paper, verifier-free);
* ``memory`` -- from E-step 2 on, the thought the previous E-step selected for the chunk joins the K candidates,
  re-weighted by the current generator (its log q teacher-forced in the proposal's density), then resampling as
  above (beyond the paper, verifier-free; the kept thought was not drawn from q, so w is not an importance
  weight for it: a heuristic, labelled as such);
* ``memory_argmax`` -- the same candidates, largest log w;
* ``sample`` -- one sample's correctness (the share of the first K samples that verify);
* ``best_of_k`` -- any of the first K verifies: what a perfect verifier would select (the ceiling).

λ = selected ÷ one sample's correctness (`lt_utils.loop_diagnostics`).  The verifier only measures; no rule uses it.
"""

from __future__ import annotations

import functools
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from lt_utils.runtime.config import require
from lt_utils.runtime.paths import FIGURES_DIR, PARAMS_DIR, resolve  # noqa: F401 (the dirs: read by sweep_main)
from lt_utils.report import tables
from lt_utils.sweeps.entry import sweep_main

PARAMS_FILE = "selection.yaml"
TABLE = "selection_ablation.csv"
PAIRED_TABLE = "selection_ablation_paired.csv"   # the rules' differences, paired by chunk, with 95% intervals
# (a, b): a − b per chunk; "resample@16" is resampling from K = 16
PAIRS = [(("argmax", 4), ("resample", 4)), (("argmax", 16), ("resample", 16)), (("memory", 4), ("resample", 4)),
         (("memory_argmax", 4), ("resample", 4)), (("resample", 16), ("resample", 4))]
FIGURE = "selection_ablation"
MAKER = "make selection"
KS = (1, 2, 4, 8, 16)
RULES = ("sample", "resample", "argmax", "memory", "memory_argmax", "best_of_k")
COLUMNS = ["source", "estep", "generator", "k", "rule", "correct", "n_chunks"]


@dataclass(frozen=True)
class SelectionConfig:
    runs: list[str] = field(default_factory=list)   # finished stage-03 run directories (runs/<study>/03_bootstrap_em)
    chunks: int = 2000                               # bootstrap chunks per E-step, spread evenly over the corpus
    k: int = 16                                      # samples drawn per chunk (the E-step's own come first)
    work_dir: str = "runs/selection"                 # caches of the extra samples, one per run and E-step
    figures_dir: str = "figures"                     # the figure and data/selection_ablation.csv

    def __post_init__(self):
        require(len(self.runs) > 0, "runs: name at least one finished stage-03 run directory")
        require(self.chunks >= 1, "chunks: must be ≥ 1")
        require(self.k >= 1, "k: must be ≥ 1")


# --------------------------------------------------------------------------- the rules (pure)
def _argmax_terminated(log_w: np.ndarray, term: np.ndarray) -> int:
    lw = np.where(term, log_w, -np.inf) if term.any() else log_w
    return int(np.argmax(lw))


def chosen_correctness(log_w: Sequence[float], terminated: Sequence[bool], right: Sequence[bool]) -> dict[str, float]:
    """Per chunk, each rule's probability of choosing a thought that verifies, over these candidates.

    Unterminated candidates get weight 0 while any candidate terminated, as in the E-step
    (`estep.resample_index`); with none terminated the E-step takes the argmax, and so does this.
    """
    from lt_utils.estep import normalized_weights

    lw = np.asarray(log_w, dtype=np.float64)
    term = np.asarray(terminated, dtype=bool)
    ok = np.asarray(right, dtype=np.float64)
    best = _argmax_terminated(lw, term)
    resample = float(normalized_weights(lw, term) @ ok) if term.any() else float(ok[best])
    return {"resample": resample, "argmax": float(ok[best]), "best_of_k": float(ok.max()), "sample": float(ok.mean())}


def chunk_rules(cands: Sequence[dict], right: Sequence[bool], memory: dict | None, ks: Sequence[int]
                ) -> dict[tuple[int, str], float]:
    """{(K, rule): probability that the chunk's chosen thought verifies} from its first K candidates.

    `cands` hold log_w and terminated; `memory` (or None) is the previous E-step's selected thought with its
    log_w under the current generator and `right`.
    """
    out = {}
    for k in ks:
        c = cands[:k]
        base = chosen_correctness([x["log_w"] for x in c], [x["terminated"] for x in c], right[:k])
        out.update({(k, rule): v for rule, v in base.items()})
        if memory is not None:
            m = chosen_correctness([x["log_w"] for x in c] + [memory["log_w"]],
                                   [x["terminated"] for x in c] + [True], list(right[:k]) + [memory["right"]])
            out[(k, "memory")], out[(k, "memory_argmax")] = m["resample"], m["argmax"]
    return out


def summarize(per_chunk: Sequence[dict[tuple[int, str], float]]) -> dict[tuple[int, str], float]:
    """Mean over chunks of each (K, rule)."""
    keys = sorted({key for row in per_chunk for key in row})
    return {key: float(np.mean([row[key] for row in per_chunk if key in row])) for key in keys}


def paired_rows(per_chunk: Sequence[dict[tuple[int, str], float]], **labels) -> list[dict]:
    """`PAIRS` differences over the chunks that have both sides, paired by chunk (t interval, `stats`)."""
    from lt_utils.stats import paired_compare

    rows = []
    for (ra, ka), (rb, kb) in PAIRS:
        a = {i: row[(ka, ra)] for i, row in enumerate(per_chunk) if (ka, ra) in row and (kb, rb) in row}
        if len(a) < 2:
            continue
        b = {i: per_chunk[i][(kb, rb)] for i in a}
        c = paired_compare(a, b, f"{ra}@{ka}", f"{rb}@{kb}")
        rows.append({**labels, "comparison": f"{c.label_a} − {c.label_b}", "a": c.mean_a, "b": c.mean_b,
                     "diff": c.diff, "ci_low": c.ci_low, "ci_high": c.ci_high, "p": c.p_value, "n_chunks": c.n_a})
    return rows


# --------------------------------------------------------------------------- one stage-03 run
def _stage(stage_dir: Path):
    """The finished stage-03 run at `stage_dir`, read only."""
    from lt_utils.stages.bootstrap_em import Study

    study = Study.of_finished(stage_dir)
    require(not study.text, f"{stage_dir}: a text corpus has no verifier; the selection sweep needs the world's")
    return study


def estep_rows(study, iteration: int, cfg: SelectionConfig, work: Path) -> tuple[list[dict], list[dict]]:
    """The table rows of one E-step: every (K, rule) over `cfg.chunks` chunks of the bootstrap corpus, and the
    rules' paired differences."""
    from lt_utils.estep import model_fingerprint, run_estep
    from lt_utils.runtime.runs import MissingInputError, read_jsonl
    from lt_utils.stages import em_estep

    stage = study.run.path
    done = stage / f"iter{iteration}" / "estep.jsonl"
    if not done.is_file():
        raise MissingInputError(f"{done} not found: E-step {iteration} of this run has not finished")
    own = read_jsonl(done)
    positions = em_estep.spread_positions(len(study.boot_chunks), cfg.chunks)
    chunks = [study.boot_chunks[p] for p in positions]
    previous = read_jsonl(stage / f"iter{iteration - 1}" / "estep.jsonl") if iteration > 1 else None
    gen_name = "warmstart" if iteration == 1 else f"iter{iteration - 1}"
    gen = study.model_dir(gen_name)
    ecfg = em_estep.estep_config(study.cfg, k=cfg.k, seed=em_estep.estep_seed(study.cfg, iteration))   # its own seed
    cache = work / f"iter{iteration}_candidates.sqlite"
    if not cache.exists():   # the study's own samples first: candidates 0..k_drawn-1 are read, not drawn
        shutil.copy(stage / f"iter{iteration}" / "candidates.sqlite", cache)

    def sample_and_rescore(model, tok, backend):
        records = run_estep(model, tok, chunks, ecfg, cache_path=cache, model_key=model_fingerprint(gen),
                            backend=backend, progress=True)
        if previous is None:
            return records, None
        kept = [previous[p]["candidates"][previous[p]["selected"]] for p in positions]
        return records, (kept, em_estep.rescore(model, tok, chunks, [c["tokens"] for c in kept], ecfg))

    records, memory = em_estep.with_generator(gen, study.tok_dir, sample_and_rescore,
                                              threads=study.cfg.n_workers * study.cfg.threads_per_worker)
    per_chunk = []
    for i, (p, r) in enumerate(zip(positions, records)):
        ours = own[p]["candidates"]
        n_own = min(len(ours), len(r["candidates"]))
        if [c["tokens"] for c in r["candidates"][:n_own]] != [c["tokens"] for c in ours[:n_own]]:
            raise RuntimeError(f"chunk {p}: the first {n_own} samples differ from the study's E-step {iteration}")
        right = [em_estep.chunk_is_correct(chunks[i], c["text"]) for c in r["candidates"]]
        mem = None
        if memory is not None:
            kept, (log_q, log_p) = memory[0][i], memory[1][i]
            if kept["terminated"]:
                mem = {"log_w": log_p - log_q, "right": em_estep.chunk_is_correct(chunks[i], kept["text"])}
        per_chunk.append(chunk_rules(r["candidates"], right, mem, [k for k in KS if k <= cfg.k]))
    source = f"{stage.parent.name} seed {study.cfg.seeds[0]}"
    rows = [{"source": source, "estep": iteration, "generator": gen_name, "k": k, "rule": rule, "correct": v,
             "n_chunks": len(per_chunk)} for (k, rule), v in summarize(per_chunk).items()]
    return rows, paired_rows(per_chunk, source=source, estep=iteration)


def build_table(rows: list[dict]):
    import pandas as pd

    df = pd.DataFrame(rows, columns=COLUMNS)
    df["rule"] = pd.Categorical(df["rule"], RULES, ordered=True)
    df = df.sort_values(["source", "estep", "rule", "k"], kind="mergesort").reset_index(drop=True)
    df["rule"] = df["rule"].astype(str)
    return df


def run(cfg: SelectionConfig):
    import pandas as pd

    rows, paired = [], []
    for d in cfg.runs:
        stage_dir = resolve(d)
        study = _stage(stage_dir)
        work = resolve(cfg.work_dir) / stage_dir.parent.name
        work.mkdir(parents=True, exist_ok=True)
        for it in range(1, study.cfg.iterations + 1):
            if (stage_dir / f"iter{it}" / "estep.jsonl").is_file():
                r, p = estep_rows(study, it, cfg, work)
                rows, paired = rows + r, paired + p
    df = build_table(rows)
    paired_df = pd.DataFrame(paired)
    if cfg.figures_dir:
        tables.publish(df, resolve(cfg.figures_dir), TABLE, FIGURE, MAKER)
        tables.write_table(paired_df, resolve(cfg.figures_dir) / "data" / PAIRED_TABLE)
    print(paired_df.round(4).to_string())
    return df


read_table = functools.partial(tables.read_table, maker=MAKER)   # read_table(path)
draw = functools.partial(tables.draw, figure=FIGURE)              # draw(df, out_dir)


def lift_table(df):
    """λ = selected ÷ one sample's correctness, per source, E-step, K and rule (sample and best-of-K included)."""
    wide = df.pivot_table(index=["source", "estep", "k"], columns="rule", values="correct")
    return wide.div(wide["sample"], axis=0).round(3)


def main(argv: list[str] | None = None) -> int:
    def report(df):
        print(df.pivot_table(index=["source", "estep", "k"], columns="rule", values="correct").round(3).to_string())
        print("\nλ (selected ÷ one sample):")
        print(lift_table(df).to_string())

    return sweep_main(sys.modules[__name__], SelectionConfig, argv, default_params="selection", what="selection",
                      report=report)

if __name__ == "__main__":
    sys.exit(main())
