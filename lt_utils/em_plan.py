"""The runs of stage 03 (BoLT), worked out once from its config.

The stage trains, the progress view counts and the compute estimate prices the
same list, and the loop-gain map trains its cells' M-steps from it, so a new
kind of run (or a change in how many there are) is made here and nowhere
else.  Pure: no torch, no files.

Runs, in the order the stage schedules them:

* ``warmstart`` (iteration 0), one per seed, on the warmstart corpus;
* ``iter<i>``, the M-steps, one per seed and iteration, from the base model (the
  iterations between the first and the last: one per `middle_iteration_seeds`);
* side runs that no E-step waits for: ``raw_token_match`` (as many raw tokens
  as one M-step: its steps are known once the iteration-1 corpus is measured),
  ``raw_flop_match`` (an M-step's steps on raw text) and ``iter1_k<K>`` (the
  K ablation, iteration 1's samples cut to the first K; none with
  ``k_ablation_train: false``, which keeps only the selected corpora).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TOKEN_MATCH = "token_match"   # `steps_of` value of the run whose steps follow from a measured token ratio


@dataclass(frozen=True)
class PlannedRun:
    name: str              # run directory: train/<name>/seed<seed>
    arm: str               # the results' arm (warmstart, bolt_iter<i>, raw_token_match, bolt_iter1_k<K>, ...)
    role: str              # warmstart | m_step | baseline | k_ablation
    seed: int
    corpus: str            # the corpus it reads, relative to the stage dir (or "raw:bootstrap")
    layout: str            # "random" (thought layouts) or "raw"
    steps_of: str          # the config field giving its steps, or TOKEN_MATCH
    iteration: int | None = None
    k: int | None = None

    def steps(self, cfg: Any, token_ratio: float | None = None) -> int:
        """Optimizer steps; a token-match run needs the iteration-1 corpus' training tokens per raw token."""
        if self.steps_of == TOKEN_MATCH:
            if token_ratio is None:
                raise ValueError("a token-match run's steps need the measured token ratio")
            return max(1, round(cfg.steps / token_ratio))
        return int(getattr(cfg, self.steps_of))


def warmstarts(cfg: Any) -> list[PlannedRun]:
    return [PlannedRun("warmstart", "warmstart", "warmstart", s, "corpora/warmstart_thoughts.jsonl", "random",
                       "warmstart_steps", iteration=0) for s in cfg.seeds]


def m_step_seeds(cfg: Any, iteration: int) -> list[int]:
    """Seeds of one iteration's M-steps: the claims read the first and last iterations, the next E-step seeds[0]'s."""
    middle = getattr(cfg, "middle_iteration_seeds", None)
    return list(middle) if middle and 1 < iteration < cfg.iterations else list(cfg.seeds)


def m_steps(cfg: Any, iteration: int) -> list[PlannedRun]:
    return [PlannedRun(f"iter{iteration}", f"bolt_iter{iteration}", "m_step", s, f"iter{iteration}/corpus.jsonl",
                       "random", "steps", iteration=iteration, k=cfg.k) for s in m_step_seeds(cfg, iteration)]


def baselines(cfg: Any) -> list[PlannedRun]:
    runs = []
    if "raw_token_match" in cfg.baselines:
        runs += [PlannedRun("raw_token_match", "raw_token_match", "baseline", s, "raw:bootstrap", "raw", TOKEN_MATCH)
                 for s in cfg.seeds]
    if "raw_flop_match" in cfg.baselines:
        runs += [PlannedRun("raw_flop_match", "raw_flop_match", "baseline", s, "raw:bootstrap", "raw", "steps")
                 for s in cfg.seeds]
    return runs


def k_ablation(cfg: Any) -> list[PlannedRun]:
    if not cfg.k_ablation_train:
        return []
    return [PlannedRun(f"iter1_k{kk}", f"bolt_iter1_k{kk}", "k_ablation", s, f"iter1/corpus_k{kk}.jsonl", "random",
                       "steps", iteration=1, k=kk)
            for kk in sorted(set(cfg.k_ablation) - {cfg.k}) for s in cfg.seeds]


def side_runs(cfg: Any, n_first_warmstarts: int) -> list[PlannedRun]:
    """Runs no E-step waits for: warmstarts beyond the first pool, the baselines, the K ablation."""
    return warmstarts(cfg)[n_first_warmstarts:] + baselines(cfg) + k_ablation(cfg)


def side_runs_of_iteration(cfg: Any, iteration: int, n_first_warmstarts: int) -> list[PlannedRun]:
    """Iteration `iteration`'s contiguous share of the side runs (shares differ by at most one run).

    They fill the M-step pools, so the cores stay busy instead of idling at
    each E-step barrier.
    """
    extras = side_runs(cfg, n_first_warmstarts)
    n = cfg.iterations
    bounds = [round(i * len(extras) / n) for i in range(n + 1)]
    return extras[bounds[iteration - 1]:bounds[iteration]]


def all_runs(cfg: Any) -> list[PlannedRun]:
    """Every run of the stage, whatever the pool it lands in."""
    return warmstarts(cfg) + [r for i in range(1, cfg.iterations + 1) for r in m_steps(cfg, i)] \
        + baselines(cfg) + k_ablation(cfg)


def k_drawn(cfg: Any, iteration: int) -> int:
    """Samples drawn per chunk at an E-step: iteration 1 draws enough for every K of the ablation."""
    return max([cfg.k, *cfg.k_ablation]) if iteration == 1 else cfg.k


def selected_ks(cfg: Any, iteration: int) -> list[int]:
    """The K values whose selected thoughts an E-step writes as corpora: the loop's, plus the ablation's at 1."""
    return sorted({cfg.k, *cfg.k_ablation}) if iteration == 1 else [cfg.k]


def estimated_steps(cfg: Any, token_ratio: float) -> int:
    """Optimizer steps of the whole stage, with token-match runs at an assumed ratio."""
    return sum(r.steps(cfg, token_ratio) for r in all_runs(cfg))
