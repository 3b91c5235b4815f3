"""The study's tokenizer and the paper's four latent-thought special tokens.

A small byte-level BPE is trained on the world's own text with the
`tokenizers` library.  Digits are split one per token (arithmetic is learned
digit by digit) and the byte alphabet is always present, so any text
round-trips.  It is saved as a `PreTrainedTokenizerFast`, so transformers and
vLLM load it like any other checkpoint's tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
# The four tokens of the paper (Ruan et al. 2025): start/end of a latent thought,
# and the prefixes that tell the one network which role it plays.
SOL = "<|START_OF_LATENT|>"
EOL = "<|END_OF_LATENT|>"
PRIOR = "<|PRIOR_PREFIX|>"
POSTERIOR = "<|POSTERIOR_PREFIX|>"
LATENT_TOKENS = (SOL, EOL, PRIOR, POSTERIOR)


@dataclass(frozen=True)
class SpecialIds:
    """Integer ids of the special tokens for one tokenizer (cheap to pass to workers)."""

    bos: int
    eos: int
    pad: int
    sol: int
    eol: int
    prior: int
    posterior: int

    @classmethod
    def of(cls, tokenizer) -> "SpecialIds":
        ids = tokenizer.convert_tokens_to_ids([BOS, EOS, PAD, *LATENT_TOKENS])
        unk = getattr(tokenizer, "unk_token_id", None)
        for name, i in zip((BOS, EOS, PAD, *LATENT_TOKENS), ids):
            if i is None or (unk is not None and i == unk):
                raise ValueError(f"tokenizer lacks special token {name}; call add_latent_tokens first")
        return cls(*ids)

    @property
    def latent(self) -> tuple[int, int, int, int]:
        return (self.sol, self.eol, self.prior, self.posterior)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 384):
    """Train a byte-level BPE (individual digits) on `texts`; returns a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [BOS, EOS, PAD, *LATENT_TOKENS]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        extra_special_tokens=list(LATENT_TOKENS), clean_up_tokenization_spaces=False,
    )


def add_latent_tokens(tokenizer) -> int:
    """Add the four latent tokens (and a pad token if missing) to any HF tokenizer; returns how many were new."""
    added = tokenizer.add_special_tokens({"additional_special_tokens": list(LATENT_TOKENS)},
                                         replace_additional_special_tokens=False) if _accepts_replace(tokenizer) \
        else tokenizer.add_special_tokens({"additional_special_tokens": list(LATENT_TOKENS)})
    if tokenizer.pad_token is None:
        added += tokenizer.add_special_tokens({"pad_token": PAD})
    return added


def _accepts_replace(tokenizer) -> bool:
    import inspect

    return "replace_additional_special_tokens" in inspect.signature(tokenizer.add_special_tokens).parameters


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"tokenizer not found: {path}")
    return AutoTokenizer.from_pretrained(str(path))


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of plain text (no BOS/EOS added): pieces are laid out by the caller."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def newline_ids(tokenizer) -> frozenset[int]:
    """Ids of every token whose text contains a newline (answers end at the first one)."""
    out = set()
    for tok, idx in tokenizer.get_vocab().items():
        if "\n" in tokenizer.convert_tokens_to_string([tok]):
            out.add(idx)
    return frozenset(out)
