"""Stage 04's input: every stored training run of a study as one tidy table.

Analysis reads only what stages wrote to disk (`run.json` + `metrics.jsonl`
of each training run); nothing here touches a model.  Runs are selected by
their stored metadata (stage, arm, seed), never by parsing directory names.

Every evaluation point carries its `split`: `dev` during training (world
studies), `test` at the end of each run.  Final tables read test points only;
learning curves and calibration read dev points (test where a run has none,
as a text corpus's MATH/GSM8K runs, or runs stored before the split existed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from lt_utils.runtime.runs import read_json, read_jsonl


@dataclass(frozen=True)
class AnalysisConfig:
    study: str = "smoke"            # which study's runs to read
    run_root: str = "runs"          # where run directories live
    figures_dir: str = ""           # "" = <run dir>/figures; the default CPU study writes to figures/
    headline_arm: str = "latent_thoughts"   # compared against the baseline in the summary
    baseline_arm: str = "raw_repeat"        # per-family comparison partner
    comparison_baselines: list[str] = field(default_factory=lambda: ["raw_repeat", "wrap_orig", "wrap_cot",
                                                                      "raw_fresh"])  # every baseline of the headline
    overwrite: bool = False         # always recomputed from stored results; kept for symmetry

    def __post_init__(self):
        from lt_utils.runtime.config import require_study_name

        require_study_name(self.study)


def training_runs(study_dir: str | Path) -> list[Path]:
    """Directories of finished training runs anywhere under a study."""
    return sorted(p.parent for p in Path(study_dir).rglob("run.json") if (p.parent / "DONE").exists())


def collect_evals(study_dir: str | Path) -> pd.DataFrame:
    """One row per evaluation point of every finished training run."""
    rows = []
    for run in training_runs(study_dir):
        info = read_json(run / "run.json")
        for rec in read_jsonl(run / "metrics.jsonl"):
            if rec.get("kind") != "eval":
                continue
            rows.append({"stage": info.get("stage", ""), "arm": info.get("arm", run.parent.name),
                         "seed": info.get("seed"), "iteration": info.get("iteration"), "k": info.get("k"),
                         "run_dir": str(run.relative_to(study_dir)), "split": "test",
                         **{k: v for k, v in rec.items() if k not in ("kind", "time")}})
    df = pd.DataFrame(rows)
    if not df.empty:
        df = df.sort_values(["stage", "arm", "seed", "step", "split"]).reset_index(drop=True)
        ratios = token_ratios(study_dir)
        df["effective_raw_tokens"] = [t / ratios.get((st, a), 1.0) for st, a, t in
                                      zip(df["stage"], df["arm"], df["tokens"])]
    return df


def token_ratios(study_dir: str | Path) -> dict[tuple[str, str], float]:
    """(stage, arm) → training tokens per raw token, from each stage's stored token_ratios.json."""
    out = {}
    for path in Path(study_dir).rglob("token_ratios.json"):
        stage = path.parent.name
        out.update({(stage, arm): float(r) for arm, r in read_json(path).items()})
    return out


def by_family(evals: pd.DataFrame) -> pd.DataFrame:
    """Long format of the per-family accuracy columns: arm, seed, tokens, family, accuracy."""
    cols = [c for c in evals.columns if c.startswith("accuracy/")]
    if evals.empty or not cols:
        return pd.DataFrame(columns=["arm", "seed", "tokens", "family", "accuracy"])
    long = evals.melt(id_vars=["stage", "arm", "seed", "step", "tokens"], value_vars=cols,
                      var_name="family", value_name="family_accuracy")
    long["family"] = long["family"].str.removeprefix("accuracy/")
    return long.drop(columns=[]).rename(columns={"family_accuracy": "accuracy"}).dropna(subset=["accuracy"])


def final_points(evals: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """The last evaluation of every run on `split` (one row per arm × seed): test for results, dev for calibration."""
    if evals.empty:
        return evals
    on = evals[evals["split"] == split]
    if on.empty:
        return on.reset_index(drop=True)
    idx = on.groupby(["stage", "arm", "seed"])["step"].idxmax()
    return on.loc[idx].reset_index(drop=True)


def curve_points(evals: pd.DataFrame) -> pd.DataFrame:
    """Every run's evaluations along training: its dev points, or its test points where it has no dev split."""
    if evals.empty:
        return evals
    has_dev = evals.groupby("run_dir")["split"].transform(lambda s: (s == "dev").any())
    keep = (evals["split"] == "dev") | ~has_dev
    return evals[keep].reset_index(drop=True)


def packing_table(study_dir: str | Path) -> pd.DataFrame:
    """Per stage and latent arm: the share of thoughts trained apart from their question (epoch 0, mean over seeds).

    `share_apart` as the runs were packed; `share_apart_row_cuts` had the same
    rows been cut into row-sized pieces (the packing before `cut_at_chunks`).
    """
    rows = []
    for run in training_runs(study_dir):
        info = read_json(run / "run.json")
        p = info.get("packing") or {}
        if "share_apart" in p:
            rows.append({"stage": info.get("stage", ""), "arm": info.get("arm", run.parent.name),
                         "seed": info.get("seed"), "thoughts": p["thoughts"],
                         "share_apart_row_cuts": p.get("share_apart_row_cuts", p["share_apart"]),
                         "share_apart": p["share_apart"]})
    cols = ["stage", "arm", "seeds", "thoughts", "share_apart_row_cuts_%", "share_apart_%"]
    if not rows:
        return pd.DataFrame(columns=cols)
    df = pd.DataFrame(rows).groupby(["stage", "arm"], as_index=False, sort=False).agg(
        seeds=("seed", "count"), thoughts=("thoughts", "mean"), before=("share_apart_row_cuts", "mean"),
        after=("share_apart", "mean"))
    df["share_apart_row_cuts_%"] = (df.pop("before") * 100).round(1)
    df["share_apart_%"] = (df.pop("after") * 100).round(1)
    df["thoughts"] = df["thoughts"].round().astype(int)
    return df[cols]


def summary_table(finals: pd.DataFrame) -> pd.DataFrame:
    """Per arm: n seeds, final accuracy mean ± SE (percent), unparseable rate and validation NLL."""
    from lt_utils.stats import mean_se

    rows = []
    for (stage, arm), g in finals.groupby(["stage", "arm"], sort=False):
        acc, acc_se, n = mean_se(g["accuracy"] * 100)
        row = {"stage": stage, "arm": arm, "seeds": n, "tokens": int(g["tokens"].max()),
               "accuracy_%": round(acc, 1), "accuracy_se": round(acc_se, 1)}
        if "unparseable" in g:
            row["unparseable_%"] = round(float(g["unparseable"].mean() * 100), 1)
        if "eval_shots" in g and g["eval_shots"].notna().any():
            row["shots"] = int(g["eval_shots"].max())
        if "val_nll" in g:
            nll, nll_se, _ = mean_se(g["val_nll"])
            row["val_nll"] = round(nll, 4)
            row["val_nll_se"] = round(nll_se, 4)
        rows.append(row)
    return pd.DataFrame(rows)


def headline(finals: pd.DataFrame, arm: str, baseline: str):
    """Welch comparison of final accuracy (percentage points) between two arms, or None if either is absent."""
    from lt_utils.stats import welch_compare

    a = finals.loc[finals["arm"] == arm, "accuracy"] * 100
    b = finals.loc[finals["arm"] == baseline, "accuracy"] * 100
    if a.empty or b.empty:
        return None
    return welch_compare(a.to_numpy(), b.to_numpy(), label_a=arm, label_b=baseline)


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub-markdown table (no extra dependency)."""
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(str(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def comparison_rows(finals: pd.DataFrame, arm: str, baseline: str) -> pd.DataFrame:
    """Final-accuracy comparison of two arms, overall and per family (percentage points, Welch)."""
    cols = ["accuracy"] + sorted(c for c in finals.columns if c.startswith("accuracy/"))
    rows = []
    for col in cols:
        a = finals.loc[finals["arm"] == arm, col].dropna() * 100
        b = finals.loc[finals["arm"] == baseline, col].dropna() * 100
        if a.empty or b.empty:
            continue
        rows.append({"metric": "all families" if col == "accuracy" else col.split("/", 1)[1],
                     **_welch_row(a, b, f"{arm}_%", f"{baseline}_%")})
    return pd.DataFrame(rows)


def _welch_row(a: pd.Series, b: pd.Series, name_a: str, name_b: str) -> dict:
    """Means, difference, 95% Welch interval, p and n of two samples of final accuracy (percent)."""
    from lt_utils.stats import welch_compare

    c = welch_compare(a.to_numpy(), b.to_numpy(), label_a=name_a, label_b=name_b)
    return {name_a: round(c.mean_a, 1), name_b: round(c.mean_b, 1), "diff_pts": round(c.diff, 1),
            "ci95_low": round(c.ci_low, 1), "ci95_high": round(c.ci_high, 1),
            "welch_p": float(f"{c.p_value:.2g}") if c.p_value == c.p_value else None, "n": f"{c.n_a} vs {c.n_b}"}


def arm_comparisons(finals: pd.DataFrame, arm: str, baselines: list[str]) -> pd.DataFrame:
    """Final accuracy of `arm` against each baseline present (percentage points, Welch 95% CI and p)."""
    rows = []
    a = finals.loc[finals["arm"] == arm, "accuracy"].dropna() * 100
    for base in baselines:
        b = finals.loc[finals["arm"] == base, "accuracy"].dropna() * 100
        if a.empty or b.empty:
            continue
        rows.append({"comparison": f"{arm} − {base}", **_welch_row(a, b, f"{arm}_%", "baseline_%")})
    return pd.DataFrame(rows)


def answer_breakdown(finals: pd.DataFrame) -> pd.DataFrame:
    """Per arm: correct, readable-but-wrong and unparseable final answers (percent, mean over seeds)."""
    rows = []
    for (stage, arm), g in finals.groupby(["stage", "arm"], sort=False):
        correct = float(g["accuracy"].mean() * 100)
        unparseable = float(g["unparseable"].mean() * 100) if "unparseable" in g else float("nan")
        rows.append({"stage": stage, "arm": arm, "seeds": len(g), "correct_%": round(correct, 1),
                     "wrong_%": round(100 - correct - unparseable, 1), "unparseable_%": round(unparseable, 1)})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- teacher-quality sweep
def teacher_quality(study_dir: str | Path, finals: pd.DataFrame,
                    stage: str = "02_synthetic_thoughts") -> pd.DataFrame:
    """Verified thought quality of every teacher setting the sweep's runs used: error_rate, thought_quality."""
    from lt_utils.stages.synthetic_thoughts import sweep_error_rate, teacher_quality_file

    stage_dir = Path(study_dir) / stage
    arms = finals.loc[finals["stage"] == stage, "arm"] if len(finals) else []
    rates = sorted({0.0 if a == "latent_thoughts" else sweep_error_rate(a) for a in arms} - {None})
    rows = []
    for err in rates:
        qpath = stage_dir / teacher_quality_file("comparison", err or None)
        rows.append({"error_rate": err, "thought_quality": read_json(qpath).get("fraction_correct", float("nan"))
                     if qpath.exists() else float("nan")})
    return pd.DataFrame(rows, columns=TABLE_COLUMNS["teacher_quality"])


def teacher_sweep(study_dir: str | Path | None, finals: pd.DataFrame, stage: str = "02_synthetic_thoughts",
                  quality: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per latent-arm run of the teacher sweep: teacher error rate, verified thought quality, accuracy.

    The oracle arm (`latent_thoughts`) is the error-rate-0 point; thought
    quality is the fraction of units whose teacher thought the world's
    verifier accepts, as stored by stage 02 (or given as `quality`, the
    `teacher_quality` table).
    """
    from lt_utils.stages.synthetic_thoughts import sweep_error_rate

    if quality is None:
        quality = teacher_quality(study_dir, finals, stage)
    by_rate = dict(zip(quality["error_rate"], quality["thought_quality"]))
    rows = []
    for _, r in finals[finals["stage"] == stage].iterrows() if len(finals) else []:
        err = 0.0 if r["arm"] == "latent_thoughts" else sweep_error_rate(r["arm"])
        if err is None:
            continue
        rows.append({"arm": r["arm"], "error_rate": err, "thought_quality": by_rate.get(err, float("nan")),
                     "seed": r["seed"], "accuracy": r["accuracy"]})
    return pd.DataFrame(rows, columns=["arm", "error_rate", "thought_quality", "seed", "accuracy"])


def reference_level(finals: pd.DataFrame, arm: str) -> tuple[float, float] | None:
    """(mean, SE) of an arm's final accuracy, for horizontal reference lines; None if absent."""
    from lt_utils.stats import mean_se

    acc = finals.loc[finals["arm"] == arm, "accuracy"].dropna()
    if acc.empty:
        return None
    m, se, _ = mean_se(acc.to_numpy())
    return m, se


# ----------------------------------------------------------------------------- bootstrapped EM
def em_accuracy(finals: pd.DataFrame, stage: str = "03_bootstrap_em") -> pd.DataFrame:
    """Final accuracy of the warmstart (iteration 0) and of each EM iteration's M-step, one row per seed."""
    f = finals[finals["stage"] == stage]
    rows = []
    for _, r in f.iterrows():
        if r["arm"] == "warmstart":
            it = 0
        elif r["arm"].startswith("bolt_iter") and "_k" not in r["arm"]:
            it = int(r["arm"].removeprefix("bolt_iter"))
        else:
            continue
        rows.append({"iteration": it, "seed": r["seed"], "accuracy": r["accuracy"], "tokens": r["tokens"]})
    return pd.DataFrame(rows, columns=["iteration", "seed", "accuracy", "tokens"]).sort_values(["iteration", "seed"])


def estep_summaries(study_dir: str | Path, stage: str = "03_bootstrap_em") -> pd.DataFrame:
    """One row per E-step: verified quality of the selected / first / best-of-K thoughts and weight diagnostics."""
    rows = []
    for path in sorted((Path(study_dir) / stage).glob("iter*/estep_summary.json")):
        s = read_json(path)
        it = int(path.parent.name.removeprefix("iter"))
        rows.append({"iteration": it, "k": s.get("k"), "selected_correct": s.get("frac_selected_correct"),
                     "first_correct": s.get("frac_first_correct"), "any_correct": s.get("frac_any_correct"),
                     "candidates_correct": s.get("frac_candidates_correct"),
                     "mean_log_w_correct": s.get("mean_log_w_correct"),
                     "mean_log_w_incorrect": s.get("mean_log_w_incorrect"),
                     "mean_ess": s.get("mean_ess"), "frac_unterminated": s.get("frac_unterminated"),
                     "mean_thought_tokens": s.get("mean_thought_tokens")})
    return pd.DataFrame(rows, columns=TABLE_COLUMNS["estep_summaries"]).sort_values("iteration", ignore_index=True)


def em_elbo(study_dir: str | Path, stage: str = "03_bootstrap_em") -> pd.DataFrame:
    """Validation ELBO per raw token of each generator (warmstart = iteration 0), with its failure count."""
    rows = []
    for path in (Path(study_dir) / stage).glob("elbo/*.json"):
        d = read_json(path)
        name = path.stem
        it = 0 if name == "warmstart" else int(name.removeprefix("iter"))
        rows.append({"iteration": it, "generator": name, "elbo_per_token": d["elbo_per_token"],
                     "elbo_finite_chunks_per_token": d.get("elbo_finite_per_token"),
                     "chunks": d.get("chunks"), "chunks_without_finite_bound": d.get("chunks_without_finite_bound"),
                     "direct_log_px_per_token": d.get("direct_log_px_per_token")})
    return pd.DataFrame(rows, columns=TABLE_COLUMNS["em_elbo"]).sort_values("iteration", ignore_index=True)


LOOP_COLUMNS = {"trained_on_correct": "trained_on", "posterior_sample_correct": "posterior_sample",
                "selected_correct": "selected", "best_of_k_correct": "best_of_k", "rho": "rho", "lift": "lift",
                "lift_best_of_k": "lift_best_of_k", "gain": "gain", "prior_sample_correct": "prior_sample",
                "posterior_sample_correct_same_chunks": "posterior_same_chunks",
                "selected_right_answer_wrong_step": "right_answer_wrong_step",
                "distinct_per_chunk": "distinct_of_k", "auc_log_w": "auc_log_w",
                "auc_log_w_within_chunk": "auc_log_w_within_chunk"}


def loop_k(study_dir: str | Path, stage: str = "03_bootstrap_em") -> int | None:
    """The K the loop selects with (the stage's `k`), from its stored `config.yaml`; None where it is not stored."""
    path = Path(study_dir) / stage / "config.yaml"
    k = (yaml.safe_load(path.read_text()) or {}).get("k") if path.exists() else None
    return int(k) if k is not None else None


def loop_diagnostics(study_dir: str | Path, stage: str = "03_bootstrap_em",
                     elbo: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per E-step: retention ρ, lift λ, loop gain G = ρλ and the other loop diagnostics
    (`lt_utils.loop_diagnostics`), with the validation ELBO and direct log p(x) of the E-step's generator.

    ``k`` is the K the diagnostics describe: the loop's, also where the E-step drew more candidates
    for the K ablation (iteration 1), which ``k_drawn`` records.
    """
    elbo = em_elbo(study_dir, stage) if elbo is None else elbo
    elbo = {int(r["iteration"]): r for _, r in elbo.iterrows()}
    k_loop = loop_k(study_dir, stage)
    rows = []
    for path in sorted((Path(study_dir) / stage).glob("iter*/estep_summary.json")):
        s = read_json(path)
        it = int(path.parent.name.removeprefix("iter"))
        drawn = s.get("k")
        k = min(drawn, k_loop) if drawn is not None and k_loop is not None else drawn
        row = {"iteration": it, "k": k, "k_drawn": drawn}
        row.update({short: s.get(f"loop_{key}") for key, short in LOOP_COLUMNS.items()})
        gen = elbo.get(it - 1, {})  # the generator of E-step i is the model of iteration i-1 (0 = warmstart)
        row["generator_elbo"] = gen.get("elbo_per_token")
        row["generator_direct_log_px"] = gen.get("direct_log_px_per_token")
        fid = s.get("fidelity") or {}
        row["fidelity"] = (fid.get("bootstrap") or {}).get("f")
        row["greedy_posterior_correct"] = ((fid.get("bootstrap") or {}).get("greedy") or {}).get("correct")
        row["fidelity_dev"] = (fid.get("dev") or {}).get("f")
        rows.append(row)
    return pd.DataFrame(rows, columns=TABLE_COLUMNS["loop_diagnostics"]).sort_values("iteration", ignore_index=True)


def k_quality(study_dir: str | Path, stage: str = "03_bootstrap_em") -> pd.DataFrame:
    """Verified quality of the thoughts iteration 1's E-step selected with each K: k, thought_quality."""
    path = Path(study_dir) / stage / "iter1" / "estep_summary.json"
    quality = read_json(path).get("selected_correct_by_k", {}) if path.exists() else {}
    rows = sorted((int(k), q) for k, q in quality.items())
    return pd.DataFrame(rows, columns=TABLE_COLUMNS["k_quality"])


def k_ablation(study_dir: str | Path | None, finals: pd.DataFrame, stage: str = "03_bootstrap_em",
               quality: pd.DataFrame | None = None) -> pd.DataFrame:
    """Iteration-1 accuracy per K (one row per seed) with the verified quality of the thoughts selected with K."""
    if quality is None:
        quality = k_quality(study_dir, stage)
    by_k = {int(k): q for k, q in zip(quality["k"], quality["thought_quality"])}
    f = finals[finals["stage"] == stage] if len(finals) else finals
    rows = []
    for _, r in f.iterrows():
        if r["arm"] == "bolt_iter1" or r["arm"].startswith("bolt_iter1_k"):
            k = int(r["k"]) if r.get("k") == r.get("k") and r.get("k") is not None else None
            if r["arm"].startswith("bolt_iter1_k"):
                k = int(r["arm"].removeprefix("bolt_iter1_k"))
            rows.append({"k": k, "seed": r["seed"], "accuracy": r["accuracy"],
                         "thought_quality": by_k.get(k, float("nan"))})
    return pd.DataFrame(rows, columns=["k", "seed", "accuracy", "thought_quality"]).sort_values(["k", "seed"])


def em_estep_and_elbo(study_dir: str | Path | None, stage: str = "03_bootstrap_em", *,
                      estep: pd.DataFrame | None = None, elbo: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per iteration: the E-step's verified thought quality and its generator's validation ELBO, side by side.

    Row `iteration = i` holds the quality of the thoughts inferred in iteration
    i's E-step and the ELBO of the model trained in iteration i (0 = warmstart).
    The two tables are read from the study unless given.
    """
    q = estep_summaries(study_dir, stage) if estep is None else estep
    e = em_elbo(study_dir, stage) if elbo is None else elbo
    cols = ["selected_correct", "first_correct", "any_correct", "k", "mean_ess", "frac_unterminated"]
    q = q[["iteration", *cols]] if len(q) else pd.DataFrame(columns=["iteration", *cols])
    if len(e):
        e = e.rename(columns={"elbo_finite_chunks_per_token": "elbo", "chunks_without_finite_bound": "elbo_failures"})
        e["elbo"] = e["elbo"].fillna(e["elbo_per_token"])
        e = e[["iteration", "elbo", "elbo_failures"]]
    else:
        e = pd.DataFrame(columns=["iteration", "elbo", "elbo_failures"])
    return q.merge(e, on="iteration", how="outer").sort_values("iteration").reset_index(drop=True)


SYNTHETIC_STAGE, EM_STAGE = "02_synthetic_thoughts", "03_bootstrap_em"


# ----------------------------------------------------------------------------- figure data
# The tables every figure is drawn from.  Stage 04 writes them beside the figures (`<figures>/data/`), so
# `python -m lt_utils.report.redraw` redraws the committed figures in a fresh clone without rerunning the study.
TABLE_COLUMNS: dict[str, list[str]] = {
    "estep_summaries": ["iteration", "k", "selected_correct", "first_correct", "any_correct", "candidates_correct",
                        "mean_log_w_correct", "mean_log_w_incorrect", "mean_ess", "frac_unterminated",
                        "mean_thought_tokens"],
    "em_elbo": ["iteration", "generator", "elbo_per_token", "elbo_finite_chunks_per_token", "chunks",
                "chunks_without_finite_bound", "direct_log_px_per_token"],
    "teacher_quality": ["error_rate", "thought_quality"],
    "k_quality": ["k", "thought_quality"],
}
TABLE_COLUMNS["loop_diagnostics"] = ["iteration", "k", "k_drawn", *LOOP_COLUMNS.values(), "generator_elbo",
                                     "generator_direct_log_px", "fidelity", "greedy_posterior_correct",
                                     "fidelity_dev"]
FIGURE_TABLES = ("evals", "estep_summaries", "em_elbo", "loop_diagnostics", "teacher_quality", "k_quality")
EVAL_KEY_COLUMNS = ["stage", "arm", "seed", "step", "iteration", "k", "run_dir", "tokens", "raw_tokens",
                    "effective_raw_tokens"]


def study_tables(study_dir: str | Path, evals: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """Every table the figures read, from a study's stored results (the finished stages are verified first)."""
    study_dir = Path(study_dir)
    verify_stages(study_dir)
    evals = collect_evals(study_dir) if evals is None else evals
    finals = final_points(evals)
    elbo = em_elbo(study_dir, EM_STAGE)
    return {"evals": evals, "estep_summaries": estep_summaries(study_dir, EM_STAGE), "em_elbo": elbo,
            "loop_diagnostics": loop_diagnostics(study_dir, EM_STAGE, elbo),
            "teacher_quality": teacher_quality(study_dir, finals),
            "k_quality": k_quality(study_dir, EM_STAGE)}


def verify_stages(study_dir: str | Path) -> list[Path]:
    """Check every finished stage of a study against its manifest (one-line error on a damaged artifact)."""
    from lt_utils.runtime.runs import is_done, verify_artifacts

    done = [p for p in sorted(Path(study_dir).iterdir()) if p.is_dir() and is_done(p)] \
        if Path(study_dir).is_dir() else []
    for p in done:
        verify_artifacts(p)
    return done


def require_evals(evals: pd.DataFrame, study_dir: str | Path) -> pd.DataFrame:
    """`evals`, or a one-line error naming the study directory and the command that fills it."""
    from lt_utils.runtime.runs import MissingInputError

    if evals.empty:
        study = Path(study_dir).name
        raise MissingInputError(f"no finished training run under {study_dir} (run the study first: "
                                f"python -m lt_utils.cli.pipeline --profile {study})")
    return evals


def _stable(df: pd.DataFrame, name: str) -> pd.DataFrame:
    """Rows and columns in a fixed order, so the same results always give the same file."""
    if name == "evals":
        lead = [c for c in EVAL_KEY_COLUMNS if c in df.columns]
        df = df[lead + sorted(c for c in df.columns if c not in lead)]
        keys = [c for c in ("stage", "arm", "seed", "step", "run_dir") if c in df.columns]
    else:
        df = df[TABLE_COLUMNS[name]]
        keys = list(df.columns[:1])
    return df.sort_values(keys, kind="mergesort", ignore_index=True) if keys and len(df) else df


def write_figure_data(tables: dict[str, pd.DataFrame], data_dir: str | Path) -> list[Path]:
    """Write each table as `<data_dir>/<name>.csv` (floats exactly, sorted rows and columns)."""
    from lt_utils.runtime.runs import write_text

    paths = []
    for name in FIGURE_TABLES:
        paths.append(write_text(Path(data_dir) / f"{name}.csv",
                                _stable(tables[name], name).to_csv(index=False, lineterminator="\n")))
    return paths


def read_figure_data(data_dir: str | Path, maker: str = "") -> dict[str, pd.DataFrame]:
    """The tables `write_figure_data` wrote, or a one-line error naming the missing file and `maker`, its command."""
    from lt_utils.runtime.runs import MissingInputError

    data_dir = Path(data_dir)
    maker = maker or ("python -m lt_utils.cli.pipeline --profile <profile> --only 04_analysis, after that profile's "
                      "study has run")
    tables = {}
    for name in FIGURE_TABLES:
        path = data_dir / f"{name}.csv"
        if not path.is_file():
            raise MissingInputError(f"{path} not found (written by the analysis stage: {maker})")
        tables[name] = pd.read_csv(path)   # floats were written by repr: read back exactly
    return tables


def figure_frames(study_dir: str | Path | None, evals: pd.DataFrame | None = None,
                  finals: pd.DataFrame | None = None, *, tables: dict[str, pd.DataFrame] | None = None) -> dict:
    """Every registered figure's input (see `plots.render_all`), from stored results or from figure data tables."""
    from lt_utils.stages.synthetic_thoughts import SWEEP_PREFIX

    if tables is None:
        tables = study_tables(study_dir, evals)
    evals = tables["evals"]
    frames: dict = {}
    if evals.empty:
        return frames
    finals = final_points(evals)
    curves = curve_points(evals)
    synth = curves[(curves["stage"] == SYNTHETIC_STAGE) & ~curves["arm"].str.startswith(SWEEP_PREFIX)]
    frames["accuracy_vs_tokens"] = synth
    frames["accuracy_vs_effective_raw_tokens"] = synth
    frames["accuracy_vs_tokens_by_family"] = by_family(synth)
    refs = {a: lvl for a in ("raw_repeat", "raw_fresh") if (lvl := reference_level(
        finals[finals["stage"] == SYNTHETIC_STAGE], a)) is not None}
    sweep = teacher_sweep(None, finals, SYNTHETIC_STAGE, quality=tables["teacher_quality"])
    if sweep["error_rate"].nunique() >= 2:
        frames["teacher_quality_sweep"] = (sweep, {"references": refs})
    em_finals = finals[finals["stage"] == EM_STAGE]
    em_refs = {a: lvl for a in ("raw_token_match", "raw_flop_match")
               if (lvl := reference_level(em_finals, a)) is not None}
    frames["em_accuracy_vs_iteration"] = (em_accuracy(finals, EM_STAGE), {"references": em_refs})
    frames["em_thought_quality_and_elbo"] = em_estep_and_elbo(None, EM_STAGE, estep=tables["estep_summaries"],
                                                              elbo=tables["em_elbo"])
    loop = tables["loop_diagnostics"]
    if len(loop) and loop[["rho", "lift", "gain"]].notna().any().any():
        frames["em_loop_gain"] = loop
    k_df = k_ablation(None, finals, EM_STAGE, quality=tables["k_quality"])
    if k_df["k"].nunique() >= 2:
        frames["em_k_ablation"] = k_df
    return frames
