"""Analysis reads stored runs into tidy tables; comparisons carry their statistics."""


import pytest

from lt_utils.runtime.runs import write_json, write_jsonl
from lt_utils.report import results


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


def fake_em_run(root, arm, seed, acc, iteration=None, k=None, tokens=1000, unparseable=0.0):
    d = root / "03_bootstrap_em" / "train" / arm / f"seed{seed}"
    write_json(d / "run.json", {"arm": arm, "seed": seed, "stage": "03_bootstrap_em", "iteration": iteration, "k": k})
    write_jsonl(d / "metrics.jsonl", [{"kind": "eval", "step": 0, "tokens": 0, "accuracy": 0.0, "unparseable": 1.0},
                                      {"kind": "eval", "step": 10, "tokens": tokens, "accuracy": acc,
                                       "unparseable": unparseable}])
    (d / "DONE").write_text("{}")


def test_em_tables_read_iterations_baselines_k_and_estep_files(tmp_path):
    for s in range(3):
        fake_em_run(tmp_path, "warmstart", s, 0.10 + 0.01 * s, iteration=0)
        for it in (1, 2, 3):
            fake_em_run(tmp_path, f"bolt_iter{it}", s, 0.2 * it + 0.01 * s, iteration=it, k=4)
        for kk in (1, 2, 8):
            fake_em_run(tmp_path, f"bolt_iter1_k{kk}", s, 0.05 * kk + 0.01 * s, iteration=1, k=kk)
        fake_em_run(tmp_path, "raw_token_match", s, 0.05, tokens=500, unparseable=0.5)
        fake_em_run(tmp_path, "raw_flop_match", s, 0.06)
    stage = tmp_path / "03_bootstrap_em"
    for it, sel in ((1, 0.6), (2, 0.7), (3, 0.8)):
        write_json(stage / f"iter{it}" / "estep_summary.json",
                   {"k": 8 if it == 1 else 4, "frac_selected_correct": sel, "frac_first_correct": sel - 0.1,
                    "frac_any_correct": sel + 0.1, "mean_log_w_correct": -3.0, "mean_log_w_incorrect": -9.0,
                    "selected_correct_by_k": {"1": 0.5, "2": 0.55, "4": 0.6, "8": 0.62} if it == 1 else {}})
    for name, val, fails in (("warmstart", float("-inf"), 2), ("iter1", -1.5, 0), ("iter2", -1.4, 0),
                             ("iter3", -1.3, 0)):
        write_json(stage / "elbo" / f"{name}.json", {"elbo_per_token": val, "chunks": 10,
                                                     "elbo_finite_per_token": -1.6 if fails else val,
                                                     "chunks_without_finite_bound": fails})
    finals = results.final_points(results.collect_evals(tmp_path))
    em = results.em_accuracy(finals)
    assert list(em.groupby("iteration")["accuracy"].mean().round(3)) == [0.11, 0.21, 0.41, 0.61]
    cmp = results.arm_comparisons(finals, "bolt_iter3", ["raw_token_match", "raw_flop_match", "missing_arm"])
    assert list(cmp["comparison"]) == ["bolt_iter3 − raw_token_match", "bolt_iter3 − raw_flop_match"]
    assert cmp.iloc[1]["diff_pts"] == pytest.approx(61 - 6) and cmp.iloc[1]["welch_p"] < 1e-3
    kab = results.k_ablation(tmp_path, finals)
    assert sorted(kab["k"].unique()) == [1, 2, 4, 8] and (kab.groupby("k").size() == 3).all()
    assert kab.loc[kab["k"] == 8, "thought_quality"].iloc[0] == pytest.approx(0.62)
    both = results.em_estep_and_elbo(tmp_path).set_index("iteration")
    assert both.loc[0, "elbo"] == pytest.approx(-1.6) and both.loc[0, "elbo_failures"] == 2   # finite chunks only
    assert both.loc[3, "selected_correct"] == pytest.approx(0.8) and both.loc[3, "elbo"] == pytest.approx(-1.3)
    answers = results.answer_breakdown(finals).set_index("arm")
    assert answers.loc["raw_token_match", "unparseable_%"] == pytest.approx(50.0)
    assert answers.loc["raw_token_match", "wrong_%"] == pytest.approx(45.0)
    frames = results.figure_frames(tmp_path, results.collect_evals(tmp_path), finals)
    df, kwargs = frames["em_accuracy_vs_iteration"]
    assert set(kwargs["references"]) == {"raw_token_match", "raw_flop_match"}
    assert "em_k_ablation" in frames and "teacher_quality_sweep" not in frames


def test_teacher_sweep_pairs_accuracy_with_stored_quality(tmp_path):
    for s in range(2):
        fake_run(tmp_path, "latent_thoughts", s, [0.0, 0.8], [0.0, 0.8])
        fake_run(tmp_path, "latent_err0.5", s, [0.0, 0.4], [0.0, 0.4])
        fake_run(tmp_path, "raw_repeat", s, [0.0, 0.1], [0.0, 0.1])
    stage = tmp_path / "02_synthetic_thoughts"
    write_json(stage / "teacher_quality_comparison.json", {"fraction_correct": 1.0})
    write_json(stage / "teacher_quality_comparison_latent_err0.5.json", {"fraction_correct": 0.52})
    finals = results.final_points(results.collect_evals(tmp_path))
    sweep = results.teacher_sweep(tmp_path, finals)
    assert set(sweep["arm"]) == {"latent_thoughts", "latent_err0.5"} and len(sweep) == 4
    assert sweep.groupby("error_rate")["thought_quality"].first().to_dict() == {0.0: 1.0, 0.5: 0.52}
    frames = results.figure_frames(tmp_path, results.collect_evals(tmp_path), finals)
    assert "latent_err0.5" not in set(frames["accuracy_vs_tokens"]["arm"])   # sweep arms get their own figure
    assert set(frames["teacher_quality_sweep"][1]["references"]) == {"raw_repeat"}


def test_final_tables_read_test_points_and_curves_read_dev_points(tmp_path):
    d = tmp_path / "02_synthetic_thoughts" / "train" / "latent_thoughts" / "seed0"
    write_json(d / "run.json", {"arm": "latent_thoughts", "seed": 0, "stage": "02_synthetic_thoughts",
                                "packing": {"cut_at_chunks": True, "thoughts": 40, "apart": 0, "share_apart": 0.0,
                                            "share_apart_row_cuts": 0.25}})
    recs = [{"kind": "eval", "split": "dev", "step": s, "tokens": 100 * s, "accuracy": 0.1 * s, "eval_shots": 2}
            for s in (0, 1, 2)]
    recs.append({"kind": "eval", "split": "test", "step": 2, "tokens": 200, "accuracy": 0.5, "eval_shots": 2})
    write_jsonl(d / "metrics.jsonl", recs)
    (d / "DONE").write_text("{}")
    fake_run(tmp_path, "raw_repeat", 0, [0.0, 0.3], [0.0, 0.3])    # stored before the split: read as test
    evals = results.collect_evals(tmp_path)
    finals = results.final_points(evals).set_index("arm")
    assert (finals["split"] == "test").all()
    assert finals.loc["latent_thoughts", "accuracy"] == 0.5 and finals.loc["raw_repeat", "accuracy"] == 0.3
    dev = results.final_points(evals, "dev")
    assert list(dev["arm"]) == ["latent_thoughts"] and dev["accuracy"].iloc[0] == pytest.approx(0.2)
    curves = results.curve_points(evals)
    assert set(curves.loc[curves["arm"] == "latent_thoughts", "split"]) == {"dev"}
    assert len(curves[curves["arm"] == "raw_repeat"]) == 2
    assert results.summary_table(results.final_points(evals)).set_index("arm").loc["latent_thoughts", "shots"] == 2
    pack = results.packing_table(tmp_path).set_index("arm")
    assert list(pack.index) == ["latent_thoughts"]
    assert pack.loc["latent_thoughts", "share_apart_row_cuts_%"] == 25.0 and pack.loc["latent_thoughts",
                                                                                     "share_apart_%"] == 0.0


def full_study(root):
    """Stage 02 runs with a teacher sweep and stage 03 runs with E-step and ELBO files, as the stages store them."""
    for s in range(2):
        fake_run(root, "latent_thoughts", s, [0.0, 0.8 + 0.01 * s], [0.0, 0.7])
        fake_run(root, "latent_err0.5", s, [0.0, 0.4], [0.0, 0.3 + 0.1 * s])
        fake_run(root, "raw_repeat", s, [0.0, 0.1 / 3], [0.0, 0.2])
        for it in (1, 2):
            fake_em_run(root, f"bolt_iter{it}", s, 0.2 * it + 0.01 * s, iteration=it, k=4)
        for kk in (1, 2):
            fake_em_run(root, f"bolt_iter1_k{kk}", s, 0.05 * kk, iteration=1, k=kk)
        fake_em_run(root, "warmstart", s, 0.1, iteration=0)
    write_json(root / "02_synthetic_thoughts" / "teacher_quality_comparison.json", {"fraction_correct": 1.0})
    write_json(root / "02_synthetic_thoughts" / "teacher_quality_comparison_latent_err0.5.json",
               {"fraction_correct": 0.52})
    write_json(root / "02_synthetic_thoughts" / "token_ratios.json", {"latent_thoughts": 2.7})
    stage = root / "03_bootstrap_em"
    for it in (1, 2):
        write_json(stage / f"iter{it}" / "estep_summary.json",
                   {"k": 4, "frac_selected_correct": 0.6 + 0.1 * it, "frac_first_correct": 0.5,
                    "frac_any_correct": 0.9, "selected_correct_by_k": {"1": 0.5, "2": 0.55, "4": 0.6}})
    for name, val in (("warmstart", float("-inf")), ("iter1", -1.5), ("iter2", -1.0 / 3)):
        write_json(stage / "elbo" / f"{name}.json", {"elbo_per_token": val, "chunks": 10,
                                                     "elbo_finite_per_token": -1.6, "chunks_without_finite_bound": 1})


def test_figure_data_round_trips_exactly_and_redraws_identical_bytes(tmp_path):
    from lt_utils.report import redraw

    full_study(tmp_path / "study")
    tables = results.study_tables(tmp_path / "study")
    data = tmp_path / "figs" / "data"
    results.write_figure_data(tables, data)
    again = results.write_figure_data(results.read_figure_data(data), tmp_path / "again")
    assert [p.read_bytes() for p in again] == [(data / p.name).read_bytes() for p in again]   # exact floats, -inf
    assert results.read_figure_data(data)["em_elbo"]["elbo_per_token"].iloc[0] == float("-inf")
    first = redraw.draw(data, tmp_path / "one")
    second = redraw.draw(data, tmp_path / "two")
    assert set(first) == {"accuracy_vs_tokens", "accuracy_vs_effective_raw_tokens", "accuracy_vs_tokens_by_family",
                          "teacher_quality_sweep", "em_accuracy_vs_iteration", "em_thought_quality_and_elbo",
                          "em_k_ablation"}
    for name, files in first.items():
        assert [f.read_bytes() for f in files] == [f.read_bytes() for f in second[name]], name
    # the figures drawn from the tables equal those drawn straight from the study's stored results
    from lt_utils.report import plots
    direct = plots.render_all(results.figure_frames(tmp_path / "study"), tmp_path / "direct")
    for name, files in direct.items():
        assert [f.read_bytes() for f in files] == [f.read_bytes() for f in first[name]], name


def test_loop_diagnostics_are_labelled_with_the_loops_k_and_the_k_drawn(tmp_path):
    # iteration 1 draws the K ablation's largest K; its loop diagnostics use the loop's first K candidates
    stage = tmp_path / "03_bootstrap_em"
    for it, k in ((1, 8), (2, 4)):
        write_json(stage / f"iter{it}" / "estep_summary.json", {"k": k, "loop_distinct_per_chunk": 4.0})
    (stage / "config.yaml").write_text("k: 4\nk_ablation: [1, 2, 8]\n")
    df = results.loop_diagnostics(tmp_path).set_index("iteration")
    assert list(df["k"]) == [4, 4] and list(df["k_drawn"]) == [8, 4] and list(df["distinct_of_k"]) == [4.0, 4.0]
    (stage / "config.yaml").unlink()   # a stage stored without its config: the E-step's own K
    assert list(results.loop_diagnostics(tmp_path)["k"]) == [8, 4]


def test_figures_without_data_stop_with_one_line(tmp_path, capsys):
    from lt_utils.report import redraw

    assert redraw.main(["--data", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tmp_path / "nowhere" / "evals.csv") in err and "04_analysis" in err


def test_analysis_of_an_empty_study_names_the_command(tmp_path):
    from lt_utils.runtime.runs import MissingInputError

    with pytest.raises(MissingInputError, match="no finished training run .*--profile smoke"):
        results.require_evals(results.collect_evals(tmp_path / "smoke"), tmp_path / "smoke")


@pytest.mark.slow
def test_every_committed_figure_redraws_byte_identically_from_its_committed_tables(tmp_path):
    # what `make figures` promises in a fresh clone: every committed figure has its tables committed beside it
    from lt_utils.report import redraw
    from lt_utils.runtime.paths import FIGURES_DIR

    committed = {p.relative_to(FIGURES_DIR) for p in FIGURES_DIR.rglob("*") if p.suffix in (".png", ".pdf")}
    redrawn = set()
    for data in redraw.default_data_dirs():
        out = tmp_path / data.parent.relative_to(FIGURES_DIR)
        for files in redraw.draw(data, out).values():
            for f in files:
                rel = f.relative_to(tmp_path)
                redrawn.add(rel)
                assert f.read_bytes() == (FIGURES_DIR / rel).read_bytes(), rel
    assert redrawn == committed
