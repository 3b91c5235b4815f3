"""Strict, typed stage parameters.

Every notebook starts from a flat dict of literals (its `parameters` cell or a
papermill YAML).  `load` turns that dict into a frozen dataclass *before any
work is done*, so a typo, a wrong type or a bad value fails at once with one
line naming the key -- not half an hour later inside a training run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

T = TypeVar("T")

# Fields that say *where* or *how fast* a stage runs, not *what* it computes:
# changing them must not invalidate a finished run.
NON_RESULT_FIELDS = frozenset({"overwrite", "run_root", "workers", "threads_per_worker", "figures_dir", "progress",
                               "launcher", "estep_shards", "base_threads",
                               "keep_checkpoints"})
# Fields added after runs of the CPU study were made: hashed only when set to something other than their
# default, so a run made before a field existed keeps its identity.
HASHED_WHEN_SET = frozenset({
    "source", "text_source", "text_field", "id_field", "split_specs", "comparison_tokens", "fresh_tokens",
    "bootstrap_tokens", "tokenizer_from", "math_eval_path", "gsm8k_eval_path",
    "teacher_options", "grad_accum", "eval_max_new_tokens", "eval_max_prompt_tokens", "eval_samples",
    "eval_temperature", "warmstart_thoughts_stage", "estep_selection", "estep_seed", "estep_backend", "vllm_engine_args", "max_prefix_tokens",
    "init", "base_steps", "base_docs", "base_families", "base_difficulty", "base_worked_share", "base_n_layer",
    "base_n_embd", "base_n_head", "base_n_kv_head", "base_intermediate_size", "base_tie_embeddings", "base_init_std",
    "base_batch_size", "base_seq_len", "base_lr", "base_min_lr_ratio", "base_warmup_steps", "base_weight_decay",
    "base_eval_shots", "k_ablation_train", "thought_style", "estep_memory", "no_thought_p",
    "middle_iteration_seeds", "arm_seeds",
})


class ConfigError(ValueError):
    """A parameter is unknown, missing, mistyped or out of range (message is one line)."""


def _type_ok(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in args)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        inner = args[0] if args else Any
        return all(_type_ok(v, inner) for v in value)
    if origin is dict:
        if not isinstance(value, Mapping):
            return False
        kt, vt = args if args else (Any, Any)
        return all(_type_ok(k, kt) and _type_ok(v, vt) for k, v in value.items())
    return isinstance(value, annotation)


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _coerce(value: Any, annotation: Any) -> Any:
    """Normalise containers so frozen configs hash and compare by value."""
    if typing.get_origin(annotation) in (list, tuple) and isinstance(value, list):
        return tuple(value)
    if annotation is float and isinstance(value, int):
        return float(value)
    if typing.get_origin(annotation) is dict and isinstance(value, Mapping):
        return dict(value)
    return value


def load(cls: type[T], params: Mapping[str, Any], *, where: str | None = None) -> T:
    """Validate `params` against dataclass `cls` and return a frozen instance."""
    where = where or cls.__name__
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = [k for k in params if k not in fields]
    if unknown:
        raise ConfigError(f"{where}: unknown parameter '{unknown[0]}' (known: {', '.join(sorted(fields))})")
    values = {}
    for name, f in fields.items():
        if name in params:
            value = params[name]
        elif f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            value = f.default_factory()  # type: ignore[misc]
        else:
            raise ConfigError(f"{where}: missing required parameter '{name}'")
        if not _type_ok(value, hints[name]):
            raise ConfigError(
                f"{where}: parameter '{name}' must be {_type_name(hints[name])}, got {type(value).__name__} {value!r}"
            )
        values[name] = _coerce(value, hints[name])
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:  # from __post_init__ checks
        raise ConfigError(f"{where}: {exc}") from None


def read_params(path: str | Path) -> dict[str, Any]:
    """The mapping a params file holds (not yet validated); one-line errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}")
    with open(path) as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of parameter names to values")
    return data


def load_yaml(cls: type[T], path: str | Path) -> T:
    return load(cls, read_params(path), where=str(path))


def profile_params(profile: str, stage: str) -> dict[str, Any]:
    """params/<profile>/<stage>.yaml as a dict: what a profile says about one stage."""
    from lt_utils.runtime.paths import PARAMS_DIR

    return read_params(PARAMS_DIR / profile / f"{stage}.yaml")


NOTEBOOK_PROFILE = "smoke"   # what a notebook opened in Jupyter runs: make smoke's stage


def notebook_config(cls: type[T], stage: str, namespace: Mapping[str, Any]) -> T:
    """The config of a notebook's stage, the same whether papermill ran it or a user stepped through it.

    A parameters cell holds only `profile` and `overrides`, so every field comes
    from one place: params/<profile>/<stage>.yaml, then the fields papermill
    injected (the pipeline injects the whole resolved file), then `overrides`;
    anything set nowhere keeps its dataclass default.  Opened in Jupyter with
    the cell's defaults, a notebook is make smoke's stage (same config hash, so
    it reuses that run directory).
    """
    profile = namespace.get("profile") or NOTEBOOK_PROFILE
    params = profile_params(profile, stage)
    names = {f.name for f in dataclasses.fields(cls)}
    params.update({n: namespace[n] for n in names if n in namespace})
    overrides = namespace.get("overrides") or {}
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"overrides must be a dict of parameter names to values, got {type(overrides).__name__}")
    params.update(overrides)
    return load(cls, params, where=f"params/{profile}/{stage}.yaml with the notebook's parameters")


def _plain(v: Any) -> Any:
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def to_dict(cfg: Any) -> dict[str, Any]:
    return {f.name: _plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def config_hash(cfg: Any) -> str:
    """Identity of a stage's *results*: ignores fields that only affect where/how fast it runs."""
    defaults = {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())  # type: ignore[misc]
                for f in dataclasses.fields(cfg)
                if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}  # type: ignore[misc]
    d = {k: v for k, v in to_dict(cfg).items() if k not in NON_RESULT_FIELDS
         and not (k in HASHED_WHEN_SET and k in defaults and v == _plain(defaults[k]))}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def pick(cls: type[T], source: Any, **overrides: Any) -> T:
    """Build sub-config `cls` from the same-named fields of a flat stage config."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {n: getattr(source, n) for n in names if hasattr(source, n)}
    values.update(overrides)
    return cls(**values)


def require(condition: bool, message: str) -> None:
    """Raise a one-line ConfigError from a dataclass's __post_init__."""
    if not condition:
        raise ConfigError(message)


def require_min(cfg: Any, minimum: float, *names: str, strict: bool = False) -> None:
    """Each named field (or every element of a list field) is ≥ `minimum` (> with `strict`); one line naming it."""
    for name in names:
        value = getattr(cfg, name)
        for x in value if isinstance(value, (list, tuple)) else (value,):
            if x < minimum or (strict and x == minimum):
                raise ConfigError(f"{name} must be {'>' if strict else '≥'} {minimum:g}, got {value!r}")


def require_study_name(study: str) -> None:
    """A study name is one directory name under run_root: not empty, no path separator."""
    require(bool(study) and "/" not in study and study not in (".", ".."),
            f"study must be a directory name (not empty, no '/'), got {study!r}")
