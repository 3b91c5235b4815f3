"""Model factory: sizes, HF round trip, and growing a pretrained vocabulary for the latent tokens."""

import torch

from lt_utils.model import ModelSpec, build_model, count_params, load_model, resize_for_tokenizer
from lt_utils.tokens import LATENT_TOKENS, add_latent_tokens


def test_built_model_matches_tokenizer_and_spec(tokenizer):
    m = build_model(ModelSpec(n_layer=2, n_embd=32, n_head=4, n_kv_head=2, intermediate_size=64), tokenizer)
    assert m.config.vocab_size == len(tokenizer)
    assert m.config.num_key_value_heads == 2
    assert count_params(m) < count_params(m, non_embedding=False)


def test_hf_checkpoint_round_trip(tokenizer, tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "ck")
    again = load_model(tmp_path / "ck")
    x = torch.tensor([[0, 5, 6, 7]])
    with torch.no_grad():
        assert torch.allclose(tiny_model(x).logits, again(x).logits)


def test_init_from_checkpoint_adds_rows_for_new_tokens(tokenizer, tiny_model, tmp_path):
    """A 'pretrained' checkpoint whose vocab lacks the latent tokens is grown with truncated-normal rows."""

    small = tiny_model
    small.resize_token_embeddings(len(tokenizer) - 4)  # pretend the checkpoint predates the latent tokens
    small.save_pretrained(tmp_path / "pre")
    old = small.get_input_embeddings().weight.detach().clone()
    tok = load_tokenizer_copy(tokenizer, tmp_path)
    model = build_model(ModelSpec(init_from=str(tmp_path / "pre")), tok, seed=42)
    emb = model.get_input_embeddings().weight.detach()
    assert emb.shape[0] == len(tok)
    assert torch.equal(emb[: old.shape[0]], old)
    new = emb[old.shape[0]:]
    std = emb.shape[1] ** -0.5
    assert new.abs().max() <= 3 * std + 1e-6 and new.std() > 0.3 * std
    assert resize_for_tokenizer(model, tok) == 0  # already large enough


def load_tokenizer_copy(tokenizer, tmp_path):
    from lt_utils.tokens import load_tokenizer

    tokenizer.save_pretrained(str(tmp_path / "tok"))
    tok = load_tokenizer(tmp_path / "tok")
    assert add_latent_tokens(tok) == 0  # already present: nothing added twice
    assert all(t in tok.get_vocab() for t in LATENT_TOKENS)
    return tok
