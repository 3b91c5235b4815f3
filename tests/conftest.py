"""Shared fixtures: a toy corpus, a tokenizer trained on it and a tiny Llama (all built in seconds on CPU)."""

from __future__ import annotations

import random

import pytest
import torch

from lt_utils.data import ThoughtDoc


def toy_docs(n: int = 40, seed: int = 0) -> list[ThoughtDoc]:
    """Addition worksheets in the world's text format, with simple thoughts (independent of lt_utils.world)."""
    r = random.Random(seed)
    docs = []
    for i in range(n):
        units = []
        for _ in range(r.randint(2, 4)):
            a, b = r.randint(100, 999), r.randint(100, 999)
            units.append((f"{a} + {b}", str(a + b), f"{a % 10}+{b % 10}={a % 10 + b % 10}. so {a + b}."))
        head = f"Problem: {units[0][0]} Answer:"
        suffixes = [f" {ans}.\n" + (f"Problem: {units[j + 1][0]} Answer:" if j + 1 < len(units) else "")
                    for j, (_, ans, _) in enumerate(units)]
        docs.append(ThoughtDoc(f"toy-{i}", head, suffixes, [u[2] for u in units]))
    return docs


@pytest.fixture(scope="session")
def docs():
    return toy_docs()


@pytest.fixture(scope="session")
def tokenizer(docs, tmp_path_factory):
    from lt_utils.tokens import load_tokenizer, train_tokenizer

    tok = train_tokenizer([d.text for d in docs] + [t for d in docs for t in d.thoughts], vocab_size=300)
    path = tmp_path_factory.mktemp("tok") / "tokenizer"
    tok.save_pretrained(str(path))
    return load_tokenizer(path)


@pytest.fixture(scope="session")
def tokenizer_dir(tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("tokdir") / "tokenizer"
    tokenizer.save_pretrained(str(path))
    return path


@pytest.fixture()
def tiny_model(tokenizer):
    from lt_utils.model import ModelSpec, build_model

    torch.set_num_threads(1)
    return build_model(ModelSpec(n_layer=2, n_embd=32, n_head=4, n_kv_head=2, intermediate_size=64,
                                 max_seq_len=256), tokenizer, seed=0).eval()
