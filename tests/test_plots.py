"""Tests for lt_utils.report.plots: figures render headless, encode the data, save cleanly."""

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.ticker import EngFormatter

from lt_utils.report import plots

TOKENS = [0, 1_000_000, 2_000_000, 4_000_000]
SEEDS = {"raw_repeat": [0, 1, 2], "latent_thoughts": [0, 1, 2], "warmstart": [0]}


def _tidy(families=("algebra", "geometry"), seeds=SEEDS):
    rows = []
    for arm, arm_seeds in seeds.items():
        for seed in arm_seeds:
            for i, tokens in enumerate(TOKENS):
                for j, family in enumerate(families):
                    acc = 0.1 + 0.1 * i + 0.02 * seed + 0.05 * j
                    rows.append(dict(arm=arm, seed=seed, tokens=tokens, family=family,
                                     accuracy=acc, step=i * 100, effective_raw_tokens=tokens / (1 + seed)))
    return pd.DataFrame(rows)


def _lines_by_label(ax):
    return {line.get_label(): line for line in ax.get_lines()
            if not line.get_label().startswith("_")}


def _sample_frame(name):
    """A small input of the shape each registered figure takes."""
    seeds = [0, 1, 2]
    if name == "teacher_quality_sweep":
        return pd.DataFrame([dict(error_rate=e, thought_quality=1 - e, seed=s, accuracy=0.7 - 0.5 * e + 0.01 * s)
                             for e in (0.0, 0.3, 0.7) for s in seeds])
    if name == "em_accuracy_vs_iteration":
        return pd.DataFrame([dict(iteration=i, seed=s, accuracy=0.2 + 0.1 * i + 0.01 * s, tokens=1000)
                             for i in range(4) for s in seeds])
    if name == "em_thought_quality_and_elbo":
        return pd.DataFrame([dict(iteration=0, selected_correct=np.nan, first_correct=np.nan, any_correct=np.nan,
                                  elbo=-1.2, elbo_failures=2)] +
                            [dict(iteration=i, selected_correct=0.5 + 0.1 * i, first_correct=0.4 + 0.1 * i,
                                  any_correct=0.7 + 0.05 * i, elbo=-1.2 + 0.1 * i, elbo_failures=0)
                             for i in (1, 2, 3)])
    if name == "em_loop_gain":
        return pd.DataFrame([dict(iteration=1, rho=0.22, lift=1.56, lift_best_of_k=1.9, gain=0.34),
                             dict(iteration=2, rho=0.28, lift=1.68, lift_best_of_k=1.8, gain=0.48),
                             dict(iteration=3, rho=0.0, lift=None, lift_best_of_k=None, gain=0.0)])
    if name == "em_k_ablation":
        return pd.DataFrame([dict(k=k, seed=s, accuracy=0.3 + 0.05 * k + 0.01 * s, thought_quality=0.5 + 0.05 * k)
                             for k in (1, 2, 4, 8) for s in seeds])
    if name == "loop_gain_map":
        return pd.DataFrame([dict(variant=v, row_param="base_worked_share", row_value=r, col_param="steps",
                                  col_value=c, gain=g, rho=g / 1.7)
                             for v in ("paper", "estep_temperature=0.7") for r in (0.0, 0.1)
                             for c, g in ((350, 0.4 + r), (700, 1.1 + r))])
    if name == "fidelity_curve":
        return pd.DataFrame([dict(width=w, steps=b, tokens=b * 2048, f=f, f_dev=f + 0.05, greedy_correct=f + 0.1,
                                  sampled_dev_correct=f, dev_accuracy=f + 0.2, p_addition=0.9, p_linear=f,
                                  p_word=0.8) for w in (64, 128) for b, f in ((300, 0.1), (1000, 0.4), (3000, 0.7))])
    if name == "loop_cobweb":
        return _cobweb_frame()
    if name == "selection_ablation":
        return pd.DataFrame([dict(source=src, estep=e, generator="warmstart" if e == 1 else f"iter{e - 1}", k=k,
                                  rule=rule, correct=min(1.0, 0.3 + 0.05 * k * w), n_chunks=100)
                             for src in ("a", "b") for e in (1, 2) for k in (1, 4, 16)
                             for rule, w in (("sample", 0), ("resample", 1), ("argmax", 0.9), ("best_of_k", 2))]
                            + [dict(source="a", estep=2, generator="iter1", k=k, rule="memory", correct=0.5,
                                    n_chunks=100) for k in (1, 4, 16)])
    if name == "mstep_transfer":
        return pd.DataFrame([dict(source="sweep", multiple=m, steps=st, seed=0, docs=2000 * m,
                                  trained_on_correct=0.46, sample_correct=0.3, rho=0.3 / 0.46 + 0.01 * m,
                                  retention=0.6, repair=0.1, dev_accuracy=0.5, test_accuracy=0.55, n_chunks=10)
                             for m in (1, 4) for st in (1500, 3000, 6000)])
    if name == "thought_format":
        fid = [dict(part="fidelity", style=style, steps=st, f=f, f_dev=f, p_addition=0.9, p_linear=f / 2, p_word=f,
                    sampled_dev_correct=f, dev_accuracy=0.6) for style, st, f in
               (("compact", 1000, 0.2), ("compact", 3000, 0.8), ("spelled", 1000, 0.3), ("spelled", 3000, 0.9))]
        c1 = [dict(part="c1", style=style, arm=arm, seed=sd, steps=1200, test_accuracy=0.2 + 0.3 * i)
              for i, (style, arm) in enumerate((("compact", "raw_repeat"), ("compact", "latent_thoughts"),
                                                ("spelled", "latent_thoughts"))) for sd in range(3)]
        return pd.DataFrame(fid + c1)
    if name == "prefix_layout":
        return pd.DataFrame([dict(no_thought_p=coin, steps=st, seed=0, prefix_chunks=n, prefix_layout=kind,
                                  f_first_chunks=0.8, f_later_chunks=0.8 - 0.3 * (n == 3), greedy_first=0.9,
                                  greedy_later=0.9 - 0.3 * (n == 3)) for coin in (0.0, 0.5) for st in (1000, 3000)
                             for kind in ("raw", "thoughts") for n in (1, 3)])
    return _tidy()


def _cobweb_frame():
    """E(s) = s and M(c) = 0.5 c + 0.3 at the points measured (one stable fixed point, c* = 0.6), and two loops."""
    rows = [dict(kind="E", source="t", seed=-1, iteration=1, x=s, y=s) for s in (0.1, 0.5, 0.9)]
    rows += [dict(kind="M", source="t", seed=-1, iteration=2, x=c, y=0.5 * c + 0.3) for c in (0.2, 0.6, 0.95)]
    rows += [dict(kind="loop", source=f"s{sd}", seed=sd, iteration=i, x=i, y=0.5 + 0.03 * i + 0.01 * sd)
             for sd in (0, 1) for i in (1, 2, 3)]
    return pd.DataFrame(rows)


def test_the_cobweb_marks_the_fixed_point_of_the_measured_maps():
    fig = plots.fig_loop_cobweb(_cobweb_frame())
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert "E(M(c)), fitted maps" in labels and "identity (G = 1)" in labels
    assert "fixed point c* = 0.60 (stable)" in labels
    assert sum(lbl.startswith("measured:") for lbl in labels) == 2
    frame = _cobweb_frame()
    frame = frame[frame["kind"] != "M"]
    assert not any(lbl.startswith("fixed point") for lbl in
                   (line.get_label() for line in plots.fig_loop_cobweb(frame).axes[0].get_lines()))


@pytest.mark.parametrize("name", sorted(plots.FIGURES))
def test_each_registered_figure_renders_and_saves(name, tmp_path):
    paths = plots.save_figure(plots.FIGURES[name](_sample_frame(name)), name, tmp_path / "figs")
    assert [p.name for p in paths] == [f"{name}.pdf", f"{name}.png"]
    pdf, png = (p.read_bytes() for p in paths)
    assert pdf.startswith(b"%PDF") and len(pdf) > 1000
    assert png.startswith(b"\x89PNG") and len(png) > 1000
    # atomic write leaves no temp files behind
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == sorted(p.name for p in paths)


def test_accuracy_vs_tokens_encodes_mean_over_seeds():
    df = _tidy()
    fig = plots.fig_accuracy_vs_tokens(df)
    (ax,) = fig.axes
    lines = _lines_by_label(ax)
    assert list(lines) == [  # canonical arm order, seed counts in the legend
        "Raw (repeat) (n=3 seeds)", "Latent thoughts (n=3 seeds)", "Warmstart (n=1 seed)",
    ]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(lines)
    # per seed the two families are averaged first, then the mean over seeds
    expected = (df[df.arm == "latent_thoughts"].groupby(["tokens", "seed"]).accuracy.mean()
                .groupby("tokens").mean())
    line = lines["Latent thoughts (n=3 seeds)"]
    np.testing.assert_allclose(line.get_xdata(), expected.index.to_numpy(dtype=float))
    np.testing.assert_allclose(line.get_ydata(), expected.to_numpy())


def test_accuracy_vs_tokens_axes_and_bands():
    fig = plots.fig_accuracy_vs_tokens(_tidy())
    (ax,) = fig.axes
    assert ax.get_title() == "Accuracy vs training tokens"
    assert ax.get_xlabel() == "Training tokens"
    assert ax.get_ylabel() == "Held-out accuracy"
    assert ax.get_ylim() == (0.0, 1.0)
    assert isinstance(ax.xaxis.get_major_formatter(), EngFormatter)
    assert ax.xaxis.get_major_formatter()(2_000_000) == "2M"
    assert ax.yaxis.get_major_formatter()(0.5) == "50%"
    # ±1 SE bands for the two 3-seed arms only; the 1-seed arm gets none
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 2


def test_by_family_one_panel_per_family_shared_y():
    fig = plots.fig_accuracy_by_family(_tidy(families=("algebra", "geometry", "logic", "sets")))
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["algebra", "geometry", "logic", "sets"]
    assert all(ax.get_ylim() == (0.0, 1.0) for ax in panels)
    assert panels[0].get_shared_y_axes().joined(panels[0], panels[-1])
    legend_texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend_texts == ["Raw (repeat) (n=3 seeds)", "Latent thoughts (n=3 seeds)",
                            "Warmstart (n=1 seed)"]


def test_by_family_single_family_is_one_panel():
    fig = plots.fig_accuracy_by_family(_tidy(families=("algebra",)))
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == ["algebra"]


def test_figures_reject_missing_columns():
    with pytest.raises(ValueError, match="family"):
        plots.fig_accuracy_by_family(_tidy().drop(columns="family"))


def test_save_figure_overwrites_with_normal_permissions(tmp_path):
    reference = tmp_path / "reference.txt"
    reference.write_text("x")
    plots.save_figure(plots.fig_accuracy_vs_tokens(_tidy()), "fig", tmp_path)
    first = (tmp_path / "fig.png").read_bytes()
    plots.save_figure(plots.fig_accuracy_vs_tokens(_tidy(seeds={"bolt": [0, 1]})), "fig", tmp_path)
    assert (tmp_path / "fig.png").read_bytes() != first
    assert (tmp_path / "fig.png").stat().st_mode == reference.stat().st_mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.pdf", "fig.png", "reference.txt"]


def test_render_all_skips_empty_frames(tmp_path):
    frames = {"accuracy_vs_tokens": _tidy(),
              "accuracy_vs_tokens_by_family": _tidy().iloc[0:0]}
    produced = plots.render_all(frames, tmp_path)
    assert list(produced) == ["accuracy_vs_tokens"]
    assert all(p.exists() for p in produced["accuracy_vs_tokens"])
    assert not (tmp_path / "accuracy_vs_tokens_by_family.png").exists()


def test_render_all_respects_names_and_rejects_unknown(tmp_path):
    frames = {name: _tidy() for name in plots.FIGURES}
    produced = plots.render_all(frames, tmp_path, names=["accuracy_vs_tokens_by_family"])
    assert list(produced) == ["accuracy_vs_tokens_by_family"]
    with pytest.raises(KeyError, match="no_such_figure"):
        plots.render_all({"no_such_figure": _tidy()}, tmp_path)


def test_unknown_arm_gets_fallback_style_and_own_label():
    known_colors = {s["color"] for s in plots.ARM_STYLE.values()}
    st = plots.arm_style("mystery_arm")
    assert st["label"] == "mystery_arm"
    assert st["color"] not in known_colors
    assert st == plots.arm_style("mystery_arm")  # stable across calls
    fig = plots.fig_accuracy_vs_tokens(_tidy(seeds={"raw_repeat": [0, 1], "mystery_arm": [0, 1]}))
    lines = _lines_by_label(fig.axes[0])
    assert list(lines) == ["Raw (repeat) (n=2 seeds)", "mystery_arm (n=2 seeds)"]
    assert lines["mystery_arm (n=2 seeds)"].get_color() == st["color"]


def test_arm_style_covers_every_study_arm():
    expected = {
        "raw_repeat": "Raw (repeat)", "raw_fresh": "Raw (fresh)", "wrap_orig": "WRAP-Orig",
        "wrap_cot": "WRAP-CoT", "latent_thoughts": "Latent thoughts", "bolt": "BoLT",
        "raw_token_match": "Raw token-match", "raw_flop_match": "Raw FLOP-match",
        "warmstart": "Warmstart",
    }
    assert {arm: s["label"] for arm, s in plots.ARM_STYLE.items()} == expected
    assert len({s["color"] for s in plots.ARM_STYLE.values()}) == len(expected)


def test_save_figure_closes_pyplot_figures(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure()
    fig.add_subplot().plot([0, 1], [0, 1])
    plots.save_figure(fig, "pyplot_fig", tmp_path)
    assert fig.number not in plt.get_fignums()
    assert (tmp_path / "pyplot_fig.png").stat().st_size > 0


def test_style_context_restores_rcparams():
    import matplotlib
    before = matplotlib.rcParams["axes.spines.top"]
    with plots.style():
        assert matplotlib.rcParams["axes.spines.top"] is False
    assert matplotlib.rcParams["axes.spines.top"] == before


def test_effective_raw_tokens_figure_uses_its_own_axis():
    df = _tidy()
    fig = plots.fig_accuracy_vs_effective_raw_tokens(df)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "Effective raw tokens seen"
    xs = {x for line in ax.get_lines() for x in line.get_xdata()}
    assert xs <= set(df["effective_raw_tokens"])
    with pytest.raises(ValueError, match="effective_raw_tokens"):
        plots.fig_accuracy_vs_effective_raw_tokens(df.drop(columns=["effective_raw_tokens"]))


def test_teacher_sweep_points_sit_at_measured_quality_with_reference_band():
    df = _sample_frame("teacher_quality_sweep")
    fig = plots.fig_teacher_quality(df, references={"raw_repeat": (0.12, 0.01)})
    ax = fig.axes[0]
    line = next(c for c in ax.containers if c.get_label().startswith("Latent thoughts")).lines[0]
    np.testing.assert_allclose(line.get_xdata(), [1.0, 0.7, 0.3])  # quality of error rates 0, 0.3, 0.7
    np.testing.assert_allclose(line.get_ydata(), df.groupby("error_rate")["accuracy"].mean().to_numpy())
    ref = next(ln for ln in ax.get_lines() if ln.get_label() == "Raw (repeat)")
    assert ref.get_ydata()[0] == pytest.approx(0.12)


def test_em_iterations_plot_means_and_label_warmstart():
    df = _sample_frame("em_accuracy_vs_iteration")
    fig = plots.fig_em_iterations(df, references={"raw_flop_match": (0.3, 0.02)})
    ax = fig.axes[0]
    line = next(c for c in ax.containers if c.get_label().startswith("BoLT")).lines[0]
    np.testing.assert_allclose(line.get_ydata(), df.groupby("iteration")["accuracy"].mean().to_numpy())
    assert ax.get_xticklabels()[0].get_text().replace("\n", "") == "warm-start"


def test_sweep_arms_get_paler_latent_colours():
    base = plots.arm_style("latent_thoughts")["color"]
    lo, hi = plots.arm_style("latent_err0.3"), plots.arm_style("latent_err0.7")
    assert lo["label"] == "Latent, teacher errs 30%" and hi["label"] == "Latent, teacher errs 70%"
    assert len({base, lo["color"], hi["color"]}) == 3


def test_loop_gain_figure_draws_each_ratio_on_a_log_axis():
    fig = plots.fig_em_loop_gain(_sample_frame("em_loop_gain"))
    ax = fig.axes[0]
    lines = _lines_by_label(ax)
    assert ax.get_yscale() == "log"
    assert list(lines["loop gain G = ρλ"].get_ydata()) == [0.34, 0.48]   # the zero at iteration 3 cannot be drawn
    assert list(lines["lift λ (selected ÷ one sample)"].get_xdata()) == [1, 2]
