"""A small random Qwen2 causal LM with a given tokenizer: the CPU stand-in for Qwen2.5 in demos and tests."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM


def make_tiny_llm(tokenizer_dir: str | Path, out: str | Path, hidden: int = 128, layers: int = 2,
                  seed: int = 0) -> Path:
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=int(math.ceil(len(tok) / 64) * 64), hidden_size=hidden,
                      intermediate_size=hidden * 2, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True,
                      eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"), pad_token_id=tok.pad_token_id)
    Qwen2ForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return Path(out)
