"""`make bench-study`: the study's own E-step redone and checked against the run's records (timings are printed,
never asserted)."""

import pytest
import torch

from test_bootstrap import study  # noqa: F401 (a tiny stage-03 run, a fixture)

from lt_utils.cli import benchmark
from lt_utils.estep import model_fingerprint, run_estep, save_records
from lt_utils.model import ModelSpec, build_model, load_model
from lt_utils.runtime.runs import MissingInputError
from lt_utils.stages import em_estep
from lt_utils.tokens import load_tokenizer


def _warmstart(study):
    torch.set_num_threads(1)
    gen = study.model_dir("warmstart")
    build_model(ModelSpec(n_layer=1, n_embd=16, n_head=2, n_kv_head=2, intermediate_size=32, max_seq_len=512),
                load_tokenizer(study.tok_dir), seed=0).save_pretrained(str(gen))
    return gen


def test_the_study_estep_bench_redoes_iteration_1_and_finds_the_runs_records(study):  # noqa: F811
    gen = _warmstart(study)
    cfg = em_estep.iteration_config(study.cfg, 1)
    records = run_estep(load_model(gen).eval(), load_tokenizer(study.tok_dir), study.boot_chunks, cfg,
                        model_key=model_fingerprint(gen), progress=False)
    save_records(study.run.file("iter1/estep.jsonl"), records)
    out = benchmark.study_estep(study.run.path, old_commit="", threads=1)
    n = len(study.boot_chunks)
    assert (out["chunks"], out["k"]) == (n, cfg.k) and n > 0
    assert out["records_equal_to_the_run"] == f"{n} of {n}"
    assert out["sampled_tokens"] > 0 and out["scored_tokens"] > out["sampled_tokens"]
    assert "old_seconds_1_thread" not in out and out["estep_vs_forward"] > 0
    # a record the run wrote differently is not counted
    save_records(study.run.file("iter1/estep.jsonl"), [{**records[0], "selected": -1}] + records[1:])
    again = benchmark.study_estep(study.run.path, old_commit="0000000", threads=1)
    assert again["records_equal_to_the_run"] == f"{n - 1} of {n}"
    assert again["old_commit"].startswith("0000000: not found") and "old_seconds_1_thread" not in again


def test_the_study_estep_bench_names_the_missing_records(study):  # noqa: F811
    _warmstart(study)
    with pytest.raises(MissingInputError, match="iter1/estep.jsonl"):
        benchmark.study_estep(study.run.path, old_commit="", threads=1)


def test_make_bench_study_without_a_finished_study_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit) as exc:
        benchmark.main(["--study-estep", str(tmp_path / "nowhere")])
    assert str(exc.value).startswith("error: ") and "nowhere" in str(exc.value) and "\n" not in str(exc.value)


def test_make_bench_measures_the_estep_and_the_forward_it_is_read_against(study):  # noqa: F811
    from lt_utils import world

    gen = _warmstart(study)
    docs = world.generate_documents("comparison", 30, families=["addition"], seed=0)[:2]
    out = benchmark.bench_inference(load_model(gen).eval(), load_tokenizer(study.tok_dir), docs, k=2,
                                    max_thought_tokens=4, threads=1, rounds=1, old_commit="")
    assert out["estep_chunks"] == len(benchmark.bench_chunks(docs)) > 0 and out["estep_rows_per_batch"] == 128
    assert out["estep_sampled_tokens"] > 0 and out["estep_scored_tokens"] > out["estep_sampled_tokens"]
    assert out["forward_tokens_per_s"] > 0 and out["estep_tokens_per_s"] > 0 and out["estep_vs_forward"] > 0
    # the page faults behind the forward's reading are counted, per lane's pass and per E-step
    assert all(isinstance(out[k], int) and out[k] >= 0 for k in ("forward_page_faults_per_pass", "estep_page_faults"))
    # the ceiling decoding sets: all of the E-step's tokens in the time its sampled ones take at bare decoding's rate
    ceiling = (out["estep_sampled_tokens"] + out["estep_scored_tokens"]) / out["estep_sampled_tokens"] \
        * out["decode_tokens_per_s"] / out["forward_tokens_per_s"]
    assert out["estep_vs_forward_if_only_sampling"] == pytest.approx(ceiling, rel=0.01, abs=1e-3)
    assert out["decode_vs_forward"] == pytest.approx(out["decode_tokens_per_s"] / out["forward_tokens_per_s"],
                                                     abs=2e-3)
    assert list(out)[-1] == "estep_vs_forward"        # make bench's last line, as the README reads it
    assert "old_commit" not in out
