"""The tokenizer round-trips text with the latent special tokens and splits digits."""

from lt_utils.tokens import (EOL, LATENT_TOKENS, POSTERIOR, PRIOR, SOL, SpecialIds, add_latent_tokens, encode,
                             load_tokenizer, newline_ids)


def test_round_trip_with_special_tokens(tokenizer):
    text = f"Problem: 347 + 586 Answer:{SOL}{PRIOR}7+6=13 c1. so 933.{EOL} 933.\n{SOL}{EOL} x{SOL}{POSTERIOR}z{EOL}"
    ids = encode(tokenizer, text)
    assert tokenizer.decode(ids) == text
    special = SpecialIds.of(tokenizer)
    for tok, i in zip(LATENT_TOKENS, special.latent):
        assert ids.count(i) == text.count(tok)


def test_digits_are_single_tokens(tokenizer):
    ids = encode(tokenizer, "1234567890")
    assert len(ids) == 10
    assert [tokenizer.decode([i]) for i in ids] == list("1234567890")


def test_unseen_characters_still_round_trip(tokenizer):
    text = "Ünïcode ✓ and tabs\tok"
    assert tokenizer.decode(encode(tokenizer, text)) == text


def test_saved_tokenizer_keeps_special_ids(tokenizer, tmp_path):
    tokenizer.save_pretrained(str(tmp_path / "t"))
    again = load_tokenizer(tmp_path / "t")
    assert SpecialIds.of(again) == SpecialIds.of(tokenizer)
    assert again.bos_token == "<s>" and again.eos_token == "</s>" and again.pad_token == "<pad>"


def test_newline_ids_cover_merged_newline_tokens(tokenizer):
    nl = newline_ids(tokenizer)
    ids = encode(tokenizer, " 933.\nProblem")
    assert any(i in nl for i in ids)
    assert not any(i in nl for i in encode(tokenizer, "Problem: 12 + 3"))


def test_add_latent_tokens_to_a_foreign_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    base = Tokenizer(models.WordLevel({"a": 0, "b": 1, "<unk>": 2}, unk_token="<unk>"))
    base.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=base, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    before = len(tok)
    added = add_latent_tokens(tok)
    assert added >= 5  # four latent tokens + pad
    assert len(tok) == before + added
    assert len(set(tok.convert_tokens_to_ids(list(LATENT_TOKENS)))) == 4
    assert tok.pad_token == "<pad>"
