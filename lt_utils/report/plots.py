"""Figures of the study, one registered function per paper figure.

Each figure function takes a tidy DataFrame and returns a matplotlib
``Figure``; ``save_figure`` writes it as PDF (for the paper) and PNG (for
quick review). Figures are built on ``matplotlib.figure.Figure`` with the Agg
canvas rather than through pyplot, so they render headless and never change
the global backend of a notebook that imports this module.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import sys
import zlib
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, PercentFormatter

from lt_utils.runtime import faults

__all__ = [
    "ARM_STYLE",
    "FIGURES",
    "STYLE",
    "arm_style",
    "fig_accuracy_by_family",
    "fig_accuracy_vs_tokens",
    "fig_em_estep",
    "fig_em_iterations",
    "fig_em_k",
    "fig_em_loop_gain",
    "fig_loop_gain_map",
    "fig_fidelity_curve",
    "fig_loop_cobweb",
    "fig_teacher_quality",
    "register",
    "render_all",
    "save_figure",
    "style",
]

# --------------------------------------------------------------------------
# Shared look
# --------------------------------------------------------------------------

STYLE: dict[str, object] = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "figure.titlesize": 12,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "0.88",
    "grid.linewidth": 0.6,
    "axes.axisbelow": True,
    "lines.linewidth": 1.6,
    "lines.markersize": 5,
    "legend.frameon": False,
    "pdf.fonttype": 42,  # embed TrueType so the PDF text stays editable
    "ps.fonttype": 42,
    "savefig.dpi": 200,
}

# Fixed file metadata: no creation date, no library version.
FILE_METADATA: dict[str, dict] = {
    "pdf": {"CreationDate": None, "Creator": "lt_utils", "Producer": "matplotlib"},
    "png": {"Software": "lt_utils (matplotlib)"},
}

# Okabe–Ito palette (colour-blind safe); yellow darkened to read on white.
# Baselines are dashed so the proposed methods stand out even in greyscale.
ARM_STYLE: dict[str, dict] = {
    "raw_repeat": dict(color="#000000", marker="o", linestyle="--", label="Raw (repeat)"),
    "raw_fresh": dict(color="#8C8C8C", marker="s", linestyle="--", label="Raw (fresh)"),
    "raw_token_match": dict(color="#B8A000", marker="<", linestyle="--", label="Raw token-match"),
    "raw_flop_match": dict(color="#E69F00", marker=">", linestyle="--", label="Raw FLOP-match"),
    "wrap_orig": dict(color="#56B4E9", marker="^", linestyle="-", label="WRAP-Orig"),
    "wrap_cot": dict(color="#0072B2", marker="v", linestyle="-", label="WRAP-CoT"),
    "latent_thoughts": dict(color="#D55E00", marker="D", linestyle="-", label="Latent thoughts"),
    "bolt": dict(color="#CC79A7", marker="P", linestyle="-", label="BoLT"),
    "warmstart": dict(color="#009E73", marker="X", linestyle="-", label="Warmstart"),
}
# Paul Tol "muted" colours absent from ARM_STYLE, so unknown arms never
# masquerade as a known one.
_FALLBACK_COLORS = ["#332288", "#882255", "#999933", "#44AA99", "#AA4499"]
_FALLBACK_MARKERS = ["h", "*", "p", "8", "d", "H"]


def arm_style(arm: str) -> dict:
    """Colour/marker/linestyle/label for an arm, stable across figures and runs.

    Unknown arms get a fallback picked by a stable hash of the name (not
    Python's salted ``hash``), so the same arm keeps its colour everywhere.
    """
    if arm in ARM_STYLE:
        return dict(ARM_STYLE[arm])
    if arm.startswith("latent_err"):  # teacher-quality sweep: the latent colour, paler as the teacher errs more
        with contextlib.suppress(ValueError):
            rate = min(max(float(arm.removeprefix("latent_err")), 0.0), 1.0)
            rgb = np.array(matplotlib.colors.to_rgb(ARM_STYLE["latent_thoughts"]["color"]))
            return dict(color=matplotlib.colors.to_hex(rgb * (1 - 0.6 * rate) + 0.6 * rate), marker="d",
                        linestyle=":", label=f"Latent, teacher errs {rate:.0%}")
    h = zlib.crc32(arm.encode("utf-8"))
    return dict(
        color=_FALLBACK_COLORS[h % len(_FALLBACK_COLORS)],
        marker=_FALLBACK_MARKERS[h % len(_FALLBACK_MARKERS)],
        linestyle="-.",
        label=arm,
    )


@contextlib.contextmanager
def style() -> Iterator[None]:
    """Apply the study's rcParams for the duration of a figure build/save."""
    with matplotlib.rc_context(STYLE):
        yield


def _new_figure(figsize: tuple[float, float]) -> Figure:
    """A pyplot-free figure: headless, and garbage-collected with its owner."""
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


# --------------------------------------------------------------------------
# Saving and registry
# --------------------------------------------------------------------------


def save_figure(fig: Figure, name: str, out_dir: str | os.PathLike) -> list[Path]:
    """Write ``<out_dir>/<name>.pdf`` and ``.png``; return their paths.

    Each file is written to a temp file in the same directory and moved into
    place, so a crash never leaves a truncated figure that looks current.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    try:
        with style():
            for ext in ("pdf", "png"):
                target = out / f"{name}.{ext}"
                # a unique name created by savefig itself, so the file gets the
                # usual umask permissions (mkstemp would make it private)
                tmp = out / f".{name}.{os.getpid()}.{secrets.token_hex(4)}.{ext}.tmp"
                try:
                    fig.savefig(
                        tmp, format=ext, dpi=200, bbox_inches="tight", pad_inches=0.05,
                        # no timestamp or version, so the same data always gives the same bytes
                        metadata=FILE_METADATA[ext],
                    )
                    os.replace(tmp, target)
                    faults.hit("analysis")
                except BaseException:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp)
                    raise
                paths.append(target)
    finally:
        if "matplotlib.pyplot" in sys.modules:  # figure may come from pyplot
            sys.modules["matplotlib.pyplot"].close(fig)
    return paths


FigureFn = Callable[[pd.DataFrame], Figure]
FIGURES: dict[str, FigureFn] = {}


def register(name: str) -> Callable[[FigureFn], FigureFn]:
    """Add a figure function to ``FIGURES`` under the file name it saves to."""

    def decorator(fn: FigureFn) -> FigureFn:
        if name in FIGURES and FIGURES[name] is not fn:
            raise ValueError(f"figure {name!r} registered twice")
        FIGURES[name] = fn
        return fn

    return decorator


def render_all(
    frames: Mapping[str, pd.DataFrame],
    out_dir: str | os.PathLike,
    names: Sequence[str] | None = None,
) -> dict[str, list[Path]]:
    """Render and save every registered figure that has data.

    A frame may be given as ``(frame, kwargs)`` for figures that take extra
    keyword arguments (e.g. baseline reference levels).

    Figures whose frame is missing or empty are skipped (a run still in
    progress should not break the report); unknown names raise, because a
    typo silently dropping a figure is worse.
    """
    wanted = list(frames) if names is None else list(names)
    unknown = [n for n in wanted if n not in FIGURES]
    if unknown:
        raise KeyError(f"unknown figures {unknown}; registered: {sorted(FIGURES)}")
    produced: dict[str, list[Path]] = {}
    for name in wanted:
        value = frames.get(name)
        frame, kwargs = value if isinstance(value, tuple) else (value, {})
        if frame is None or len(frame) == 0:
            continue
        produced[name] = save_figure(FIGURES[name](frame, **kwargs), name, out_dir)
    return produced


# --------------------------------------------------------------------------
# Helpers shared by the accuracy figures
# --------------------------------------------------------------------------


def _require(df: pd.DataFrame, columns: Sequence[str], figure: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{figure}: missing columns {missing}")
    if len(df) == 0:
        raise ValueError(f"{figure}: no rows to plot")


def _arm_order(arms: Sequence[str]) -> list[str]:
    """Known arms in the canonical legend order, then unknown ones as found."""
    present = list(dict.fromkeys(arms))
    known = [a for a in ARM_STYLE if a in present]
    return known + [a for a in present if a not in ARM_STYLE]


def _seed_curves(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Mean, SE and n across seeds at each (keys..., tokens) point.

    Rows are first averaged within a seed, so extra rows per seed (e.g. one
    per task family) are not mistaken for independent seeds.
    """
    per_seed = (
        df.groupby(keys + ["tokens", "seed"], sort=False)["accuracy"].mean().reset_index()
    )
    grouped = per_seed.groupby(keys + ["tokens"], sort=False)["accuracy"]
    curves = grouped.agg(mean="mean", sd="std", n="count").reset_index()
    curves["se"] = np.where(curves["n"] >= 2, curves["sd"] / np.sqrt(curves["n"]), np.nan)
    return curves.sort_values(keys + ["tokens"])


def _seeds_range(n: pd.Series) -> str:
    """Seeds behind the points of one curve: "3+" as before where every point has as many, "1–3" where they differ."""
    lo, hi = int(n.min()), int(n.max())
    return f"{lo}+" if lo == hi else f"{lo}–{hi}"


def _seed_label(arm: str, n_seeds: int) -> str:
    return f"{arm_style(arm)['label']} (n={n_seeds} seed{'s' if n_seeds != 1 else ''})"


def _draw_arm(ax, curve: pd.DataFrame, arm: str, label: str | None) -> None:
    """Mean line with markers plus a ±1 SE band where at least 2 seeds exist."""
    st = arm_style(arm)
    x = curve["tokens"].to_numpy(dtype=float)
    y = curve["mean"].to_numpy(dtype=float)
    se = curve["se"].to_numpy(dtype=float)
    ax.plot(
        x, y, color=st["color"], marker=st["marker"], linestyle=st["linestyle"],
        label=label, clip_on=False, zorder=3,
    )
    has_band = ~np.isnan(se)
    if has_band.any():
        ax.fill_between(
            x, np.clip(y - se, 0, 1), np.clip(y + se, 0, 1),
            where=has_band, color=st["color"], alpha=0.18, linewidth=0, zorder=2,
        )


def _format_accuracy_axes(ax, ylabel: bool = True, xlabel: str = "Training tokens") -> None:
    ax.set_xlabel(xlabel)
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.set_xlim(left=0)
    if ylabel:
        ax.set_ylabel("Held-out accuracy")
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
    ax.set_ylim(0, 1)


# --------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------


@register("accuracy_vs_tokens")
def fig_accuracy_vs_tokens(df: pd.DataFrame, *, xlabel: str = "Training tokens",
                           title: str = "Accuracy vs training tokens") -> Figure:
    """Held-out accuracy against training tokens, one line per arm.

    The core data-efficiency plot: does training on inferred latent thoughts
    reach a given accuracy with fewer raw tokens than the baselines? Extra
    columns (e.g. ``family``) are averaged over within each seed.
    """
    _require(df, ["arm", "seed", "tokens", "accuracy"], "accuracy_vs_tokens")
    curves = _seed_curves(df, ["arm"])
    seeds_per_arm = df.groupby("arm")["seed"].nunique()
    with style():
        fig = _new_figure((7.0, 4.0))
        ax = fig.add_subplot()
        for arm in _arm_order(df["arm"]):
            _draw_arm(ax, curves[curves["arm"] == arm], arm,
                      _seed_label(arm, int(seeds_per_arm[arm])))
        _format_accuracy_axes(ax, xlabel=xlabel)
        ax.set_title(title)
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    return fig


@register("accuracy_vs_effective_raw_tokens")
def fig_accuracy_vs_effective_raw_tokens(df: pd.DataFrame) -> Figure:
    """The same curves against effective raw tokens seen, tokens / (synthetic-to-raw ratio) as in the paper.

    Needs an ``effective_raw_tokens`` column (see ``results.collect_evals``).
    """
    _require(df, ["arm", "seed", "effective_raw_tokens", "accuracy"], "accuracy_vs_effective_raw_tokens")
    return fig_accuracy_vs_tokens(df.drop(columns=["tokens"], errors="ignore")
                                  .rename(columns={"effective_raw_tokens": "tokens"}),
                                  xlabel="Effective raw tokens seen", title="Accuracy vs effective raw tokens")


TASK_NAMES = {"math": "MATH (4-shot)", "gsm8k": "GSM8K (8-shot)"}   # benchmark tasks of a text-corpus study


@register("accuracy_vs_tokens_by_family")
def fig_accuracy_by_family(df: pd.DataFrame) -> Figure:
    """Accuracy vs tokens, one small-multiple panel per task family.

    Shows whether a gain is broad or driven by one family; the y-axis is
    shared so panels compare directly.
    """
    _require(df, ["arm", "seed", "tokens", "family", "accuracy"],
             "accuracy_vs_tokens_by_family")
    families = sorted(df["family"].unique(), key=str)
    curves = _seed_curves(df, ["family", "arm"])
    seeds_per_arm = df.groupby("arm")["seed"].nunique()
    arms = _arm_order(df["arm"])
    # at most 3 columns, rows as evenly filled as possible (4 -> 2x2, not 3+1)
    n_rows = math.ceil(len(families) / 3)
    n_cols = math.ceil(len(families) / n_rows)
    with style():
        # legend goes underneath, so the title stays centred over the panels
        legend_cols = 3 if n_cols >= 2 else 2
        legend_rows = math.ceil(len(arms) / legend_cols)
        fig = _new_figure((max(3.2 * n_cols + 0.6, 6.0),
                           2.8 * n_rows + 0.6 + 0.22 * legend_rows))
        axes = fig.subplots(n_rows, n_cols, sharex=True, sharey=True, squeeze=False).ravel()
        for i, (ax, family) in enumerate(zip(axes, families)):
            for arm in arms:
                curve = curves[(curves["family"] == family) & (curves["arm"] == arm)]
                if len(curve):
                    _draw_arm(ax, curve, arm, None)
            _format_accuracy_axes(ax, ylabel=(i % n_cols == 0))
            ax.set_title(TASK_NAMES.get(str(family), str(family)))
            # only the lowest panel of each column names the x-axis
            lowest_in_column = i + n_cols >= len(families)
            ax.xaxis.set_tick_params(labelbottom=lowest_in_column)
            if not lowest_in_column:
                ax.set_xlabel("")
        for ax in axes[len(families):]:
            ax.set_visible(False)
        # one legend for all panels; proxy lines so every arm appears even if
        # it is missing from some family
        handles = [
            axes[0].plot([], [], color=arm_style(a)["color"], marker=arm_style(a)["marker"],
                         linestyle=arm_style(a)["linestyle"],
                         label=_seed_label(a, int(seeds_per_arm[a])))[0]
            for a in arms
        ]
        fig.legend(handles=handles, loc="outside lower center", ncols=legend_cols)
        fig.suptitle("Accuracy vs training tokens, by task family")
    return fig


# --------------------------------------------------------------------------
# Teacher-quality sweep and bootstrapped EM
# --------------------------------------------------------------------------


def _mean_se_by(df: pd.DataFrame, key: str, value: str = "accuracy") -> pd.DataFrame:
    g = df.groupby(key, sort=True)[value]
    out = g.agg(mean="mean", sd="std", n="count").reset_index()
    out["se"] = np.where(out["n"] >= 2, out["sd"] / np.sqrt(out["n"]), 0.0)
    return out


def _draw_points(ax, x, pts: pd.DataFrame, st: dict, label: str | None = None, linestyle: str = "-") -> None:
    """Mean ± SE markers joined by a line (from `_mean_se_by`)."""
    ax.errorbar(np.asarray(x, dtype=float), pts["mean"].to_numpy(float), yerr=pts["se"].to_numpy(float),
                color=st["color"], marker=st["marker"], linestyle=linestyle, capsize=3, label=label, zorder=3)


def _reference_band(ax, level, arm: str, label: str | None = None) -> None:
    """A baseline's final accuracy as a horizontal line with a ±1 SE band."""
    if level is None:
        return
    mean, se = level
    st = arm_style(arm)
    ax.axhline(mean, color=st["color"], linestyle=st["linestyle"], linewidth=1.3, label=label or st["label"],
               zorder=1)
    if se == se and se > 0:
        ax.axhspan(mean - se, mean + se, color=st["color"], alpha=0.12, linewidth=0, zorder=0)


@register("teacher_quality_sweep")
def fig_teacher_quality(df: pd.DataFrame, *, references: Mapping[str, tuple[float, float]] | None = None) -> Figure:
    """Final accuracy of latent-thought training against the verified quality of the teacher's thoughts.

    One point per teacher setting (mean ± SE over seeds, labelled with the
    teacher's error rate); raw baselines as horizontal bands.  Beyond the
    paper: how good must a teacher be for its thoughts to help?
    """
    _require(df, ["error_rate", "thought_quality", "seed", "accuracy"], "teacher_quality_sweep")
    pts = _mean_se_by(df, "error_rate")
    qual = df.groupby("error_rate")["thought_quality"].first()
    st = arm_style("latent_thoughts")
    with style():
        fig = _new_figure((5.6, 3.8))
        ax = fig.add_subplot()
        for arm, level in (references or {}).items():
            _reference_band(ax, level, arm)
        x = qual.loc[pts["error_rate"]].to_numpy(dtype=float)
        _draw_points(ax, x, pts, st, f"Latent thoughts (n={_seeds_range(pts['n'])} seeds)")
        ax.scatter(qual.loc[df["error_rate"]].to_numpy(dtype=float), df["accuracy"], s=10, color=st["color"],
                   alpha=0.35, zorder=2, label="single seeds")
        for xi, yi, err in zip(x, pts["mean"], pts["error_rate"]):
            ax.annotate(f"error rate {err:g}", (xi, yi), textcoords="offset points", xytext=(6, -12), fontsize=8,
                        color="0.3")
        ax.set_xlabel("Teacher thoughts that verify (fraction of problems)")
        ax.xaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
        ax.set_ylabel("Held-out accuracy")
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
        ax.set_ylim(0, 1)
        ax.set_title("How good must the teacher be?")
        ax.legend(loc="upper left")
    return fig


@register("em_accuracy_vs_iteration")
def fig_em_iterations(df: pd.DataFrame, *, references: Mapping[str, tuple[float, float]] | None = None) -> Figure:
    """Held-out accuracy of each EM iteration's M-step (iteration 0 = warmstart), with the raw baselines.

    The paper's bootstrapping figure: does the model improve by training on
    its own inferred thoughts, and does it beat raw data matched on raw tokens
    and on training FLOPs?
    """
    _require(df, ["iteration", "seed", "accuracy"], "em_accuracy_vs_iteration")
    pts = _mean_se_by(df, "iteration")
    st = arm_style("bolt")
    with style():
        fig = _new_figure((5.6, 3.8))
        ax = fig.add_subplot()
        for arm, level in (references or {}).items():
            _reference_band(ax, level, arm)
        _draw_points(ax, pts["iteration"], pts, st, f"BoLT (n={_seeds_range(pts['n'])} seeds)")
        per_seed = df.sort_values("iteration")
        ax.scatter(per_seed["iteration"], per_seed["accuracy"], s=10, color=st["color"], alpha=0.35, zorder=2,
                   label="single seeds")
        ax.set_xticks(pts["iteration"], ["warm-\nstart" if i == 0 else str(int(i)) for i in pts["iteration"]])
        ax.set_xlabel("EM iteration")
        ax.set_ylabel("Held-out accuracy")
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
        ax.set_ylim(0, 1)
        ax.set_title("Bootstrapping latent thoughts")
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    return fig


@register("em_thought_quality_and_elbo")
def fig_em_estep(df: pd.DataFrame) -> Figure:
    """Two panels across iterations: verified quality of the E-step's thoughts, and the validation ELBO.

    `df` has one row per iteration with ``selected_correct``, ``first_correct``
    and ``any_correct`` (E-step of that iteration, NaN for the warmstart) and
    ``elbo`` (validation ELBO per raw token of that iteration's generator,
    over chunks with a finite bound) with ``elbo_failures``.
    """
    _require(df, ["iteration"], "em_thought_quality_and_elbo")
    with style():
        fig = _new_figure((9.0, 3.6))
        ax_q, ax_e = fig.subplots(1, 2)
        q = df.dropna(subset=["selected_correct"]) if "selected_correct" in df else df.iloc[0:0]
        for col, label, ls, mk in (("selected_correct", "selected (importance resampling)", "-", "P"),
                                   ("first_correct", "one sample (K = 1)", "--", "o"),
                                   ("any_correct", "best of K (oracle pick)", ":", "^")):
            if col in q and len(q):
                ax_q.plot(q["iteration"], q[col], marker=mk, linestyle=ls, color=arm_style("bolt")["color"]
                          if col == "selected_correct" else "0.45", label=label)
        ax_q.set_xlabel("E-step of iteration")
        ax_q.set_ylabel("Thoughts that verify")
        ax_q.set_title("Quality of inferred thoughts")
        diag = df.dropna(subset=["mean_ess"]) if "mean_ess" in df and not len(q) else df.iloc[0:0]
        if len(diag):   # a text corpus has no verifier: show how the importance weights behaved instead
            ax_q.plot(diag["iteration"], 1 - diag["frac_unterminated"], marker="P", color=arm_style("bolt")["color"],
                      label="candidates that finished their thought")
            ax_q.plot(diag["iteration"], diag["mean_ess"] / diag["k"], marker="o", linestyle="--", color="0.45",
                      label="effective sample size / K")
            ax_q.set_ylabel("Fraction")
            ax_q.set_title("E-step diagnostics (no verifier)")
            ax_q.set_xticks(diag["iteration"])
        ax_q.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
        ax_q.set_ylim(0, 1)
        if len(q) or len(diag):
            ax_q.legend(loc="best")
        if len(q):
            ax_q.set_xticks(q["iteration"])
        e = df.dropna(subset=["elbo"]) if "elbo" in df else df.iloc[0:0]
        if len(e) and not np.isfinite(e["elbo"].astype(float)).any():
            ax_e.text(0.5, 0.5, "no finite bound: no sampled\nthought finished on any chunk", ha="center",
                      va="center", transform=ax_e.transAxes, color="0.35")
        if len(e):
            ax_e.plot(e["iteration"], e["elbo"], marker="P", color=arm_style("bolt")["color"])
            for it, val, fails in zip(e["iteration"], e["elbo"], e.get("elbo_failures", [0] * len(e))):
                if fails:
                    ax_e.annotate(f"{int(fails)} chunk(s) without\na finished thought", (it, val),
                                  textcoords="offset points", xytext=(4, 6), fontsize=7, color="0.35")
            ax_e.set_xticks(e["iteration"], ["warm-\nstart" if i == 0 else str(int(i)) for i in e["iteration"]])
        ax_e.set_xlabel("Generator after iteration")
        ax_e.set_ylabel("ELBO per raw token (nats)")
        ax_e.set_title("Validation ELBO")
    return fig


@register("em_k_ablation")
def fig_em_k(df: pd.DataFrame) -> Figure:
    """Iteration-1 accuracy and thought quality against the number of Monte Carlo samples K (log scale)."""
    _require(df, ["k", "seed", "accuracy", "thought_quality"], "em_k_ablation")
    pts = _mean_se_by(df, "k")
    qual = df.groupby("k")["thought_quality"].first()
    st = arm_style("bolt")
    with style():
        fig = _new_figure((9.0, 3.6))
        ax_a, ax_q = fig.subplots(1, 2)
        _draw_points(ax_a, pts["k"], pts, st)
        ax_a.scatter(df["k"], df["accuracy"], s=10, color=st["color"], alpha=0.35)
        ax_a.set_ylabel("Held-out accuracy after iteration 1")
        ax_a.set_title(f"Accuracy (n={_seeds_range(pts['n'])} seeds)")
        ax_q.plot(qual.index, qual.to_numpy(), color=st["color"], marker=st["marker"])
        if not qual.notna().any():
            ax_q.text(0.5, 0.5, "no verifier for this corpus", ha="center", va="center", transform=ax_q.transAxes,
                      color="0.35")
        ax_q.set_ylabel("Selected thoughts that verify")
        ax_q.set_title("Quality of the selected thoughts")
        for ax in (ax_a, ax_q):
            ax.set_xscale("log", base=2)
            ax.set_xticks(pts["k"], [str(int(k)) for k in pts["k"]])
            ax.minorticks_off()
            ax.set_xlabel("Samples per chunk in the E-step (K)")
            ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
            ax.set_ylim(0, 1)
        fig.suptitle("More inference compute in the E-step")
    return fig


@register("em_loop_gain")
def fig_em_loop_gain(df: pd.DataFrame) -> Figure:
    """Retention ρ, lift λ (and its best-of-K ceiling) and loop gain G = ρλ per E-step, on a log axis around 1.

    `df` is `results.loop_diagnostics`: one row per E-step with ``rho``,
    ``lift``, ``lift_best_of_k`` and ``gain`` (missing where a denominator is 0).
    """
    _require(df, ["iteration", "rho", "lift", "gain"], "em_loop_gain")
    color = arm_style("bolt")["color"]
    with style():
        fig = _new_figure((5.4, 3.6))
        ax = fig.subplots()
        ax.axhline(1.0, color="0.5", linewidth=0.8, linestyle=":")
        drawn = False
        for col, label, ls, mk, c in (("gain", "loop gain G = ρλ", "-", "P", color),
                                      ("rho", "retention ρ (one sample ÷ trained on)", "--", "o", "0.3"),
                                      ("lift", "lift λ (selected ÷ one sample)", "-.", "^", "0.45"),
                                      ("lift_best_of_k", "best-of-K ceiling of λ", ":", "v", "0.6")):
            if col not in df:
                continue
            d = df[["iteration", col]].apply(pd.to_numeric, errors="coerce").dropna()
            d = d[d[col] > 0]   # a log axis: zeros (nothing verifies) are left out
            if len(d):
                ax.plot(d["iteration"], d[col], marker=mk, linestyle=ls, color=c, label=label)
                drawn = True
        if drawn:
            ax.set_yscale("log")
            ax.legend(loc="best")
        else:
            ax.text(0.5, 0.5, "nothing to draw: no ratio above 0\n(no thought verifies)", ha="center", va="center",
                    transform=ax.transAxes, color="0.35")
        ax.set_xticks(sorted(df["iteration"].dropna().astype(int).unique()))
        ax.set_xlabel("E-step of iteration")
        ax.set_ylabel("Ratio of verified fractions")
        ax.set_title("Does the loop improve itself? (G ≥ 1)")
    return fig


@register("loop_gain_map")
def fig_loop_gain_map(df: pd.DataFrame) -> Figure:
    """Heatmaps of the loop gain G and the retention ρ over the map's two axes, one row of panels per variant.

    `df` is `loop_map.build_table`: one row per cell with ``variant``,
    ``row_param``/``row_value``, ``col_param``/``col_value``, ``gain`` and
    ``rho``.  Colours diverge at 1 (blue above, red below), every cell carries
    its value, and cells at or above 1 are framed: G = 1 is where iterations
    stop losing quality.
    """
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.patches import Rectangle

    _require(df, ["variant", "row_param", "row_value", "col_param", "col_value", "gain", "rho"], "loop_gain_map")
    variants = list(dict.fromkeys(df["variant"]))
    metrics = (("gain", "loop gain G = ρλ"), ("rho", "retention ρ"))
    values = pd.to_numeric(pd.concat([df["gain"], df["rho"]]), errors="coerce").dropna()
    hi = max(1.5, float(values.max()) if len(values) else 1.5)
    lo = min(0.5, float(values.min()) if len(values) else 0.5)
    norm = TwoSlopeNorm(vcenter=1.0, vmin=min(lo, 0.99), vmax=hi)
    cmap = matplotlib.colormaps["RdBu"].with_extremes(bad="0.85")
    with style():
        fig = _new_figure((4.2 * len(metrics) + 0.8, 3.0 * len(variants) + 0.4))
        axes = np.atleast_2d(fig.subplots(len(variants), len(metrics), squeeze=False))
        image = None
        for i, variant in enumerate(variants):
            d = df[df["variant"] == variant]
            rows, cols = sorted(d["row_value"].unique()), sorted(d["col_value"].unique())
            for j, (col, label) in enumerate(metrics):
                ax = axes[i, j]
                grid = (d.pivot_table(index="row_value", columns="col_value", values=col, aggfunc="mean", dropna=False)
                        .reindex(index=rows, columns=cols).apply(pd.to_numeric, errors="coerce").to_numpy(float))
                image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, norm=norm, origin="lower", aspect="auto")
                for (r, c), v in np.ndenumerate(grid):
                    if np.isnan(v):
                        ax.text(c, r, "n/a", ha="center", va="center", fontsize=8, color="0.3")
                        continue
                    ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=9,
                            fontweight="bold" if v >= 1 else "normal",
                            color="white" if abs(norm(v) - 0.5) > 0.3 else "black")
                    if v >= 1:
                        ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1.6))
                ax.set_xticks(range(len(cols)), [f"{v:g}" if isinstance(v, (int, float)) else str(v) for v in cols])
                ax.set_yticks(range(len(rows)), [f"{v:g}" if isinstance(v, (int, float)) else str(v) for v in rows])
                ax.grid(False)
                ax.set_xlabel(str(d["col_param"].iloc[0]))
                ax.set_ylabel(str(d["row_param"].iloc[0]))
                ax.set_title(f"{label}\n{variant}" if len(variants) > 1 else label)
        bar = fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8)
        bar.ax.axhline(1.0, color="black", linewidth=1.2)
        bar.set_label("ratio (1 = the loop holds its quality)")
        fig.suptitle("Where does the EM loop improve itself? (framed: ≥ 1)")
        if df[["gain", "rho"]].apply(pd.to_numeric, errors="coerce").isna().any().any():
            fig.supxlabel("n/a: undefined, no thought verified in the denominator", fontsize=8, color="0.35")
    return fig


_WIDTH_COLORS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7"]


@register("fidelity_curve")
def fig_fidelity_curve(df: pd.DataFrame) -> Figure:
    """Fidelity f = mean q(z* | x) against oracle-thought training tokens, one colour per model shape (width, and
    depth where the table has deeper models).

    `df` is `fidelity_curve.build_table`.  Left: f on the bootstrap corpus
    (solid) and on dev problems (dashed), with f = 0.9 marked.  Middle: what
    sampling sees, greedy posterior correctness on the corpus (solid) and one
    T = 1 sample per dev problem (dotted), beside dev answer accuracy (dashed).
    Right: per family, each problem's probability of its own steps.
    """
    _require(df, ["width", "tokens", "f", "f_dev"], "fidelity_curve")
    df = df.assign(layers=pd.to_numeric(df["layers"], errors="coerce") if "layers" in df else np.nan)
    shapes = sorted({(int(r.width), None if pd.isna(r.layers) else int(r.layers)) for r in df.itertuples()},
                    key=lambda s: (s[1] or 0, s[0]))
    fewest = min((lay for _, lay in shapes if lay is not None), default=None)
    panels = (
        ("Fidelity f = mean q(z* | x)", (("f", "-", "o", "corpus"), ("f_dev", "--", "s", "dev problems"))),
        ("Posterior thoughts that verify", (("greedy_correct", "-", "o", "greedy, corpus"),
                                           ("sampled_dev_correct", ":", "^", "one T = 1 sample, dev"),
                                           ("dev_accuracy", "--", "s", "dev answer accuracy"))),
        ("Per family: q of a problem's own steps", (("p_addition", "-", "o", "addition"),
                                                    ("p_linear", "--", "s", "linear"), ("p_word", ":", "^", "word"))),
    )
    with style():
        fig = _new_figure((13.0, 3.8))
        axes = fig.subplots(1, 3)
        for ax, (title, series) in zip(axes, panels):
            for i, (w, lay) in enumerate(shapes):
                d = df[(df["width"] == w) & (df["layers"].isna() if lay is None else df["layers"] == lay)]
                d = d.sort_values("tokens")
                name = f"d = {w}" + (f", {lay} layers" if lay is not None and lay != fewest else "")
                for col, ls, mk, label in series:
                    if col not in d:
                        continue
                    v = d[["tokens", col]].apply(pd.to_numeric, errors="coerce").dropna()
                    if len(v):
                        ax.plot(v["tokens"] / 1e6, v[col], linestyle=ls, marker=mk, color=_WIDTH_COLORS[i % 4],
                                label=f"{name}, {label}")
            ax.set_xscale("log")
            ticks = sorted(pd.to_numeric(df["tokens"], errors="coerce").dropna().unique() / 1e6)
            ax.set_xticks(ticks, [f"{t:.1f}" for t in ticks])
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            ax.set_ylim(0, 1)
            ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
            ax.set_xlabel("Oracle-thought training tokens (millions)")
            ax.set_title(title)
            ax.legend(loc="upper left", fontsize=7)
        axes[0].axhline(0.9, color="0.5", linewidth=0.8, linestyle=":")
        fig.suptitle("How sharp is the generator's posterior on the right thought? (warmstarts from the base model)")
    return fig


@register("loop_cobweb")
def fig_loop_cobweb(df: pd.DataFrame) -> Figure:
    """The loop as an iterated map c_{t+1} = E(M(c_t)), against the identity line (`lt_utils.cobweb`).

    `df` is `cobweb_map.build_table`: rows of kind ``E`` (x = one sample's
    correctness s, y = selected correctness), ``M`` (x = correctness of the
    thoughts an M-step trained on, y = its generator's s) and ``loop`` (x =
    iteration, y = selected correctness of that iteration's E-step, per
    loop).  Left: the composite of the two fitted maps (solid where both rest
    on measurements, dotted elsewhere), its fixed points (filled: stable), each
    measured loop as a staircase (solid) and its prediction from maps fitted
    without its own points (dashed).  Right: the measured points and the
    fitted maps.
    """
    from lt_utils.cobweb import composite, domain, fit_maps, fixed_points, loop_predictions, staircase

    _require(df, ["kind", "source", "x", "y"], "loop_cobweb")
    df = df.assign(x=pd.to_numeric(df["x"], errors="coerce"), y=pd.to_numeric(df["y"], errors="coerce")).dropna(
        subset=["x", "y"])
    e, m = fit_maps(df["kind"], df["x"], df["y"])
    grid = np.linspace(0, 1, 401)
    with style():
        fig = _new_figure((10.0, 4.6))
        ax, side = fig.subplots(1, 2)
        ax.plot([0, 1], [0, 1], color="0.55", linewidth=0.9, linestyle="--", label="identity (G = 1)")
        if e is not None and m is not None:
            lo, hi = domain(e, m)
            ax.plot(grid, composite(e, m, grid), color="0.35", linewidth=1.0, linestyle=":")
            inside = grid[(grid >= lo) & (grid <= hi)]
            ax.plot(inside, composite(e, m, inside), color="black", linewidth=1.8, label="E(M(c)), fitted maps")
            for fp in fixed_points(e, m, lo, hi) if hi > lo else []:
                ax.plot([fp.c], [fp.c], marker="o", markersize=9, color="black",
                        markerfacecolor="black" if fp.stable else "white", zorder=5, linestyle="none",
                        label=f"fixed point c* = {fp.c:.2f} ({'stable' if fp.stable else 'unstable'})")
        preds = loop_predictions(df["kind"], df["source"], df["x"], df["y"])
        for i, (src, p) in enumerate(preds.items()):
            color = _WIDTH_COLORS[i % 4]
            if len(p["measured"]) >= 2:
                xs, ys = staircase(p["measured"])
                ax.plot(xs, ys, color=color, linewidth=1.4, marker=".", label=f"measured: {src}")
            if p["predicted"] is not None and len(p["predicted"]) >= 2:
                xs, ys = staircase(p["predicted"])
                ax.plot(xs, ys, color=color, linewidth=1.0, linestyle="--", label="predicted without its points")
        for a, title, xl, yl in ((ax, "The loop's cobweb", "c_t: correctness of the thoughts trained on",
                                  "c_t+1: correctness of the next selected thoughts"),
                                 (side, "The two maps: measured and fitted", "input of the map",
                                  "output of the map")):
            a.set_xlim(0, 1)
            a.set_ylim(0, 1)
            a.set_aspect("equal")
            a.set_xlabel(xl)
            a.set_ylabel(yl)
            a.set_title(title)
            a.xaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
            a.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
        side.plot([0, 1], [0, 1], color="0.55", linewidth=0.9, linestyle="--")
        for kind, mk, color, fitted, label in (
                ("E", "o", "#CC79A7", e, "E-step: selected c vs one sample's s"),
                ("M", "s", "#009E73", m, "M-step: new s vs trained-on c")):
            d = df[df["kind"] == kind]
            if len(d):
                side.scatter(d["x"], d["y"], marker=mk, color=color, label=label, zorder=3)
            if fitted is not None:
                name = (f"fit 1 − (1 − s)^{fitted.gamma:.2f}" if kind == "E"
                        else f"fit {fitted.a:+.2f} + {fitted.b:.2f} c")
                side.plot(grid, fitted(grid), color=color, linewidth=1.2, label=name)
        ax.legend(loc="upper left", fontsize=6.5)
        side.legend(loc="upper left", fontsize=6.5)
    return fig


_RULE_STYLE = {   # rule of `sweeps.selection` -> (label, color, linestyle, marker)
    "best_of_k": ("best of K (a perfect verifier: the ceiling)", "0.45", ":", None),
    "resample": ("BoLT: resample ∝ w (the paper's E-step)", "#0072B2", "-", "o"),
    "argmax": ("argmax log w (verifier-free)", "#D55E00", "--", "s"),
    "memory": ("+ previous selected thought, resample", "#009E73", "-", "^"),
    "memory_argmax": ("+ previous selected thought, argmax", "#009E73", "--", "v"),
    "sample": ("one sample", "0.25", "-.", None),
}


@register("selection_ablation")
def fig_selection_ablation(df: pd.DataFrame) -> Figure:
    """Selected-thought correctness against K, one panel per E-step (and run), one line per selection rule.

    `df` is `sweeps.selection.build_table`: columns source, estep, generator, k, rule, correct, n_chunks.  The
    distance from `one sample` to a rule is its lift λ; from a rule to `best of K` what its choice leaves.
    """
    _require(df, ["source", "estep", "generator", "k", "rule", "correct", "n_chunks"], "selection_ablation")
    sources = sorted(df["source"].unique(), key=lambda src: df.loc[df["source"] == src, "correct"].mean())
    esteps = sorted(df["estep"].unique())
    with style():
        fig = _new_figure((3.1 * len(esteps) + 0.6, 2.7 * len(sources) + 0.9))
        axes = np.asarray(fig.subplots(len(sources), len(esteps), sharex=True, sharey=True, squeeze=False))
        for row, source in enumerate(sources):
            for col, estep in enumerate(esteps):
                ax = axes[row, col]
                d = df[(df["source"] == source) & (df["estep"] == estep)]
                if not len(d):
                    ax.set_visible(False)
                    continue
                for rule, (label, color, ls, mk) in _RULE_STYLE.items():
                    r = d[d["rule"] == rule].sort_values("k")
                    if len(r):
                        ax.plot(r["k"], r["correct"], color=color, linestyle=ls, marker=mk, markersize=3.5,
                                label=label)
                ks = sorted(d["k"].unique())
                ax.set_xscale("log", base=2)
                ax.set_xticks(ks, [str(int(k)) for k in ks])
                ax.minorticks_off()
                ax.set_ylim(0, 1)
                ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
                ax.set_title(f"{source}: E-step {int(estep)} (generator {d['generator'].iloc[0]})", fontsize=8)
                if row == len(sources) - 1:
                    ax.set_xlabel("Samples per chunk (K)")
                if col == 0:
                    ax.set_ylabel("Chosen thoughts that verify")
        n = int(df["n_chunks"].max())
        handles, labels = axes[0, -1].get_legend_handles_labels()
        for ax in axes.flat:
            if ax.get_visible() and len(ax.get_legend_handles_labels()[0]) > len(handles):
                handles, labels = ax.get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=7, frameon=False)
        fig.suptitle(f"How the E-step chooses among K samples ({n:,} chunks per E-step): BoLT's resampling beside "
                     "verifier-free rules")
    return fig


@register("mstep_transfer")
def fig_mstep_transfer(df: pd.DataFrame) -> Figure:
    """The M-step's retention ρ, its retention / repair split and the model's held-out accuracy against the M-step
    budget, one line per bootstrap-corpus size; where the table has controlled-correctness corpora, a fourth panel:
    one sample's correctness against the correctness of the thoughts trained on, the M-step map itself
    (`sweeps.mstep_transfer.build_table`)."""
    _require(df, ["multiple", "steps", "seed", "rho", "retention", "repair", "test_accuracy"], "mstep_transfer")
    kind = df["corpus"] if "corpus" in df else pd.Series("selected", index=df.index)
    sel, ctl = df[kind == "selected"], df[kind == "controlled"]
    with style():
        fig = _new_figure((14.5 if len(ctl) else 11.0, 3.8))
        axes = fig.subplots(1, 4 if len(ctl) else 3)
        ax_r, ax_s, ax_a = axes[:3]
        for i, (m, d) in enumerate(sorted(sel.groupby("multiple"), key=lambda kv: kv[0])):
            color = _WIDTH_COLORS[i % 4]
            mean = d.groupby("steps")[["rho", "retention", "repair", "test_accuracy"]].mean().sort_index()
            label = f"corpus {int(m)}× ({int(d['docs'].max()):,} docs)" if "docs" in d else f"corpus {int(m)}×"
            ax_r.plot(mean.index, mean["rho"], color=color, marker="o", label=label)
            ax_r.scatter(d["steps"], d["rho"], color=color, s=12, alpha=0.5)
            ax_s.plot(mean.index, mean["retention"], color=color, marker="o", label=f"{int(m)}×: retention r₁")
            ax_s.plot(mean.index, mean["repair"], color=color, marker="s", linestyle="--",
                      label=f"{int(m)}×: repair r₀")
            ax_a.plot(mean.index, mean["test_accuracy"], color=color, marker="o", label=label)
            ax_a.scatter(d["steps"], d["test_accuracy"], color=color, s=12, alpha=0.5)
        ax_r.axhline(1.0, color="0.55", linewidth=0.9, linestyle="--")
        ax_r.set_ylabel("ρ = one sample's correctness ÷ trained-on")
        ax_r.set_title("Retention of the M-step")
        ax_s.set_ylabel("Samples that verify")
        ax_s.set_title("On chunks trained right (r₁) and wrong (r₀)")
        ax_a.set_ylabel("Held-out test accuracy")
        ax_a.set_title("The M-step model's accuracy")
        for ax in (ax_r, ax_s, ax_a):
            ax.set_xscale("log", base=2)
            steps = sorted(sel["steps"].unique())
            ax.set_xticks(steps, [f"{int(s):,}" for s in steps])
            ax.minorticks_off()
            ax.set_xlabel("M-step budget (optimizer steps)")
            ax.legend(loc="best", fontsize=6.5)
        for ax in (ax_s, ax_a):
            ax.set_ylim(0, 1)
            ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
        if len(ctl):
            _mstep_map_panel(axes[3], sel, ctl)
        fig.suptitle("The M-step's transfer curve: budget × bootstrap-corpus size (thoughts from E-step 1)"
                     + (" and the correctness of the thoughts trained on" if len(ctl) else ""))
    return fig


def _mstep_map_panel(ax, sel: pd.DataFrame, ctl: pd.DataFrame) -> None:
    """s' against trained-on c at the controlled cells' budget on the 1× corpus, with the least-squares line."""
    steps = int(ctl["steps"].min())
    own = sel[(sel["multiple"] == 1) & (sel["steps"] == steps)]
    ctl = ctl[ctl["steps"] == steps]
    pts = pd.concat([own, ctl])
    ax.plot([0, 1], [0, 1], color="0.55", linewidth=0.9, linestyle="--", label="identity (ρ = 1)")
    if pts["trained_on_correct"].nunique() >= 2:
        from lt_utils.cobweb import TrainingMap

        m = TrainingMap.fit(pts["trained_on_correct"], pts["sample_correct"])   # the fit the run's cobweb composes
        ax.plot([0.0, 1.0], [m.a, m.a + m.b], color="0.25", linewidth=1.0, label=f"fit: s' = {m.a:+.3f} + {m.b:.3f}·c")
    ax.scatter(own["trained_on_correct"], own["sample_correct"], color=_WIDTH_COLORS[0], s=22, zorder=3,
               label="the E-step's own thoughts (seeds)")
    ax.scatter(ctl["trained_on_correct"], ctl["sample_correct"], color=_WIDTH_COLORS[1], marker="D", s=24,
               zorder=3, label="thoughts exchanged to a set c")
    for _, r in ctl.iterrows():
        ax.annotate(f"ρ {r['rho']:.2f}", (r["trained_on_correct"], r["sample_correct"]), fontsize=6.5,
                    xytext=(4, -9), textcoords="offset points")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
    ax.set_xlabel("Trained-on thoughts that verify (c)")
    ax.set_ylabel("One sample's correctness after the M-step (s')")
    ax.set_title(f"The M-step map at {steps:,} steps, 1× corpus")
    ax.legend(loc="upper left", fontsize=6.5)


_STYLE_COLORS = {"compact": "#0072B2", "spelled": "#D55E00", "spelled_linear": "#009E73"}


@register("thought_format")
def fig_thought_format(df: pd.DataFrame) -> Figure:
    """The thought format as a lever (`sweeps.thought_format.build_table`), one colour per thought style.

    Left: fidelity on dev problems against warmstart steps (line: mean over seeds; dots: each seed).  Middle: at
    the largest budget, per family, q of a problem's own oracle steps on the bootstrap corpus (bar: mean; dots:
    seeds).  Right: the C1 gap, test accuracy per seed of raw repeat and of the latent arm in each style.
    """
    _require(df, ["part", "style", "steps", "arm", "seed", "f", "f_dev"], "thought_format")
    fid = df[df["part"] == "fidelity"]
    c1 = df[df["part"] == "c1"]
    styles = sorted(set(fid["style"]) | set(c1["style"]), key=lambda s: (s != "compact", s))
    color = {st: _STYLE_COLORS.get(st, _WIDTH_COLORS[i % 4]) for i, st in enumerate(styles)}
    with style():
        fig = _new_figure((13.0, 4.0))
        ax_f, ax_fam, ax_c = fig.subplots(1, 3)
        for st in styles:
            d = fid[fid["style"] == st]
            if not len(d):
                continue
            mean = d.groupby("steps")["f_dev"].mean().sort_index()
            ax_f.plot(mean.index, mean.values, color=color[st], marker="o", label=st)
            ax_f.scatter(d["steps"], d["f_dev"], color=color[st], s=14, alpha=0.6, zorder=3)
        steps = sorted(fid["steps"].dropna().unique())
        ax_f.set_xscale("log")
        ax_f.set_xticks(steps, [f"{int(s):,}" for s in steps])
        ax_f.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax_f.set_xlabel("Warmstart steps (8 × 256 tokens, oracle thoughts)")
        ax_f.set_title("Fidelity f on dev problems")
        ax_f.axhline(0.9, color="0.55", linewidth=0.8, linestyle=":")
        ax_f.legend(loc="lower right", fontsize=7)
        top = fid[fid["steps"] == max(steps)] if steps else fid
        fams = ["addition", "linear", "word"]
        width = 0.8 / max(len(styles), 1)
        for j, st in enumerate(styles):
            d = top[top["style"] == st]
            if not len(d):
                continue
            x = np.arange(len(fams)) + (j - (len(styles) - 1) / 2) * width
            ax_fam.bar(x, [d[f"p_{f}"].mean() for f in fams], width=width * 0.9, color=color[st], alpha=0.75,
                       label=f"{st} ({len(d)} seed{'s' * (len(d) != 1)})")
            for k, f in enumerate(fams):
                ax_fam.scatter([x[k]] * len(d), d[f"p_{f}"], color="0.15", s=9, zorder=3)
        ax_fam.set_xticks(range(len(fams)), fams)
        ax_fam.set_title(f"Per family, {int(max(steps)) if steps else 0:,} steps: q of its own steps (corpus)")
        ax_fam.legend(loc="lower left", fontsize=7)
        groups = [("raw_repeat", "compact", "raw repeat")] + [("latent_thoughts", st, f"latent,\n{st}") for st in styles]
        for i, (arm, st, label) in enumerate(groups):
            d = c1[(c1["arm"] == arm) & (c1["style"] == st)]
            if not len(d):
                continue
            dot = arm_style(arm).get("color", "0.3") if arm != "latent_thoughts" else color[st]
            ax_c.scatter([i] * len(d), d["test_accuracy"], color=dot, s=18, zorder=3)
            ax_c.hlines(d["test_accuracy"].mean(), i - 0.25, i + 0.25, color="0.2", linewidth=1.5)
            ax_c.annotate(f"{100 * d['test_accuracy'].mean():.1f}%", (i + 0.28, d["test_accuracy"].mean()),
                          fontsize=7, va="center")
        ax_c.set_xticks(range(len(groups)), [g[2] for g in groups])
        ax_c.set_xlim(-0.5, len(groups) - 0.2)
        ax_c.set_ylabel("Test accuracy (per seed; bar: mean)")
        ax_c.set_title("C1 at equal raw data (stage 02, 3 seeds)")
        for ax in (ax_f, ax_fam, ax_c):
            ax.set_ylim(0, 1)
            ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
        fig.suptitle("Thoughts that spell out sums and differences column by column, against the compact default")
    return fig


@register("prefix_layout")
def fig_prefix_layout(df: pd.DataFrame) -> Figure:
    """The raw-prefix gap (`sweeps.prefix_layout.build_table`): per prefix layout, one bar per warmstart.

    Left: fidelity f on a document's later chunks (bar) and on its first chunks (black tick: the context every
    layout shares).  Right: greedy posterior correctness, the same split.  Colour: warmstart steps; hatched: trained
    with the no-thought coin.  Mean over seeds; dots: each seed.
    """
    _require(df, ["no_thought_p", "steps", "seed", "prefix_chunks", "prefix_layout", "f_first_chunks",
                  "f_later_chunks", "greedy_first", "greedy_later"], "prefix_layout")
    layouts = sorted({(r.prefix_layout, int(r.prefix_chunks)) for r in df.itertuples()},
                     key=lambda lay: (lay[0] != "raw", lay[1]))
    warm = sorted({(int(r.steps), float(r.no_thought_p)) for r in df.itertuples()})
    steps = sorted({s for s, _ in warm})
    color = {s: _WIDTH_COLORS[i % 4] for i, s in enumerate(steps)}
    width = 0.8 / max(len(warm), 1)
    with style():
        fig = _new_figure((12.5, 4.2))
        axes = fig.subplots(1, 2)
        for ax, (later, first, title) in zip(axes, (("f_later_chunks", "f_first_chunks", "Fidelity f"),
                                                    ("greedy_later", "greedy_first", "Greedy posterior correct"))):
            for j, (st, coin) in enumerate(warm):
                x0 = np.arange(len(layouts)) + (j - (len(warm) - 1) / 2) * width
                for k, (kind, n) in enumerate(layouts):
                    d = df[(df["steps"] == st) & (df["no_thought_p"] == coin) & (df["prefix_layout"] == kind)
                           & (df["prefix_chunks"] == n)]
                    if not len(d):
                        continue
                    ax.bar(x0[k], d[later].mean(), width=width * 0.9, color=color[st], alpha=0.8,
                           hatch="//" if coin else None, edgecolor="white" if coin else None,
                           label=f"{st:,} steps{f', coin {coin:g}' if coin else ''}" if k == 0 else None)
                    ax.scatter([x0[k]] * len(d), d[later], color="0.15", s=8, zorder=3)
                    ax.hlines(d[first].mean(), x0[k] - width * 0.45, x0[k] + width * 0.45, color="black",
                              linewidth=1.6, zorder=4, label="first chunks" if (j, k) == (0, 0) else None)
            ax.set_xticks(range(len(layouts)), [f"{n} chunk{'s' * (n != 1)},\n{kind}" for kind, n in layouts])
            ax.set_ylim(0, 1.17)   # room for the legend above the bars
            ax.set_yticks(np.linspace(0, 1, 6))
            ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
            ax.set_title(f"{title}: later chunks (bars), first chunks (ticks)")
            ax.set_xlabel("The posterior's prefix")
        axes[0].legend(loc="upper center", ncol=3, fontsize=7, framealpha=0.95)
        fig.suptitle("Which context the posterior reads best: raw chunks, or chunks carrying their (oracle) thoughts")
    return fig
