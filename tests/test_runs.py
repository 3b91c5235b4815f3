"""Run directories describe themselves, skip finished work and never hold half-written files."""

import json
import os
import shutil
from dataclasses import dataclass

import pytest

from lt_utils.runtime import runs
from lt_utils.runtime.config import ConfigError
from lt_utils.runtime.runs import MissingInputError, RunDir


@dataclass(frozen=True)
class Cfg:
    study: str = "t"
    run_root: str = ""
    steps: int = 1
    overwrite: bool = False


def open_run(root, **kw):
    return RunDir.open(Cfg(run_root=str(root), **kw), "01_stage")


def test_run_dir_records_config_env_metrics_manifest_done(tmp_path):
    run = open_run(tmp_path)
    assert run.path == tmp_path / "t" / "01_stage"
    assert (run.path / "config.yaml").read_text().startswith("study: t")
    env = json.loads((run.path / "env.json").read_text())
    assert {"python", "torch", "git_sha", "device"} <= set(env)
    run.log(step=1, loss=2.0)
    runs.write_text(run.file("a.txt"), "hello")
    run.add_artifact("a.txt", "a file")
    run.finish(n=1)
    assert runs.read_jsonl(run.path / "metrics.jsonl")[0]["loss"] == 2.0
    assert json.loads((run.path / "manifest.json").read_text())["artifacts"] == {"a.txt": "a file"}
    assert json.loads((run.path / "DONE").read_text())["config_hash"] == run.config_hash


def test_finished_run_is_reused_and_different_params_refused(tmp_path):
    run = open_run(tmp_path)
    run.finish()
    assert open_run(tmp_path).already_done
    with pytest.raises(ConfigError, match="different parameters"):
        open_run(tmp_path, steps=2)
    runs.write_text(run.file("docs/stale.jsonl"), "from the old parameters")
    again = open_run(tmp_path, steps=2, overwrite=True)
    assert not again.already_done and not (again.path / "DONE").exists()
    assert not (again.path / "docs" / "stale.jsonl").exists()   # nothing of the old run is picked up


def test_interrupted_run_with_different_params_is_refused(tmp_path):
    run = open_run(tmp_path)
    runs.write_text(run.file("partial.txt"), "half done")          # never finished
    assert not open_run(tmp_path).already_done                     # same params: resumed
    with pytest.raises(ConfigError, match="different parameters"):
        open_run(tmp_path, steps=2)
    assert not (open_run(tmp_path, steps=2, overwrite=True).path / "partial.txt").exists()


def test_finish_refuses_a_manifest_with_missing_files(tmp_path):
    run = open_run(tmp_path)
    run.artifacts["ghost.bin"] = "never written"
    with pytest.raises(MissingInputError, match="ghost.bin"):
        run.finish()
    assert not (run.path / "DONE").exists()


def test_require_done_names_the_path(tmp_path):
    with pytest.raises(MissingInputError, match=str(tmp_path / "missing")):
        runs.require_done(tmp_path / "missing")
    (tmp_path / "half").mkdir()
    with pytest.raises(MissingInputError, match="unfinished"):
        runs.require_done(tmp_path / "half")


def test_atomic_write_keeps_old_content_on_crash(tmp_path):
    target = tmp_path / "x.json"
    runs.write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with runs.atomic_path(target) as tmp:
            tmp.write_text('{"v": 2, "trunc')
            raise RuntimeError("crash mid-write")
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_read_jsonl_skips_a_torn_last_line(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"a": 1}\n{"a": 2}\n{"a": ')
    assert runs.read_jsonl(p) == [{"a": 1}, {"a": 2}]


def finished_run(tmp_path, payload=b"0123456789" * 100):
    run = open_run(tmp_path)
    run.file("data").mkdir()
    run.add_artifact("data/x.jsonl", "records").write_bytes(payload)
    run.finish()
    return run


def test_manifest_records_size_and_sha256_and_done_the_footprint(tmp_path):
    run = finished_run(tmp_path)
    rec = json.loads((run.path / "manifest.json").read_text())["files"]["data/x.jsonl"]
    assert rec["bytes"] == 1000 and rec["sha256"] == runs.sha256_file(run.path / "data" / "x.jsonl")
    done = json.loads((run.path / "DONE").read_text())
    assert done["peak_rss_mb"]["process"] > 0 and done["disk_bytes"] >= 1000
    assert runs.read_jsonl(run.path / "metrics.jsonl")[-1]["kind"] == "footprint"
    assert runs.verify_artifacts(run.path) == 0          # untouched: trusted on size + mtime, nothing hashed
    assert runs.require_done(run.path) == run.path


def test_a_reused_stage_keeps_its_footprint_and_logs_it_once(tmp_path):
    run = finished_run(tmp_path)
    first = json.loads((run.path / "DONE").read_text())
    again = open_run(tmp_path)   # same parameters: the finished stage is reopened and finished again
    assert again.already_done
    again.finish()
    log = [r for r in runs.read_jsonl(run.path / "metrics.jsonl") if r["kind"] == "footprint"]
    done = json.loads((run.path / "DONE").read_text())
    assert len(log) == 1
    assert (done["peak_rss_mb"], done["disk_bytes"]) == (first["peak_rss_mb"], first["disk_bytes"])


def test_a_truncated_artifact_stops_the_reader_with_one_line(tmp_path):
    run = finished_run(tmp_path)
    target = run.path / "data" / "x.jsonl"
    target.write_bytes(target.read_bytes()[:500])
    with pytest.raises(runs.DamagedArtifactError) as err:
        runs.require_done(run.path)
    msg = str(err.value)
    assert "\n" not in msg and str(target) in msg and "500 bytes" in msg
    assert "--only 01_stage --overwrite" in msg


def test_a_changed_artifact_of_the_same_size_is_caught_by_its_sha256(tmp_path):
    run = finished_run(tmp_path)
    target = run.path / "data" / "x.jsonl"
    stat = target.stat()
    target.write_bytes(b"X" * 1000)
    with pytest.raises(runs.DamagedArtifactError, match="sha256"):   # new mtime: hashed
        runs.verify_artifacts(run.path)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))         # same size, same mtime: only full catches it
    assert runs.verify_artifacts(run.path) == 0
    with pytest.raises(runs.DamagedArtifactError, match="sha256"):
        runs.verify_artifacts(run.path, full=True)
    target.unlink()
    with pytest.raises(runs.DamagedArtifactError, match="is missing"):
        runs.verify_artifacts(run.path)


def test_a_copied_run_dir_is_hashed_once_and_accepted(tmp_path):
    run = finished_run(tmp_path)
    copy = tmp_path / "copy" / "t" / "01_stage"
    shutil.copytree(run.path, copy)          # new mtimes, same bytes
    os.utime(copy / "data" / "x.jsonl", ns=(1, 1))
    assert runs.verify_artifacts(copy) == 1


def test_iter_jsonl_names_the_broken_line(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"a": 1}\n{"a": ')
    with pytest.raises(runs.DamagedArtifactError, match=r"m.jsonl:2: not a JSON record"):
        list(runs.iter_jsonl(p))


def test_a_training_run_metrics_file_is_checked_like_any_artifact(tmp_path):
    # the analysis reads every training run's metrics.jsonl: a truncated one must stop it with one line
    run = open_run(tmp_path)
    out = run.path / "train" / "raw_repeat" / "seed0"
    out.mkdir(parents=True)
    for name in ("run.json", "final.json"):
        (out / name).write_text("{}\n")
    (out / "metrics.jsonl").write_text("".join(json.dumps({"step": i, "loss": 1.0 / (i + 1)}) + "\n" for i in range(50)))
    run.add_training_runs([out, tmp_path / "elsewhere"])   # a run outside the stage is not registered
    run.finish()
    assert set(json.loads((run.path / "manifest.json").read_text())["files"]) == {
        "train/raw_repeat/seed0/run.json", "train/raw_repeat/seed0/final.json", "train/raw_repeat/seed0/metrics.jsonl"}
    metrics = out / "metrics.jsonl"
    metrics.write_bytes(metrics.read_bytes()[:100])
    with pytest.raises(runs.DamagedArtifactError) as err:
        runs.require_done(run.path)
    assert "\n" not in str(err.value) and str(metrics) in str(err.value)
