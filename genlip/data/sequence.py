"""The GenLIP text sequence: ``prompt`` (no loss) + ``caption`` + EOS (supervised).

EOS is ``<|im_end|>`` followed by a newline token, as the release does with the Qwen tokenizer. No BOS and no
vision start/end markers.
"""

from __future__ import annotations

import torch

from genlip.data.decode import SkipSample
from genlip.generation import DEFAULT_PROMPT
from genlip.loss import IGNORE_INDEX

__all__ = ["DEFAULT_PROMPT", "CaptionEncoder", "collate_fixed"]


class CaptionEncoder:
    """Turns a caption into ``(input_ids, labels)``. ``max_caption_tokens=None`` keeps every caption whole (the
    paper's stage 1); otherwise longer captions are cut, and :meth:`encode` says when it cut one."""

    def __init__(self, tokenizer, prompt: str = DEFAULT_PROMPT, max_caption_tokens: int | None = 128,
                 eos: str = "<|im_end|>\n") -> None:
        self.tokenizer = tokenizer
        self.prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids if prompt else []
        self.eos_ids = tokenizer(eos, add_special_tokens=False).input_ids
        if not self.eos_ids or self.eos_ids[0] != tokenizer.convert_tokens_to_ids("<|im_end|>"):
            raise ValueError("the tokenizer has no <|im_end|> special token; add it (GenLIP's EOS) before training")
        self.max_caption_tokens = max_caption_tokens
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def __call__(self, caption: str) -> tuple[torch.Tensor, torch.Tensor]:
        ids, labels, _ = self.encode(caption)
        return ids, labels

    def encode(self, caption: str, room: int | None = None) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """``(input_ids, labels, cut)``: the caption cut to ``max_caption_tokens`` and to ``room`` tokens (what is
        left of a packed row), whichever is smaller; ``cut`` tells whether anything was cut."""
        limits = [n for n in (self.max_caption_tokens, room) if n is not None]
        limit = min(limits) if limits else None
        # cut absurdly long strings before tokenizing them (a token is rarely longer than 16 characters)
        text = caption if limit is None else caption[: limit * 16]
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        cut = len(text) < len(caption) or (limit is not None and len(ids) > limit)
        ids = ids if limit is None else ids[:limit]
        if not ids:
            raise SkipSample("empty_caption" if not cut else "too_long_for_row", "no tokens")
        seq = self.prompt_ids + ids + self.eos_ids
        labels = [IGNORE_INDEX] * len(self.prompt_ids) + ids + self.eos_ids
        return torch.tensor(seq), torch.tensor(labels), cut


def collate_fixed(examples: list[dict], pad_id: int, pad_to_multiple: int = 8) -> dict:
    """Stage-1 batch: stacked images, right-padded text with its mask, labels ``-100`` on prompt and padding."""
    T = max(e["input_ids"].numel() for e in examples)
    T = (T + pad_to_multiple - 1) // pad_to_multiple * pad_to_multiple
    B = len(examples)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.long)
    for i, e in enumerate(examples):
        n = e["input_ids"].numel()
        ids[i, :n], labels[i, :n], mask[i, :n] = e["input_ids"], e["labels"], 1
    return {"pixel_values": torch.stack([e["pixel_values"] for e in examples]), "input_ids": ids,
            "attention_mask": mask, "labels": labels}
