"""Stage 04's input: every stored training run of a study as one tidy table.

Analysis reads only what stages wrote to disk (`run.json` + `metrics.jsonl`
of each training run); nothing here touches a model.  Runs are selected by
their stored metadata (stage, arm, seed), never by parsing directory names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .runs import read_json, read_jsonl


@dataclass(frozen=True)
class AnalysisConfig:
    study: str = "smoke"            # which study's runs to read
    run_root: str = "runs"          # where run directories live
    figures_dir: str = ""           # "" = <run dir>/figures; the default CPU study writes to figures/
    headline_arm: str = "latent_thoughts"   # compared against the baseline in the summary
    baseline_arm: str = "raw_repeat"
    overwrite: bool = False         # always recomputed from stored results; kept for symmetry


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
                         "run_dir": str(run.relative_to(study_dir)),
                         **{k: v for k, v in rec.items() if k not in ("kind", "time")}})
    df = pd.DataFrame(rows)
    if not df.empty:
        df = df.sort_values(["stage", "arm", "seed", "step"]).reset_index(drop=True)
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


def final_points(evals: pd.DataFrame) -> pd.DataFrame:
    """The last evaluation of every run (one row per arm × seed)."""
    if evals.empty:
        return evals
    idx = evals.groupby(["stage", "arm", "seed"])["step"].idxmax()
    return evals.loc[idx].reset_index(drop=True)


def summary_table(finals: pd.DataFrame) -> pd.DataFrame:
    """Per arm: n seeds, final accuracy mean ± SE (percent), unparseable rate and validation NLL."""
    from .stats import mean_se

    rows = []
    for (stage, arm), g in finals.groupby(["stage", "arm"], sort=False):
        acc, acc_se, n = mean_se(g["accuracy"] * 100)
        row = {"stage": stage, "arm": arm, "seeds": n, "tokens": int(g["tokens"].max()),
               "accuracy_%": round(acc, 1), "accuracy_se": round(acc_se, 1)}
        if "unparseable" in g:
            row["unparseable_%"] = round(float(g["unparseable"].mean() * 100), 1)
        if "val_nll" in g:
            nll, nll_se, _ = mean_se(g["val_nll"])
            row["val_nll"] = round(nll, 4)
            row["val_nll_se"] = round(nll_se, 4)
        rows.append(row)
    return pd.DataFrame(rows)


def headline(finals: pd.DataFrame, arm: str, baseline: str):
    """Welch comparison of final accuracy (percentage points) between two arms, or None if either is absent."""
    from .stats import welch_compare

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
    from .stats import welch_compare

    cols = ["accuracy"] + sorted(c for c in finals.columns if c.startswith("accuracy/"))
    rows = []
    for col in cols:
        a = finals.loc[finals["arm"] == arm, col].dropna() * 100
        b = finals.loc[finals["arm"] == baseline, col].dropna() * 100
        if a.empty or b.empty:
            continue
        c = welch_compare(a.to_numpy(), b.to_numpy(), label_a=arm, label_b=baseline)
        rows.append({"metric": "all families" if col == "accuracy" else col.split("/", 1)[1],
                     f"{arm}_%": round(c.mean_a, 1), f"{baseline}_%": round(c.mean_b, 1),
                     "diff_pts": round(c.diff, 1), "ci95_low": round(c.ci_low, 1), "ci95_high": round(c.ci_high, 1),
                     "welch_p": float(f"{c.p_value:.2g}") if c.p_value == c.p_value else None,
                     "n": f"{c.n_a} vs {c.n_b}"})
    return pd.DataFrame(rows)
