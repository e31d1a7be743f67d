"""The SigLIP-style baseline: the same ViT trained with a pairwise sigmoid contrastive loss against a text tower.

It exists to compare objectives at equal data and compute (``genlip-pretrain ... model.objective=sigmoid``). The
image side is exactly GenLIP's Transformer (``vit``: patch embedding, gated attention, MRoPE, final LayerNorm) on
image tokens only; its patch features are mean-pooled and projected. The text side is a small bidirectional
Transformer over the caption (the prompt is left out), mean-pooled over its tokens and projected. The loss
(Zhai et al., 2023) over a batch of ``B`` pairs is ``-sum_ij log sigmoid(z_ij (t x_i . y_j + b))`` with ``z_ij = 1``
on matching pairs and ``-1`` elsewhere, ``t = exp(t')`` (``t'`` starts at ``log 10``) and ``b`` starting at ``-10``;
it is normalised by the number of pairs' rows (samples) of the global batch. Negatives come from the rank's own
micro-batch.

Everything that is not the encoder lives under ``contrastive.``, so :class:`~genlip.modeling.GenLIPVisionModel`
(and with it the MLLM harness and the export tools) loads a checkpoint of this model as a plain GenLIP encoder.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from genlip.config import GenLIPConfig
from genlip.loss import IGNORE_INDEX
from genlip.masks import image_only_layout
from genlip.modeling import GenLIPOutput, GenLIPPreTrainedModel, GenLIPTransformer

TEXT_TOWER_DEFAULTS = {"layers": 4, "width": None, "heads": None, "max_len": 128, "embed_dim": None}


def text_tower_spec(config: GenLIPConfig) -> dict:
    spec = {**TEXT_TOWER_DEFAULTS, **(config.text_tower or {})}
    unknown = set(spec) - set(TEXT_TOWER_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown text_tower keys {sorted(unknown)}; known: {sorted(TEXT_TOWER_DEFAULTS)}")
    spec["width"] = spec["width"] or config.hidden_size
    spec["heads"] = spec["heads"] or config.num_attention_heads
    spec["embed_dim"] = spec["embed_dim"] or config.hidden_size
    return spec


class ContrastiveHeads(nn.Module):
    def __init__(self, config: GenLIPConfig) -> None:
        super().__init__()
        s = text_tower_spec(config)
        self.max_len = s["max_len"]
        self.tok = nn.Embedding(config.vocab_size, s["width"])
        self.pos = nn.Embedding(s["max_len"], s["width"])
        layer = nn.TransformerEncoderLayer(s["width"], s["heads"], 4 * s["width"], dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True, layer_norm_eps=config.layer_norm_eps)
        self.text = nn.TransformerEncoder(layer, s["layers"], enable_nested_tensor=False)
        self.text_norm = nn.LayerNorm(s["width"], eps=config.layer_norm_eps)
        self.text_proj = nn.Linear(s["width"], s["embed_dim"])
        self.image_proj = nn.Linear(config.hidden_size, s["embed_dim"])
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.logit_bias = nn.Parameter(torch.tensor(-10.0))


class GenLIPForContrastive(GenLIPPreTrainedModel):
    """GenLIP's ViT + a text tower, trained with the sigmoid loss. Takes the same fixed-resolution batches as
    :class:`~genlip.modeling.GenLIPForCaptioning` (``labels`` mark the caption tokens the text tower reads)."""

    def __init__(self, config: GenLIPConfig) -> None:
        super().__init__(config)
        self.vit = GenLIPTransformer(config)
        self.contrastive = ContrastiveHeads(config)
        self.post_init()
        with torch.no_grad():  # post_init's generic init would reset these scalars
            self.contrastive.logit_scale.fill_(math.log(10.0))
            self.contrastive.logit_bias.fill_(-10.0)

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        h = self.vit.patch_embed(pixel_values.to(self.vit.patch_embed.proj.weight.dtype))
        gh, gw = self.vit.patch_embed.grid(*pixel_values.shape[-2:])
        layout = image_only_layout(pixel_values.shape[0], gh, gw, pixel_values.device)
        hidden, _ = self.vit(h, layout)
        return F.normalize(self.contrastive.image_proj(hidden.mean(dim=1)), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``mask`` marks the tokens to read (``True``); they are moved to the front of each row."""
        c = self.contrastive
        B = input_ids.shape[0]
        n = mask.sum(dim=1)
        if bool((n == 0).any()):
            raise ValueError("a sample has no caption tokens for the text tower")
        L = min(int(n.max()), c.max_len)
        ids = input_ids.new_zeros(B, L)
        valid = torch.zeros(B, L, dtype=torch.bool, device=input_ids.device)
        for b in range(B):
            row = input_ids[b][mask[b]][:L]
            ids[b, : len(row)] = row
            valid[b, : len(row)] = True
        x = c.tok(ids) + c.pos(torch.arange(L, device=ids.device))[None]
        x = c.text_norm(c.text(x, src_key_padding_mask=~valid))
        pooled = (x * valid[..., None]).sum(1) / valid.sum(1, keepdim=True)
        return F.normalize(c.text_proj(pooled), dim=-1)

    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor, attention_mask=None, labels=None,
                num_items_in_batch: int | torch.Tensor | None = None, layout=None, **_ignored) -> GenLIPOutput:
        if layout is not None or pixel_values.dim() != 4:
            raise ValueError("the contrastive baseline trains on fixed-resolution batches (stage 1) only")
        text_mask = (labels != IGNORE_INDEX) if labels is not None else attention_mask.bool()
        img = self.encode_image(pixel_values)
        txt = self.encode_text(input_ids, text_mask)
        c = self.contrastive
        logits = img @ txt.t() * c.logit_scale.exp() + c.logit_bias
        z = 2 * torch.eye(len(img), device=img.device, dtype=logits.dtype) - 1
        loss_sum = -F.logsigmoid(z * logits.float()).sum()
        denom = num_items_in_batch if num_items_in_batch is not None else len(img)
        return GenLIPOutput(loss=loss_sum / denom, loss_sum=loss_sum.detach(), num_supervised=len(img), logits=logits)
