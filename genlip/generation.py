"""Caption generation for a GenLIP model: the encoder "speaks", greedy or sampled, with a KV cache.

Each sample is ``[image tokens] + prompt``; samples of different grid sizes are left-padded into one batch (their
positions restart per sample, so padding changes nothing). Decoding stops at EOS or after ``max_new_tokens``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from genlip.attention import MaskPlan
from genlip.image import patchify
from genlip.masks import Layout
from genlip.positions import sample_position_ids

DEFAULT_PROMPT = "Describe the image in detail."


def _pick(logits: torch.Tensor, do_sample: bool, temperature: float, top_k: int, top_p: float,
          generator: torch.Generator | None) -> torch.Tensor:
    logits = logits.float()
    if not do_sample or temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cum - sorted_logits.softmax(dim=-1) > top_p  # keep the smallest prefix reaching top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


def _prefill_batch(model, images, prompt_ids: Sequence[int]):
    """Left-padded input ids, patches and layout of ``[image] + prompt`` for every sample."""
    P = model.config.patch_size
    if isinstance(images, torch.Tensor) and images.dim() == 4:
        images = list(images)
    per = [patchify(img, P) for img in images]
    n_prompt = len(prompt_ids)
    lens = [p.shape[0] + n_prompt for p, _ in per]
    L = max(lens)
    B = len(per)
    ids = torch.zeros(B, L, dtype=torch.long)
    sids = torch.full((B, L), -1, dtype=torch.long)
    iids = torch.full((B, L), -1, dtype=torch.long)
    pos = torch.zeros(3, B, L, dtype=torch.long)
    next_pos = []
    for b, ((patches, grid), n) in enumerate(zip(per, lens)):
        s = L - n
        n_img = patches.shape[0]
        sids[b, s:] = 0
        iids[b, s:s + n_img] = 0
        ids[b, s + n_img:] = torch.tensor(list(prompt_ids), dtype=torch.long)
        pos[:, b, s:] = sample_position_ids([("image", grid), ("text", n_prompt)])
        next_pos.append(max(grid) + n_prompt)
    patches = torch.cat([p for p, _ in per])
    return ids, patches, Layout(sids, iids, pos), torch.tensor(next_pos)


@torch.no_grad()
def generate(model, images, prompt_ids: Sequence[int], max_new_tokens: int = 256,
             eos_token_id: int | Sequence[int] | None = None, do_sample: bool = False, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, use_cache: bool = True, generator: torch.Generator | None = None,
             attn_backend: str | None = None) -> list[list[int]]:
    """Generate text for each image. ``images``: ``(B, C, H, W)`` or a list of ``(C, H_i, W_i)`` (sizes multiple of
    the patch size, already normalised). Returns the generated token ids of each sample, EOS excluded."""
    eos = model.config.eos_token_id if eos_token_id is None else eos_token_id
    eos_set = set([eos] if isinstance(eos, int) else (eos or []))
    device = model.lm_head.weight.device
    dtype = model.lm_head.weight.dtype
    ids, patches, layout, next_pos = _prefill_batch(model, images, prompt_ids)
    ids, patches, layout, next_pos = ids.to(device), patches.to(device, dtype), layout.to(device), next_pos.to(device)
    B = ids.shape[0]
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    out: list[list[int]] = [[] for _ in range(B)]
    fill = next(iter(eos_set)) if eos_set else 0

    def step_logits(h, lay, plan, caches):
        hidden, _ = model.vit(h, lay, plan, caches=caches)
        return model.lm_head(model.head_input(hidden[:, -1]))

    h, layout, _ = model.build_inputs(ids, patches, layout=layout)
    caches = [[] for _ in model.vit.blocks] if use_cache else None
    logits = step_logits(h, layout, model.vit.plan(layout, attn_backend), caches)
    key_valid = ~layout.is_pad
    for _ in range(max_new_tokens):
        tok = _pick(logits, do_sample, temperature, top_k, top_p, generator)
        tok = torch.where(finished, torch.full_like(tok, fill), tok)
        for b in range(B):
            if not finished[b] and int(tok[b]) not in eos_set:
                out[b].append(int(tok[b]))
        finished |= torch.tensor([int(t) in eos_set for t in tok], device=device)
        if bool(finished.all()):
            break
        new_pos = next_pos.view(1, B, 1).expand(3, B, 1)
        next_pos = next_pos + 1
        if use_cache:
            step = Layout(torch.zeros(B, 1, dtype=torch.long, device=device),
                          torch.full((B, 1), -1, dtype=torch.long, device=device), new_pos)
            key_valid = torch.cat([key_valid, torch.ones(B, 1, dtype=torch.bool, device=device)], dim=1)
            logits = step_logits(model.embed_text(tok[:, None]), step, MaskPlan(key_valid[:, None, None, :]), caches)
        else:
            ids = torch.cat([ids, tok[:, None]], dim=1)
            layout = Layout(torch.cat([layout.sample_ids, torch.zeros_like(tok)[:, None]], dim=1),
                            torch.cat([layout.image_ids, torch.full_like(tok, -1)[:, None]], dim=1),
                            torch.cat([layout.position_ids, new_pos], dim=2))
            h, layout, _ = model.build_inputs(ids, patches, layout=layout)
            logits = step_logits(h, layout, model.vit.plan(layout, attn_backend), None)
    return out
