"""Build a tiny Llama from size parameters, or load any HF causal LM, ready for latent thoughts.

Both paths end in a stock `transformers` model with the paper's four special
tokens in its vocabulary, saved in HF format, so the same checkpoint is read
by our sampler, by `AutoModelForCausalLM` and by vLLM without conversion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from lt_utils.runtime.config import require


@dataclass(frozen=True)
class ModelSpec:
    """Size of a model trained from scratch, or `init_from` to start from a checkpoint."""

    n_layer: int = 3                 # transformer blocks
    n_embd: int = 64                 # hidden size
    n_head: int = 4                  # attention heads
    n_kv_head: int = 4               # key/value heads (GQA when < n_head)
    intermediate_size: int = 256     # SwiGLU hidden size
    max_seq_len: int = 256           # RoPE positions the model is built for
    tie_embeddings: bool = True      # tied input/output embeddings (saves params at tiny scale)
    init_std: float = 0.02           # std of the random init (transformers' initializer_range)
    init_from: str = ""              # HF checkpoint path or hub id; "" = random init from the sizes above

    def __post_init__(self):
        require(self.n_embd % self.n_head == 0, f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        require(self.n_head % self.n_kv_head == 0, f"n_head ({self.n_head}) must be divisible by n_kv_head")
        require(self.n_layer > 0 and self.n_embd > 0, "n_layer and n_embd must be positive")


def build_model(spec: ModelSpec, tokenizer, seed: int = 0):
    """A `LlamaForCausalLM` sized by `spec` (or loaded from `spec.init_from`) whose vocab covers `tokenizer`."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    if spec.init_from:
        model = AutoModelForCausalLM.from_pretrained(spec.init_from, dtype=torch.float32)
        resize_for_tokenizer(model, tokenizer, seed=seed)
        return model
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.n_embd,
        num_hidden_layers=spec.n_layer,
        num_attention_heads=spec.n_head,
        num_key_value_heads=spec.n_kv_head,
        intermediate_size=spec.intermediate_size,
        max_position_embeddings=spec.max_seq_len,
        tie_word_embeddings=spec.tie_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        rms_norm_eps=1e-5,
        initializer_range=spec.init_std,
        attn_implementation="sdpa",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    return model


def resize_for_tokenizer(model, tokenizer, seed: int = 42) -> int:
    """Grow the embeddings to the tokenizer's size; new rows ~ N(0, dim^-1/2) truncated at 3σ, as the paper does.

    Returns the number of new rows.  (transformers' own resize would initialise
    them at the mean embedding; the paper's code uses a truncated normal.)
    """
    old = model.get_input_embeddings().weight.shape[0]
    new = len(tokenizer)
    if new <= old:
        return 0
    model.resize_token_embeddings(new, mean_resizing=False)
    dim = model.get_input_embeddings().weight.shape[1]
    gen = torch.Generator().manual_seed(seed)
    std = dim ** -0.5
    with torch.no_grad():
        for emb in {id(e): e for e in (model.get_input_embeddings(), model.get_output_embeddings()) if e is not None}.values():
            rows = torch.empty(new - old, dim)
            torch.nn.init.trunc_normal_(rows, std=std, a=-3 * std, b=3 * std, generator=gen)
            emb.weight[old:new] = rows.to(emb.weight.dtype)
    model.config.vocab_size = new
    return new - old


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"no HF checkpoint at {path} (missing config.json)")
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    return model.to(device).eval()


def count_params(model, non_embedding: bool = True) -> int:
    n = sum(p.numel() for p in model.parameters())
    if non_embedding:
        n -= model.get_input_embeddings().weight.numel()
        out = model.get_output_embeddings()
        if out is not None and out.weight is not model.get_input_embeddings().weight:
            n -= out.weight.numel()
    return n


def flops_per_token(model) -> float:
    """≈ 6·N training FLOPs per token (Kaplan et al.), N = non-embedding params plus the LM head."""
    n = count_params(model, non_embedding=True) + model.get_input_embeddings().weight.numel()
    return 6.0 * n


def nats_to_bits(x: float) -> float:
    return x / math.log(2)
