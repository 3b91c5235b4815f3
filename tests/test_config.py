"""Parameters fail fast, with one line naming the key or path."""

import re

from dataclasses import dataclass, field

import pytest
import yaml

from lt_utils.runtime import config

from lt_utils.cli import pipeline
from lt_utils.runtime.config import ConfigError, require
from lt_utils.runtime.paths import PARAMS_DIR


@dataclass(frozen=True)
class Toy:
    name: str
    steps: int = 10
    lr: float = 1e-3
    flag: bool = False
    seeds: list[int] = field(default_factory=lambda: [0])
    difficulty: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        require(self.steps > 0, f"steps must be > 0, got {self.steps}")


def test_valid_params_give_frozen_config():
    cfg = config.load(Toy, {"name": "a", "lr": 1, "seeds": [1, 2], "difficulty": {"addition": 3}})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.seeds == (1, 2)
    with pytest.raises(Exception):
        cfg.steps = 3  # frozen


@pytest.mark.parametrize("params, needle", [
    ({"name": "a", "stpes": 3}, "unknown parameter 'stpes'"),
    ({"name": "a", "steps": "3"}, "parameter 'steps' must be int"),
    ({"name": "a", "steps": True}, "parameter 'steps' must be int"),
    ({"name": "a", "flag": 1}, "parameter 'flag' must be bool"),
    ({"name": "a", "seeds": [0, "1"]}, "parameter 'seeds'"),
    ({"name": "a", "difficulty": {"addition": "hard"}}, "parameter 'difficulty'"),
    ({}, "missing required parameter 'name'"),
    ({"name": "a", "steps": 0}, "steps must be > 0"),
])
def test_bad_params_fail_with_one_line_naming_the_key(params, needle):
    with pytest.raises(ConfigError) as err:
        config.load(Toy, params)
    msg = str(err.value)
    assert needle in msg
    assert "\n" not in msg


def test_missing_params_file_names_the_path(tmp_path):
    with pytest.raises(ConfigError, match="params file not found: .*nope.yaml"):
        config.load_yaml(Toy, tmp_path / "nope.yaml")


def test_config_hash_ignores_where_and_how_fast():
    a = config.load(Toy, {"name": "a"})
    b = config.load(Toy, {"name": "a", "steps": 11})
    assert config.config_hash(a) != config.config_hash(b)

    @dataclass(frozen=True)
    class WithWorkers:
        steps: int = 1
        workers: int = 1
    assert config.config_hash(WithWorkers(1, 1)) == config.config_hash(WithWorkers(1, 4))


PROFILES = sorted(p.name for p in PARAMS_DIR.iterdir() if p.is_dir() and pipeline.profile_stages(p.name))


def test_the_shipped_profiles_are_found():
    assert {"smoke", "cpu", "cpu_long", "paper"} <= set(PROFILES)
    assert pipeline.profile_stages("paper") == list(pipeline.STAGES)


@pytest.mark.parametrize("stage, params, needle", [
    ("01_data_prep", {"source": "web"}, "source must be one of world, text"),
    ("01_data_prep", {"source": "text", "tokenizer_from": "t", "comparison_tokens": 1}, "text_source:"),
    ("01_data_prep", {"source": "text", "text_source": "d", "comparison_tokens": 1}, "tokenizer_from:"),
    ("01_data_prep", {"source": "text", "text_source": "d", "tokenizer_from": "t"}, "comparison_tokens must be > 0"),
    ("01_data_prep", {"source": "text", "text_source": "d", "tokenizer_from": "t", "comparison_tokens": 1,
                      "split_specs": {"val": "3:1:10"}}, "split_specs.val: bad slice_spec"),
    ("01_data_prep", {"source": "text", "text_source": "d", "tokenizer_from": "t", "comparison_tokens": 1,
                      "split_specs": {"test": "0:1:2"}}, "split_specs: unknown split 'test'"),
    ("02_synthetic_thoughts", {"teacher": "gpt"}, "teacher: unknown teacher 'gpt'"),
    ("02_synthetic_thoughts", {"teacher": "api", "teacher_options": {"modle": "x"}},
     "teacher_options: unknown option 'modle' for the api teacher"),
    ("02_synthetic_thoughts", {"teacher": "api", "teacher_sweep": [0.3]}, "degrade the oracle teacher only"),
    ("02_synthetic_thoughts", {"grad_accum": 0}, "grad_accum must be ≥ 1"),
    ("02_synthetic_thoughts", {"eval_samples": 4}, "eval_samples > 1 needs eval_temperature > 0"),
    ("03_bootstrap_em", {"estep_backend": "sglang"}, "estep_backend must be transformers or vllm"),
])
def test_paper_scale_parameters_fail_with_one_line(stage, params, needle):
    with pytest.raises(ConfigError) as err:
        config.load(pipeline.stage_config_class(stage), params)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_configs_made_before_a_field_existed_keep_their_hash():
    """A field added later is hashed only when set, so finished runs of the CPU study stay valid."""
    from lt_utils.stages.synthetic_thoughts import SyntheticThoughtsConfig

    plain = config.load(SyntheticThoughtsConfig, {})
    d = {k: v for k, v in config.to_dict(plain).items() if k not in config.NON_RESULT_FIELDS}
    legacy = {k: v for k, v in d.items() if k not in config.HASHED_WHEN_SET}
    import hashlib
    import json

    assert config.config_hash(plain) == hashlib.sha256(json.dumps(legacy, sort_keys=True).encode()).hexdigest()[:16]
    assert config.config_hash(config.load(SyntheticThoughtsConfig, {"grad_accum": 2})) != config.config_hash(plain)


@pytest.mark.parametrize("profile", PROFILES)
def test_every_params_file_loads_into_its_stage_config(profile):
    files = sorted((PARAMS_DIR / profile).glob("*.yaml"))
    assert files, f"params/{profile} is empty"
    for f in files:
        cls = pipeline.stage_config_class(f.stem)
        cfg = config.load_yaml(cls, f)
        assert cfg.study


def test_pipeline_rejects_unknown_key_before_running(tmp_path, monkeypatch, capsys):
    prof = tmp_path / "bad"
    prof.mkdir()
    for stage in pipeline.profile_stages("smoke"):
        data = yaml.safe_load((PARAMS_DIR / "smoke" / f"{stage}.yaml").read_text())
        if stage == "02_synthetic_thoughts":
            data["learning_rate"] = 0.1
        (prof / f"{stage}.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setattr(pipeline, "PARAMS_DIR", tmp_path)
    rc = pipeline.main(["--profile", "bad", "--run-root", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert "unknown parameter 'learning_rate'" in err and "02_synthetic_thoughts.yaml" in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()  # nothing ran


def test_pipeline_unknown_profile(capsys):
    assert pipeline.main(["--profile", "no_such_profile"]) == 2
    assert "unknown profile 'no_such_profile'" in capsys.readouterr().err


# --------------------------------------------------------------------------- every field of every stage, swept
def _wrong_type(annotation):
    """A value no field of this annotation accepts."""
    import typing

    origin = typing.get_origin(annotation) or annotation
    return {str: 3, int: "3", float: "0.5", bool: "yes", list: 5, tuple: 5, dict: [1]}[origin]


# A value outside each field's range.  Fields in UNBOUNDED take any value of their type (names, paths,
# free-form options); every field must be in exactly one of the two, so a new field has to decide.
OUT_OF_RANGE = {
    "study": "", "seed": -1, "families": ["no_such_family"], "difficulty": {"no_such_family": 1},
    "units_per_doc_min": 0, "units_per_doc_max": 0, "comparison_docs": 0, "fresh_docs": -1, "warmstart_docs": -1,
    "bootstrap_docs": -1, "valid_docs": 0, "eval_problems": 0, "vocab_size": 100, "source": "web",
    "split_specs": {"test": "0:1:2"}, "comparison_tokens": -1, "fresh_tokens": -1, "bootstrap_tokens": -1,
    # training parameters shared by stages 02 and 03
    "n_layer": 0, "n_embd": 0, "n_head": 0, "n_kv_head": 0, "intermediate_size": 0, "init_std": 0.0,
    "batch_size": 0, "grad_accum": 0, "seq_len": 0, "lr": 1.5, "min_lr_ratio": 1.5, "warmup_steps": -1,
    "weight_decay": -0.1, "grad_clip": -1.0, "eval_every": 0, "max_eval_problems": -1, "eval_shots": -1,
    "eval_max_new_tokens": -1, "eval_max_prompt_tokens": -1, "eval_samples": 0, "eval_temperature": -1.0,
    "workers": -1, "threads_per_worker": 0, "keep_checkpoints": "some",
    # stage 02
    "arms": ["no_such_arm"], "seeds": [-1], "teacher": "gpt", "teacher_options": {"model": "x"},
    "chunk_mean_units": 0.5, "chunk_max_units": 0, "prefix_chunks": -1, "teacher_error_rate": 1.5,
    "teacher_drop_rate": 1.5, "teacher_sweep": [0.0], "wrap_orig_repeats": 0, "wrap_cot_repeats": 0,
    "rewrite_seed": -1, "steps": 0, "arm_seeds": {"no_such_arm": [0]},
    # stage 03
    "iterations": 0, "middle_iteration_seeds": [7], "k": 0, "k_ablation": [0], "max_thought_tokens": 0, "estep_batch_chunks": 0, "elbo_k": 0,
    "baselines": ["no_such_baseline"], "warmstart_split": "bootstrap", "warmstart_max_docs": -1,
    "warmstart_steps": 0, "max_prefix_tokens": -1, "estep_backend": "sglang", "estep_shards": -1,
    "estep_temperature": 0.0, "estep_seed": -1, "prior_sample_chunks": -1, "no_thought_p": 1.0, "estep_selection": "best", "thought_style": "verbose",
    # evaluation splits and packing
    "dev_problems": -1, "eval_dev_problems": -1, "init": "pretrained",
    # the shared base model (stage 01)
    "base_steps": -1, "base_docs": 0, "base_families": ["no_such_family"], "base_difficulty": {"no_such_family": [1]},
    "base_worked_share": 1.5, "base_n_layer": 0, "base_n_embd": 0, "base_n_head": 0, "base_n_kv_head": 0,
    "base_intermediate_size": 0, "base_batch_size": 0, "base_seq_len": 0, "base_lr": 0.0, "base_min_lr_ratio": 1.5,
    "base_warmup_steps": -1, "base_weight_decay": -0.1, "base_init_std": 0.0, "base_eval_shots": -1,
    "base_threads": 0,
}
UNBOUNDED = {"run_root", "overwrite", "text_source", "text_field", "id_field", "tokenizer_from", "math_eval_path",
             "gsm8k_eval_path", "tie_embeddings", "init_from", "attend_across_docs", "launcher", "data_stage",
             "warmstart_thoughts_stage", "vllm_engine_args", "figures_dir", "headline_arm", "baseline_arm",
             "comparison_baselines", "ban_special_in_thought", "cut_at_chunks", "base_tie_embeddings",
             "k_ablation_train", "estep_memory"}


def _fields():
    import dataclasses
    import typing

    for stage in pipeline.STAGES:
        cls = pipeline.stage_config_class(stage)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            yield stage, cls, f.name, hints[f.name]


SWEEP = list(_fields())


def _one_line_naming(cls, params, key):
    with pytest.raises(ConfigError) as err:
        config.load(cls, params)
    msg = str(err.value)
    assert re.search(rf"(?<![\w']){re.escape(key)}(?![\w'])", msg), msg   # the key as a word
    assert "\n" not in msg, msg
    return msg


def test_every_field_has_a_range_or_is_declared_unbounded():
    names = {name for _, _, name, _ in SWEEP}
    assert names - OUT_OF_RANGE.keys() - UNBOUNDED == set()
    assert OUT_OF_RANGE.keys() & UNBOUNDED == set()
    assert (OUT_OF_RANGE.keys() | UNBOUNDED) - names == set()   # no stale entries


@pytest.mark.parametrize("stage, cls, name, annotation", SWEEP, ids=[f"{s}.{n}" for s, _, n, _ in SWEEP])
def test_sweep_wrong_type_out_of_range_and_unknown_key(stage, cls, name, annotation):
    msg = _one_line_naming(cls, {name: _wrong_type(annotation)}, f"parameter '{name}'")
    assert "must be" in msg
    _one_line_naming(cls, {name + "_x": 1}, f"unknown parameter '{name}_x'")
    if name in OUT_OF_RANGE:
        _one_line_naming(cls, {name: OUT_OF_RANGE[name]}, name)
    else:
        config.load(cls, {name: config.to_dict(cls())[name]})   # its default loads
