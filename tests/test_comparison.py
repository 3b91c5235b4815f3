"""Each arm's training text is built as the paper describes, on a tiny world."""

import re

import pytest

from lt_utils.runtime import config
from lt_utils.data import ThoughtDoc, layout_ids, tokenize_docs
from lt_utils.runtime.runs import RunDir, read_json, read_jsonl
from lt_utils.stages import data_prep, synthetic_thoughts
from lt_utils.tokens import SpecialIds, load_tokenizer


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    dcfg = config.load(data_prep.DataPrepConfig, {
        "study": "t", "run_root": str(root), "families": ["addition", "linear", "word"], "comparison_docs": 12,
        "fresh_docs": 12, "warmstart_docs": 2, "bootstrap_docs": 2, "valid_docs": 4, "eval_problems": 9})
    drun = RunDir.open(dcfg, "01_data_prep")
    data_prep.build_world(drun, dcfg)
    drun.finish()
    cfg = config.load(synthetic_thoughts.SyntheticThoughtsConfig, {
        "study": "t", "run_root": str(root), "arms": list(synthetic_thoughts.ARMS), "wrap_orig_repeats": 2,
        "wrap_cot_repeats": 2})
    run = RunDir.open(cfg, "02_synthetic_thoughts")
    return cfg, run, synthetic_thoughts.data_dir_of(cfg)


def docs_of(path):
    return [ThoughtDoc.from_dict(r) for r in read_jsonl(path)]


def test_raw_arms_read_their_own_split(stage):
    cfg, run, data = stage
    rep = docs_of(synthetic_thoughts.arm_corpus(run, cfg, data, "raw_repeat"))
    fresh = docs_of(synthetic_thoughts.arm_corpus(run, cfg, data, "raw_fresh"))
    assert all(d.thoughts is None for d in rep + fresh)
    assert [d.text for d in rep] == [d.text for d in data_prep.load_documents(data, "comparison")]
    assert {d.doc_id.split("-")[0] for d in fresh} == {"fresh"}


def test_latent_arm_has_one_verified_thought_per_chunk(stage):
    cfg, run, data = stage
    docs = docs_of(synthetic_thoughts.arm_corpus(run, cfg, data, "latent_thoughts"))
    originals = data_prep.load_documents(data, "comparison")
    for d, o in zip(docs, originals):
        assert d.text == o.text and len(d.thoughts) == len(d.suffixes)
        units = [u for u in o.units]
        assert " ".join(t for t in d.thoughts if t) == " ".join(u.thought for u in units)
    assert read_json(run.file("teacher_quality_comparison.json"))["fraction_correct"] == 1.0


def test_wrap_arms_are_rewrites_without_raw_text(stage):
    cfg, run, data = stage
    raw_texts = {d.text for d in data_prep.load_documents(data, "comparison")}
    orig = docs_of(synthetic_thoughts.arm_corpus(run, cfg, data, "wrap_orig"))
    cot = docs_of(synthetic_thoughts.arm_corpus(run, cfg, data, "wrap_cot"))
    assert len(orig) == 2 * 12 and len(cot) == 2 * 12
    for d in orig + cot:
        assert d.head == "" and d.suffixes == [] and len(d.thoughts) == 1
        assert d.thoughts[0] not in raw_texts and "Problem:" not in d.thoughts[0]
    step = re.compile(r"\d+[+\-*/]\d+=\d+")
    assert not any(step.search(d.thoughts[0]) for d in orig)   # WRAP-Orig: no derivations
    assert all(step.search(d.thoughts[0]) for d in cot)        # WRAP-CoT: reasoning written in
    assert len({d.thoughts[0] for d in orig}) == len(orig)     # repeats differ


def test_token_ratios_are_measured(stage):
    cfg, run, data = stage
    r = synthetic_thoughts.arm_token_ratios(run, cfg, data)
    assert r["raw_repeat"] == pytest.approx(1.0) and r["raw_fresh"] == pytest.approx(1.0)
    assert r["latent_thoughts"] > 1.3
    assert r["wrap_cot"] > r["wrap_orig"] > 0.3
    tok = load_tokenizer(data / "tokenizer")
    orig = tokenize_docs(tok, docs_of(run.file("thoughts/comparison_wrap_orig.jsonl")))
    raw = tokenize_docs(tok, docs_of(run.file("thoughts/comparison_raw.jsonl")))
    total = sum(len(layout_ids(d, "thought_only", SpecialIds.of(tok))[0]) for d in orig)
    assert r["wrap_orig"] == pytest.approx(total / sum(d.raw_len for d in raw) / 2)


def test_noisy_teacher_lowers_measured_quality(stage, tmp_path):
    cfg, _, data = stage
    noisy = config.load(synthetic_thoughts.SyntheticThoughtsConfig, {
        "study": "t", "run_root": str(tmp_path), "teacher_error_rate": 0.5})
    run = RunDir.open(noisy, "02_synthetic_thoughts")
    synthetic_thoughts.thought_docs(run, noisy, data, "comparison")
    q = read_json(run.file("teacher_quality_comparison.json"))["fraction_correct"]
    assert 0.2 < q < 0.8


def test_teacher_sweep_adds_latent_arms_with_measured_quality(stage, tmp_path):
    _, _, data = stage
    cfg = config.load(synthetic_thoughts.SyntheticThoughtsConfig, {
        "study": "t", "run_root": str(tmp_path), "arms": ["raw_repeat", "latent_thoughts"],
        "teacher_sweep": [0.5, 1.0]})
    specs = synthetic_thoughts.arm_specs(cfg)
    assert list(specs) == ["raw_repeat", "latent_thoughts", "latent_err0.5", "latent_err1"]
    assert specs["latent_err0.5"].error_rate == 0.5 and specs["latent_err0.5"].latent_eval
    assert synthetic_thoughts.sweep_error_rate("latent_err0.5") == 0.5 and synthetic_thoughts.sweep_error_rate("wrap_cot") is None
    run = RunDir.open(cfg, "02_synthetic_thoughts")
    table = synthetic_thoughts.teacher_quality_table(run, cfg, data).set_index("arm")
    q = table["thoughts_that_verify_%"]
    assert q["latent_thoughts"] == 100.0 and q["latent_err1"] < q["latent_err0.5"] < 100.0
    clean = docs_of(synthetic_thoughts.arm_corpus(run, cfg, data, "latent_thoughts"))
    noisy = docs_of(synthetic_thoughts.arm_corpus(run, cfg, data, "latent_err0.5"))
    assert [d.text for d in clean] == [d.text for d in noisy]       # same raw text, different thoughts
    assert [d.thoughts for d in clean] != [d.thoughts for d in noisy]
    with pytest.raises(config.ConfigError, match="teacher_sweep"):
        config.load(synthetic_thoughts.SyntheticThoughtsConfig, {"teacher_sweep": [0.0]})


def test_every_arm_is_evaluated_few_shot_in_its_own_style(stage):
    cfg, run, data = stage
    cfg = config.load(synthetic_thoughts.SyntheticThoughtsConfig, {**config.to_dict(cfg), "eval_shots": 3})
    jobs = {j.info["arm"]: j for j in synthetic_thoughts.make_jobs(run, cfg, data, progress=False)}
    styles = {arm: j.eval_style for arm, j in jobs.items()}
    assert styles == {"raw_repeat": "direct", "raw_fresh": "direct", "wrap_orig": "direct", "wrap_cot": "cot",
                      "latent_thoughts": "latent"}
    shots = [j.eval_shots for j in jobs.values()]
    assert len(shots[0]) == 3 and all(s == shots[0] for s in shots)   # the same exemplars for every arm


def test_an_arm_may_run_fewer_seeds_and_the_progress_view_counts_them(stage):
    """`arm_seeds` trims one arm's seeds (the default's WRAP arms run 2 of 3); the other arms keep `seeds`."""
    from lt_utils.cli.progress_display import stage_plan

    cfg, run, data = stage
    cfg = config.load(synthetic_thoughts.SyntheticThoughtsConfig, {
        **config.to_dict(cfg), "arms": ["raw_repeat", "wrap_cot"], "seeds": [0, 1, 2], "arm_seeds": {"wrap_cot": [0, 1]}})
    names = [j.info["name"] for j in synthetic_thoughts.make_jobs(run, cfg, data, progress=False)]
    assert names == ["raw_repeat/seed0", "raw_repeat/seed1", "raw_repeat/seed2", "wrap_cot/seed0", "wrap_cot/seed1"]
    assert synthetic_thoughts.n_runs(cfg) == 5
    assert stage_plan("02_synthetic_thoughts", cfg).runs == 5
    with pytest.raises(config.ConfigError, match="arm_seeds"):   # an arm the config does not train
        config.load(synthetic_thoughts.SyntheticThoughtsConfig, {**config.to_dict(cfg), "arm_seeds": {"raw_fresh": [0]}})


def test_dev_and_test_problems_are_disjoint_and_absent_from_training_text(stage):
    cfg, run, data = stage
    test = read_jsonl(data / "eval_problems.jsonl")
    dev = read_jsonl(data / "dev_problems.jsonl")
    assert len(test) == 9 and len(dev) == data_prep.DataPrepConfig().dev_problems
    assert not {p["uid"] for p in test} & {p["uid"] for p in dev}
    assert not {p["question"] for p in test} & {p["question"] for p in dev}
    training = [d for split in ("comparison", "fresh", "warmstart", "bootstrap", "valid")
                for d in data_prep.load_documents(data, split)]
    seen_uids = {u.uid for d in training for u in d.units}
    seen_questions = {u.question for d in training for u in d.units}
    for p in test + dev:
        assert p["uid"] not in seen_uids and p["question"] not in seen_questions
    # the test set is the one a draw of the test problems alone gives
    from lt_utils import world

    alone = world.generate_problems("eval", 9, families=["addition", "linear", "word"], seed=0)
    assert [u.uid for u in alone] == [p["uid"] for p in test]
    # training runs evaluate a dev subset along the way and the test set at the end
    job = synthetic_thoughts.make_jobs(run, cfg, data, progress=False)[0]
    assert job.dev_problems_path.endswith("dev_problems.jsonl") and job.max_dev_problems == cfg.eval_dev_problems
    assert job.eval_problems_path.endswith("eval_problems.jsonl")
