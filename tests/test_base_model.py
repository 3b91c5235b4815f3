"""The shared base model: its corpus, its cache, and every stage continuing from it (tiny budgets)."""

import hashlib
import re
import shutil

import pytest
import torch

from lt_utils import em_plan, world

from lt_utils.runtime import config
from lt_utils.runtime.config import ConfigError
from lt_utils.runtime.runs import RunDir, read_json, read_jsonl
from lt_utils.stages import base_model, bootstrap_em, data_prep as corpus, synthetic_thoughts
from lt_utils.world.base_corpus import difficulty_mix, generate_base_documents
from lt_utils.world.worked import render_worked_unit, working_prose

DATA = {"families": ["addition", "linear"], "comparison_docs": 6, "fresh_docs": 4, "warmstart_docs": 3,
        "bootstrap_docs": 3, "valid_docs": 3, "eval_problems": 6, "base_steps": 3, "base_docs": 40,
        "base_worked_share": 0.25, "base_eval_shots": 1, "base_warmup_steps": 1}
THOUGHT_STEP = re.compile(r"\d[+\-*/]\d*[+\-*/]?\d*=\d")   # a clause of the thought grammar, e.g. 8+9=17


def data_prep(root, study, **overrides):
    cfg = config.load(corpus.DataPrepConfig, {"study": study, "run_root": str(root), **DATA, **overrides})
    run = RunDir.open(cfg, "01_data_prep")
    corpus.build_world(run, cfg)
    info = base_model.build(run, cfg)
    run.finish()
    return run, info


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    run_a, info_a = data_prep(root, "a")
    return root, run_a, info_a


def test_a_second_study_reuses_the_base_and_a_changed_parameter_rebuilds_it(studies):
    root, run_a, info_a = studies
    base_dir = root / "base" / info_a["hash"]
    assert info_a["path"] == str(base_dir) and (base_dir / "DONE").exists()
    files = {p: (sha(p), p.stat().st_mtime_ns) for p in [*(base_dir / "model").iterdir(), base_dir / "metrics.jsonl",
                                                         base_dir / "corpus.jsonl"]}
    run_b, info_b = data_prep(root, "b")
    assert info_b["path"] == info_a["path"]
    assert {p: (sha(p), p.stat().st_mtime_ns) for p in files} == files   # nothing retrained or rewritten
    assert [r["built"] for r in read_jsonl(run_a.file("metrics.jsonl")) if r["kind"] == "base"] == [True]
    assert [r["built"] for r in read_jsonl(run_b.file("metrics.jsonl")) if r["kind"] == "base"] == [False]
    again = RunDir.open(run_a.config, "01_data_prep")   # a finished stage 01, re-run: same record, nothing logged
    assert again.already_done and base_model.build(again, run_a.config) == info_a
    assert len([r for r in read_jsonl(run_a.file("metrics.jsonl")) if r["kind"] == "base"]) == 1
    _, info_c = data_prep(root, "c", base_steps=4)
    assert info_c["hash"] != info_a["hash"] and info_c["train"]["step"] == 4
    key = read_json(base_dir / "key.json")
    assert key["tokenizer"] == sha(run_a.file("tokenizer/tokenizer.json"))
    assert read_json(base_dir / "run.json")["train"]["steps"] == 3


def test_a_rebuilt_tokenizer_gives_another_base(studies, tmp_path):
    _, run_a, info_a = studies
    tok = tmp_path / "tokenizer"
    shutil.copytree(run_a.file("tokenizer"), tok)
    assert base_model.key_hash(base_model.base_key(run_a.config, tok)) == info_a["hash"]
    (tok / "tokenizer.json").write_text((tok / "tokenizer.json").read_text() + "\n")
    assert base_model.key_hash(base_model.base_key(run_a.config, tok)) != info_a["hash"]


def test_stage_01_reports_the_base_models_accuracy_per_family(studies):
    _, run_a, info_a = studies
    ev = info_a["eval"]
    assert set(ev) >= {"accuracy", "accuracy/addition", "accuracy/linear"} and ev["problems"] == 6
    logged = [r for r in read_jsonl(run_a.file("metrics.jsonl")) if r["kind"] == "base"][0]
    assert logged["accuracy/addition"] == ev["accuracy/addition"] and logged["hash"] == info_a["hash"]
    assert "base.json" in read_json(run_a.file("manifest.json"))["artifacts"]


def test_the_base_corpus_honours_the_worked_share_and_its_split(studies):
    root, run_a, info_a = studies
    recs = read_jsonl(root / "base" / info_a["hash"] / "corpus.jsonl")
    assert len(recs) == 40 and sum(r["worked"] for r in recs) == round(0.25 * 40)
    assert info_a["corpus"]["worked_docs"] == 10 and 0 < info_a["corpus"]["worked_token_share"] < 1
    base_uids = {u for r in recs for u in r["uids"]}
    assert all(world.split_of(u) == "base" for u in base_uids)
    study_uids = {u.uid for s in corpus.DOC_SPLITS for d in corpus.load_documents(run_a.path, s) for u in d.units}
    study_uids |= {p["uid"] for p in read_jsonl(run_a.file("eval_problems.jsonl"))}
    assert study_uids and not base_uids & study_uids
    none = generate_base_documents(30, mix=difficulty_mix(["addition"]), worked_share=0.0, seed=0)
    assert not any(d.worked for d in none)


def test_worked_text_shows_every_step_but_not_in_the_thought_format():
    mix = difficulty_mix(list(world.FAMILIES))
    assert mix["addition"] == (1, 2, 3, 4) and mix["linear"] == (1, 2)   # 1 up to the default difficulty + 1
    docs = generate_base_documents(200, mix=mix, worked_share=0.5, seed=1)
    worked = [d for d in docs if d.worked]
    assert len(worked) == 100 and {u.family for d in worked for u in d.doc.units} == set(world.FAMILIES)
    for d in worked:
        (unit,) = d.doc.units
        prose = working_prose(unit)
        assert d.text == render_worked_unit(unit) == f"Problem: {unit.question} Solution: {prose} Answer: {unit.answer}.\n"
        assert "=" not in prose and not THOUGHT_STEP.search(prose) and unit.thought not in d.text
        results = re.findall(r"=(-?\d+)", unit.thought)
        assert all(re.search(rf"\b{r}\b", prose) for r in results), (unit.thought, prose)
    raw = [d for d in docs if not d.worked]
    assert all(d.text == d.doc.text and "Solution:" not in d.text for d in raw)


def test_every_stage_starts_from_the_base(studies):
    root, run_a, info_a = studies
    model_dir = info_a["model"]
    common = {"study": "a", "run_root": str(root), "init": "base"}
    cfg2 = config.load(synthetic_thoughts.SyntheticThoughtsConfig, {**common, "arms": ["raw_repeat", "latent_thoughts"],
                                                           "seeds": [0, 1], "steps": 2, "eval_every": 2})
    run2 = RunDir.open(cfg2, "02_synthetic_thoughts")
    jobs = synthetic_thoughts.make_jobs(run2, cfg2, run_a.path, progress=False)
    assert len(jobs) == 4 and all(j.model.init_from == model_dir for j in jobs)
    cfg3 = config.load(bootstrap_em.BootstrapConfig, {**common, "seeds": [0, 1], "steps": 2, "warmstart_steps": 2})
    st = bootstrap_em.Study(RunDir.open(cfg3, "03_bootstrap_em"), cfg3)
    em_jobs = [st.job_of(r) for r in em_plan.warmstarts(cfg3)] + [st.job("raw_flop_match", st.raw_corpus("bootstrap"), "raw", 2, 0),
                                     st.job("iter1", st.raw_corpus("bootstrap"), "random", 2, 1)]
    assert all(j.model.init_from == model_dir for j in em_jobs)
    # a run records the base it continued, and starts from exactly its weights
    from lt_utils.model import build_model, load_model
    from lt_utils.tokens import load_tokenizer
    from lt_utils.train import run_train_job

    job = jobs[0]
    run_train_job(job)
    assert read_json(f"{job.out_dir}/run.json")["model"]["init_from"] == model_dir
    start = build_model(job.model, load_tokenizer(job.tokenizer_dir), seed=job.seed).state_dict()
    base = load_model(model_dir).state_dict()
    assert start.keys() == base.keys() and all(torch.equal(start[k], base[k]) for k in base)
    # scratch keeps the random init
    scratch = config.load(synthetic_thoughts.SyntheticThoughtsConfig, {**common, "init": "scratch"})
    assert base_model.stage_model_spec(scratch, run_a.path).init_from == ""


def test_init_base_checks_its_inputs(studies, tmp_path):
    root, run_a, _ = studies
    wide = config.load(synthetic_thoughts.SyntheticThoughtsConfig, {"study": "a", "run_root": str(root), "init": "base",
                                                           "n_layer": 3})
    with pytest.raises(ConfigError, match="n_layer is 3 here but 2 in the base model"):
        base_model.stage_model_spec(wide, run_a.path)
    nobase = tmp_path / "nobase"
    nobase.mkdir()
    with pytest.raises(FileNotFoundError, match="set base_steps > 0"):
        base_model.stage_model_spec(config.load(bootstrap_em.BootstrapConfig, {"init": "base"}), nobase)
    bad = [({"init": "pretrained"}, "init must be scratch or base"),
           ({"init": "base", "init_from": "some/model"}, "init_from must then be empty")]
    for params, msg in bad:
        with pytest.raises(ConfigError, match=msg):
            config.load(synthetic_thoughts.SyntheticThoughtsConfig, params)
    for params, msg in [({"base_worked_share": 1.5}, "base_worked_share"),
                        ({"base_families": ["calculus"]}, "calculus"),
                        ({"base_difficulty": {"linear": [9]}}, "base_difficulty.linear"),
                        ({"study": "base"}, "study must not be 'base'")]:
        with pytest.raises(ConfigError, match=msg):
            config.load(corpus.DataPrepConfig, params)


def test_base_parameters_left_at_their_defaults_keep_old_run_identities():
    """Stage 01 / 02 / 03 runs made before the base model existed keep their hashes (no base, init scratch)."""
    import dataclasses

    def without(cls, drop):
        kept = [(f.name, f.type, f) for f in dataclasses.fields(cls) if not drop(f.name)]
        return dataclasses.make_dataclass("Old" + cls.__name__, kept, frozen=True)

    params = {"study": "x", "families": ["addition", "linear"]}
    plain = config.load(corpus.DataPrepConfig, params)
    old = without(corpus.DataPrepConfig, lambda n: n.startswith("base_"))(**params)
    assert config.config_hash(plain) == config.config_hash(old)
    assert config.config_hash(config.load(corpus.DataPrepConfig, {**params, "base_steps": 5})) != \
        config.config_hash(plain)
    scratch = config.load(synthetic_thoughts.SyntheticThoughtsConfig, {"study": "x", "init": "scratch"})
    old2 = without(synthetic_thoughts.SyntheticThoughtsConfig, lambda n: n == "init")(study="x")
    assert config.config_hash(scratch) == config.config_hash(old2)
    assert config.config_hash(config.load(synthetic_thoughts.SyntheticThoughtsConfig, {"study": "x", "init": "base"})) != \
        config.config_hash(scratch)
