"""Stage 03's scheduling and bookkeeping, on a tiny world (no training: corpora are written directly)."""

import math

import pytest

from lt_utils import em_plan

from lt_utils.runtime import config
from lt_utils.runtime.runs import RunDir
from lt_utils.stages import bootstrap_em, data_prep, em_estep
from lt_utils.teacher import OracleTeacher, ThoughtCache, write_thoughts


@pytest.fixture()
def study(tmp_path):
    dcfg = config.load(data_prep.DataPrepConfig, {
        "study": "t", "run_root": str(tmp_path), "families": ["addition", "linear"], "comparison_docs": 2,
        "fresh_docs": 2, "warmstart_docs": 3, "bootstrap_docs": 4, "valid_docs": 3, "eval_problems": 6})
    drun = RunDir.open(dcfg, "01_data_prep")
    data_prep.build_world(drun, dcfg)
    drun.finish()
    cfg = config.load(bootstrap_em.BootstrapConfig, {
        "study": "t", "run_root": str(tmp_path), "seeds": [0, 1, 2], "iterations": 3, "k": 4,
        "k_ablation": [1, 2, 8], "workers": 2, "eval_shots": 2})
    st = bootstrap_em.Study(RunDir.open(cfg, "03_bootstrap_em"), cfg)
    # the iteration-1 corpora an E-step leaves behind (oracle thoughts stand in for sampled ones)
    cache = ThoughtCache(tmp_path / "cache.sqlite")
    thoughts = write_thoughts(OracleTeacher(), st.boot_chunks, cache, progress=False)
    cache.close()
    for name in ("corpus", "corpus_k1", "corpus_k2", "corpus_k8"):
        em_estep.write_corpus(st.run.file(f"iter1/{name}.jsonl"), st.boot_docs, st.boot_heads, st.boot_chunks,
                                st.boot_spans, thoughts)
    return st


def test_side_runs_spread_every_extra_run_over_the_iterations_once(study):
    cfg = study.cfg
    first_pool = em_plan.warmstarts(cfg)[:cfg.workers]
    assert [r.seed for r in first_pool] == [0, 1]       # the E-step needs seed 0; a second core takes seed 1
    extras = em_plan.side_runs(cfg, cfg.workers)
    names = [f"{r.name}/seed{r.seed}" for r in extras]
    assert names[0] == "warmstart/seed2"
    assert len(names) == 1 + 2 * 3 + 3 * 3 and len(set(names)) == len(names)   # warmstart, baselines, K ablation
    shares = [em_plan.side_runs_of_iteration(cfg, it, cfg.workers) for it in (1, 2, 3)]
    assert [r for s in shares for r in s] == extras
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    # the plan is every run once: the progress view and the compute estimate count these
    every = em_plan.all_runs(cfg)
    assert len(every) == len(cfg.seeds) * (1 + cfg.iterations + 2 + 3)
    assert len({(r.name, r.seed) for r in every}) == len(every)


def test_middle_iterations_may_train_fewer_m_steps_but_always_the_generators(study):
    """`middle_iteration_seeds` trims iterations 2..n-1 only: C3 and C4 read the first and last, E-steps seed 0's."""
    import dataclasses

    cfg = dataclasses.replace(study.cfg, middle_iteration_seeds=[0])
    assert [[r.seed for r in em_plan.m_steps(cfg, it)] for it in (1, 2, 3)] == [[0, 1, 2], [0], [0, 1, 2]]
    assert len(em_plan.all_runs(cfg)) == len(em_plan.all_runs(study.cfg)) - 2
    assert em_plan.m_step_seeds(study.cfg, 2) == [0, 1, 2]   # unset: every seed
    assert config.config_hash(study.cfg) == config.config_hash(dataclasses.replace(study.cfg, middle_iteration_seeds=[]))
    for bad in ([1], [0, 5]):   # without the generator's seed, or a seed the study does not run
        with pytest.raises(config.ConfigError, match="middle_iteration_seeds"):
            dataclasses.replace(study.cfg, middle_iteration_seeds=bad)


def test_an_ablation_that_only_selects_trains_no_m_step_but_keeps_its_corpora(study):
    import dataclasses

    cfg = dataclasses.replace(study.cfg, k_ablation_train=False)
    assert em_plan.k_ablation(cfg) == [] and len(em_plan.k_ablation(study.cfg)) == 3 * 3
    assert all(r.role != "k_ablation" for r in em_plan.all_runs(cfg))
    assert em_plan.selected_ks(cfg, 1) == [1, 2, 4, 8] and em_plan.selected_ks(cfg, 2) == [4]
    assert em_plan.k_drawn(cfg, 1) == 8 and em_plan.k_drawn(cfg, 2) == 4


def _side_jobs(study):
    return {j.info["name"]: j for j in map(study.job_of, em_plan.side_runs(study.cfg, study.cfg.workers))}


def test_runs_are_evaluated_few_shot_in_their_own_style(study):
    jobs = _side_jobs(study)
    assert jobs["raw_flop_match/seed0"].eval_style == "direct"
    assert jobs["iter1_k8/seed0"].eval_style == "latent"
    assert len(jobs["iter1_k8/seed0"].eval_shots) == 2
    assert jobs["raw_token_match/seed0"].train.steps < jobs["raw_flop_match/seed0"].train.steps


def test_token_match_baseline_sees_the_raw_tokens_of_one_m_step(study):
    ratio = study.write_token_ratios()["bolt_iter1"]
    assert ratio > 1.2
    assert _side_jobs(study)["raw_token_match/seed0"].train.steps == max(1, round(study.cfg.steps / ratio))
    assert math.isclose(study.write_token_ratios()["raw_flop_match"], 1.0)
    with pytest.raises(ValueError, match="token ratio"):
        em_plan.baselines(study.cfg)[0].steps(study.cfg)


def test_warmstart_documents_come_from_a_split_disjoint_from_the_bootstrap_corpus(tmp_path, study):
    with pytest.raises(config.ConfigError, match="warmstart_split"):
        config.load(bootstrap_em.BootstrapConfig, {"warmstart_split": "bootstrap"})
    cfg = config.load(bootstrap_em.BootstrapConfig, {**config.to_dict(study.cfg), "warmstart_split": "fresh",
                                                  "warmstart_max_docs": 1})
    st = bootstrap_em.Study(RunDir.open(cfg, "03_bootstrap_em_fresh"), cfg)
    from lt_utils.runtime.runs import read_jsonl

    docs = read_jsonl(st.warmstart_corpus())
    assert len(docs) == 1 and docs[0]["doc_id"].startswith("fresh")
    assert all(t for t in docs[0]["thoughts"])        # oracle thoughts for every chunk


def _oracle(study):
    return write_thoughts(OracleTeacher(), study.boot_chunks, ThoughtCache(study.run.file("oracle.sqlite")),
                          progress=False)


def _break_first_step(thought: str) -> str:
    """The first claimed result off by one; the final answer untouched."""
    import re

    return re.sub(r"=(\d+)", lambda m: f"={int(m.group(1)) + 1}", thought, count=1)


def test_chunk_check_tells_a_wrong_step_behind_a_right_answer(study):
    chunk, thought = study.boot_chunks[0], _oracle(study)[0]
    assert em_estep.chunk_check(chunk, thought) == em_estep.Check(True, True, False)
    assert em_estep.chunk_check(chunk, _break_first_step(thought)) == em_estep.Check(False, True, True)
    assert em_estep.chunk_check(chunk, "so 1.") == em_estep.Check(False, False, False)
    assert em_estep.spread_positions(10, 3) == [0, 4, 9]   # linspace 0, 4.5, 9 rounds half to even
    assert em_estep.spread_positions(3, 8) == [0, 1, 2] and em_estep.spread_positions(5, 0) == []


def test_estep_summary_carries_the_loop_diagnostics(study):
    """Candidates: the oracle's thought (selected) and a broken copy; the oracle warmstart scores 1.0."""
    study.warmstart_corpus()
    assert em_estep.trained_on_correct(study, 1) == 1.0
    oracle = _oracle(study)
    records = []
    for pos, (c, t) in enumerate(zip(study.boot_chunks, oracle)):
        cands = [{"text": t, "tokens": [1], "n_tokens": 1, "log_q": -1.0, "log_p": -1.0, "log_w": 0.0,
                  "terminated": True},
                 {"text": _break_first_step(t), "tokens": [2], "n_tokens": 1, "log_q": -1.0, "log_p": -6.0,
                  "log_w": -5.0, "terminated": True}]
        records.append({"position": pos, "doc_id": c.doc_id, "index": c.index, "candidates": cands, "selected": 0,
                        "weights": [1.0, 0.0], "ess": 1.0, "n_unterminated": 0, "no_terminated": False,
                        "n_suffix_tokens": 3, "elbo": {"1": 0.0, "2": 0.0}})
    prior_pos = [0, len(records) - 1]
    prior = [{"text": _break_first_step(oracle[0]), "tokens": [3], "log_q": -2.0, "terminated": True},
             {"text": oracle[-1], "tokens": [4], "log_q": -2.0, "terminated": True}]
    s = em_estep.summarize_with_verifier(study, 1, records, prior_pos, prior)
    assert s["frac_selected_correct"] == 1.0 and s["loop_selected_correct"] == 1.0
    assert s["loop_posterior_sample_correct"] == 0.5 and s["loop_trained_on_correct"] == 1.0
    assert s["loop_rho"] == 0.5 and s["loop_lift"] == 2.0 and s["loop_gain"] == 1.0
    assert s["loop_auc_log_w"] == 1.0 and s["loop_distinct_per_chunk"] == 2.0
    assert s["loop_prior_sample_correct"] == 0.5 and s["loop_posterior_sample_correct_same_chunks"] == 0.5
    assert s["loop_selected_right_answer_wrong_step"] == 0.0
    from lt_utils.runtime.runs import read_jsonl

    saved = read_jsonl(study.run.file("iter1/prior_samples.jsonl"))
    assert [r["correct"] for r in saved] == [False, True]


def test_loop_diagnostics_follow_the_loops_k_when_the_estep_drew_more(study):
    """With K = 4 in the loop and 8 drawn for the ablation, ρ, λ and G describe the first 4 and their selection."""
    study.warmstart_corpus()
    oracle = _oracle(study)
    records = []
    for pos, (c, t) in enumerate(zip(study.boot_chunks, oracle)):
        # candidates 0-3 are broken copies, 4-7 the oracle's: only an 8-candidate view sees correct thoughts
        cands = [{"text": _break_first_step(t) if j < 4 else t, "tokens": [j], "n_tokens": 1, "log_q": -1.0,
                  "log_p": -1.0, "log_w": 0.0, "terminated": True} for j in range(8)]
        records.append({"position": pos, "doc_id": c.doc_id, "index": c.index, "candidates": cands, "selected": 7,
                        "weights": [1 / 8] * 8, "ess": 8.0, "n_unterminated": 0, "no_terminated": False,
                        "n_suffix_tokens": 3, "elbo": {"1": 0.0}})
    s = em_estep.summarize_with_verifier(study, 1, records, [], [], seed=5)
    assert s["frac_selected_correct"] == 1.0 and s["frac_candidates_correct"] == 0.5   # the whole E-step
    assert s["loop_selected_correct"] == 0.0 and s["loop_posterior_sample_correct"] == 0.0   # the loop's K = 4
    assert s["loop_distinct_per_chunk"] == 4.0 and s["loop_gain"] == 0.0
    # the terminal's E-step line reports what the M-step trains on (K = 4), not the 8-sample selection
    assert em_estep.progress_line({**s, "n_chunks": 4, "mean_ess": 8.0}) == {
        "n_chunks": 4, "mean_ess": 8.0, "selected_correct": 0.0}
    assert em_estep.progress_line({"frac_selected_correct": 0.5}) == {"selected_correct": 0.5}   # no loop keys
    assert em_estep.progress_line({"n_chunks": 4}) == {"n_chunks": 4}   # no verifier: nothing to report
    s["selected_correct_by_k"] = {"4": 0.25}
    from lt_utils.runtime.runs import write_json

    write_json(study.run.file("iter1/estep_summary.json"), s)
    assert em_estep.trained_on_correct(study, 2) == 0.25


def test_every_estep_generator_gets_its_fidelity_on_the_corpus_and_dev_problems(study, tmp_path):
    """`em_estep.fidelity` in the E-step's layout: f of a (random) generator, its breakdowns, greedy and sampled shares."""
    import torch

    from lt_utils.model import ModelSpec, build_model
    from lt_utils.tokens import load_tokenizer

    torch.set_num_threads(1)
    tok = load_tokenizer(study.tok_dir)
    gen = tmp_path / "gen"
    build_model(ModelSpec(n_layer=1, n_embd=16, n_head=2, n_kv_head=2, intermediate_size=32, max_seq_len=512),
                tok, seed=0).save_pretrained(str(gen))
    fid = em_estep.fidelity(study, gen, em_estep.estep_config(study.cfg, k=1, seed=0, max_thought_tokens=4))
    corpus, dev = fid["bootstrap"], fid["dev"]
    from lt_utils.runtime.runs import read_jsonl

    assert corpus["n_chunks"] == len(study.boot_chunks)
    assert dev["n_chunks"] == len(read_jsonl(study.data / "dev_problems.jsonl")) > 0
    for part in (corpus, dev):
        assert 0.0 <= part["f"] < 1e-3            # a random model puts almost no mass on a 20-token thought
        assert part["greedy"]["correct"] == 0.0   # and cannot write one in 4 tokens
        assert set(part["by_family"]) <= {"addition", "linear"}
    assert dev["sampled"]["n"] == dev["n_chunks"]


def _records(study, texts_per_chunk, log_w: float, tok):
    from lt_utils.tokens import encode

    return [{"position": pos, "doc_id": c.doc_id, "index": c.index, "selected": 0, "weights": [0.25] * 4, "ess": 1.0,
             "n_unterminated": 0, "no_terminated": False, "n_suffix_tokens": 3, "elbo": {"1": 0.0},
             "candidates": [{"text": t, "tokens": encode(tok, t), "n_tokens": 1, "log_q": -1.0, "log_p": -1.0 + log_w,
                             "log_w": log_w, "terminated": True} for t in texts]}
            for pos, (c, texts) in enumerate(zip(study.boot_chunks, texts_per_chunk))]


@pytest.mark.parametrize("selection", ["resample", "argmax"])
def test_the_memory_rule_weighs_the_thought_trained_on_beside_the_new_samples(study, tmp_path, selection):
    """Iteration 1 trained on the oracle's thoughts; iteration 2's four samples are all wrong.  Drawn samples with a
    negligible weight lose to the kept thought, dominant ones win; the choice is what the corpus, ρ's split and
    the next iteration read, and the summary says which rule chose."""
    import dataclasses

    import torch

    from lt_utils.model import ModelSpec, build_model
    from lt_utils.runtime.runs import write_json, write_jsonl
    from lt_utils.tokens import load_tokenizer

    torch.set_num_threads(1)
    study.cfg = dataclasses.replace(study.cfg, estep_memory=True, estep_selection=selection, k_ablation=[])
    tok = load_tokenizer(study.tok_dir)
    gen = tmp_path / "gen"
    build_model(ModelSpec(n_layer=1, n_embd=16, n_head=2, n_kv_head=2, intermediate_size=32, max_seq_len=512),
                tok, seed=0).save_pretrained(str(gen))
    oracle = _oracle(study)
    write_jsonl(study.run.file("iter1/estep.jsonl"), _records(study, [[t] * 4 for t in oracle], 0.0, tok))
    write_json(study.run.file("iter1/estep_summary.json"), {"selected_correct_by_k": {"4": 1.0}})
    broken = [[_break_first_step(t)] * 4 for t in oracle]
    ecfg = em_estep.estep_config(study.cfg, k=4, seed=2000)

    weak = _records(study, broken, -1e6, tok)
    mem = em_estep.remember(study, 2, weak, gen, ecfg)
    assert all(m["chose_kept"] for m in mem) and [m["chosen"]["text"] for m in mem] == oracle
    assert all(m["kept"]["log_w"] == pytest.approx(m["kept"]["log_p"] - m["kept"]["log_q"]) for m in mem)
    assert all(-1e4 < m["kept"]["log_q"] < 0 for m in mem)
    assert em_estep.remember(study, 2, weak, tmp_path / "no-model-needed", ecfg) == mem   # read back
    assert {p: t["text"] for p, t in em_estep.trained_on(study, 2).items()} == dict(enumerate(oracle))

    s = em_estep.summarize_with_verifier(study, 2, weak, [], [], seed=2000, memory=mem)
    assert s["loop_selected_correct"] == 1.0 and s["loop_selected_correct_bolt"] == 0.0
    assert s["loop_memory_chosen"] == 1.0 and s["loop_memory_kept_correct"] == 1.0
    assert s["loop_posterior_sample_correct"] == 0.0 and s["loop_retention"] == 0.0
    assert s["loop_gain"] == 1.0 and s["loop_rho"] == 0.0

    study.run.file("iter2/memory.jsonl").unlink()
    strong = _records(study, broken, 1e6, tok)
    mem = em_estep.remember(study, 2, strong, gen, ecfg)
    assert not any(m["chose_kept"] for m in mem) and [m["chosen"]["text"] for m in mem] == [b[0] for b in broken]


def test_the_memory_rule_needs_the_in_process_sampler():
    with pytest.raises(ValueError, match="estep_memory"):
        config.load(bootstrap_em.BootstrapConfig, {"estep_memory": True, "estep_backend": "vllm"})
    with pytest.raises(ValueError, match="estep_memory"):
        config.load(bootstrap_em.BootstrapConfig, {"estep_memory": True, "estep_shards": 2})


def test_estep_seed_draws_another_run_of_the_loop_and_leaves_the_studys_own_unchanged(study):
    """`estep_seed` moves every E-step's seed; at 0 the seeds, selections and config hash are the study's own."""
    import dataclasses

    from lt_utils.runtime.runs import write_jsonl

    cfg = study.cfg
    other = dataclasses.replace(cfg, estep_seed=7)
    assert [em_estep.estep_seed(cfg, i) for i in (1, 2, 3)] == [1000, 2000, 3000]
    assert [em_estep.estep_seed(other, i) for i in (1, 2, 3)] == [1007, 2007, 3007]
    assert config.config_hash(cfg) == config.config_hash(dataclasses.replace(cfg, estep_seed=0))
    assert config.config_hash(other) != config.config_hash(cfg)   # another run: its own directory
    # the kept thought of each chunk follows the seed: 4 equally weighted candidates, resampled
    records = [{"position": p, "doc_id": c.doc_id, "index": c.index,
                "candidates": [{"text": f"t{j}", "tokens": [j], "log_w": 0.0, "terminated": True} for j in range(4)]}
               for p, c in enumerate(study.boot_chunks)]
    write_jsonl(study.run.file("iter2/estep.jsonl"), records)
    own = {p: t["text"] for p, t in em_estep.trained_on(study, 2).items()}
    assert own == {r["position"]: f"t{em_estep.select_first_k(r, 4, 2000)}" for r in records}
    moved = {p: t["text"] for p, t in em_estep.trained_on(bootstrap_em.Study(study.run, other), 2).items()}
    assert moved != own and len(moved) == len(own)
    for bad in (-1, 1000):   # 1000 would give iteration 1 the study's seed of iteration 2
        with pytest.raises(config.ConfigError, match="estep_seed"):
            dataclasses.replace(cfg, estep_seed=bad)
