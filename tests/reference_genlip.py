"""A deliberately plain GenLIP forward written from the spec, on a state dict in the *release's* naming.

It shares no code with ``genlip``: positions, the mask and the rotary angles are computed token by token with Python
loops, attention is an explicit softmax. Tests use it as the independent reference for the model and the loader.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def ref_positions(grid_h: int, grid_w: int, n_text: int) -> list[tuple[int, int, int]]:
    pos = [(0, r, c) for r in range(grid_h) for c in range(grid_w)]
    start = max(grid_h, grid_w) if grid_h * grid_w else 0
    pos += [(start + i, start + i, start + i) for i in range(n_text)]
    return pos


def ref_allowed(n_img: int, n_text: int) -> torch.Tensor:
    L = n_img + n_text
    m = torch.zeros(L, L, dtype=torch.bool)
    for q in range(L):
        for k in range(L):
            if q < n_img:
                m[q, k] = k < n_img  # image sees the whole image, never text
            else:
                m[q, k] = k <= q  # text is causal over image and earlier text
    return m


def ref_rope_angles(positions, head_dim: int, section: list[int], theta: float) -> torch.Tensor:
    half = head_dim // 2
    ang = torch.zeros(len(positions), half, dtype=torch.float64)
    for t, (pt, ph, pw) in enumerate(positions):
        for j in range(half):
            freq = theta ** (-2.0 * j / head_dim)
            if j % 3 == 1 and j < 3 * section[1]:
                p = ph
            elif j % 3 == 2 and j < 3 * section[2]:
                p = pw
            else:
                p = pt
            ang[t, j] = p * freq
    return ang


def _rot(x: torch.Tensor, ang: torch.Tensor) -> torch.Tensor:
    # x (H, L, hd); pairs (j, j + hd/2) rotated by ang[:, j]
    half = x.shape[-1] // 2
    c, s = torch.cos(ang).to(x.dtype), torch.sin(ang).to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)


def ref_forward(sd: dict, cfg: dict, image: torch.Tensor | None, text_ids: torch.Tensor) -> torch.Tensor:
    """Logits ``(L, vocab)`` for one sample: ``image`` ``(C, H, W)`` (or None) then ``text_ids`` ``(T,)``."""
    d, H = cfg["hidden_size"], cfg["num_attention_heads"]
    hd = d // H
    eps = cfg.get("layer_norm_eps", 1e-6)
    parts, gh, gw = [], 0, 0
    if image is not None:
        w, b = sd["vision_embeddings.patch_embedding.weight"], sd["vision_embeddings.patch_embedding.bias"]
        feat = F.conv2d(image[None], w, b, stride=w.shape[-1])[0]  # (d, gh, gw)
        gh, gw = feat.shape[1:]
        parts.append(feat.flatten(1).t())
    e = sd["embeddings.weight"][text_ids]
    if "in_proj.weight" in sd:
        e = e @ sd["in_proj.weight"].t() + sd["in_proj.bias"]
    parts.append(e)
    x = torch.cat(parts)
    n_img = gh * gw
    allowed = ref_allowed(n_img, len(text_ids))
    ang = ref_rope_angles(ref_positions(gh, gw, len(text_ids)), hd, cfg["rope_scaling"]["mrope_section"],
                          cfg.get("rope_theta", 10000.0))
    for i in range(cfg["num_hidden_layers"]):
        p = f"visual.layers.{i}."

        def lin(name, inp, p=p):
            return inp @ sd[p + name + ".weight"].t() + sd[p + name + ".bias"]

        h = F.layer_norm(x, (d,), sd[p + "layer_norm1.weight"], sd[p + "layer_norm1.bias"], eps)
        qg = lin("self_attn.q_proj", h)
        q, g = qg[:, :d], qg[:, d:]
        k, v = lin("self_attn.k_proj", h), lin("self_attn.v_proj", h)
        q, k, v = (t.reshape(-1, H, hd).transpose(0, 1) for t in (q, k, v))  # (H, L, hd)
        q, k = _rot(q, ang), _rot(k, ang)
        scores = q @ k.transpose(1, 2) / math.sqrt(hd)
        scores = scores.masked_fill(~allowed, float("-inf"))
        a = (scores.softmax(-1) @ v).transpose(0, 1).reshape(-1, d)
        a = a * torch.sigmoid(g)
        a = lin("self_attn.out_proj", a) * sd[p + "layer_scale1.lambda1"]
        x = x + a
        h = F.layer_norm(x, (d,), sd[p + "layer_norm2.weight"], sd[p + "layer_norm2.bias"], eps)
        m = lin("mlp.fc2", F.silu(lin("mlp.gate_fc", h)) * lin("mlp.fc1", h))
        x = x + m * sd[p + "layer_scale2.lambda1"]
    x = F.layer_norm(x, (d,), sd["ln_post.weight"], sd["ln_post.bias"], eps)
    if "proj.weight" in sd:
        x = x @ sd["proj.weight"].t() + sd["proj.bias"]
    return x @ sd["lm_head.weight"].t()


def random_release_checkpoint(cfg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights laid out with the release's names and shapes (``q_proj`` is ``[2d, d]``: query, then gate)."""
    g = torch.Generator().manual_seed(seed)
    d, f, t, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["text_embed_dim"], cfg["vocab_size"]
    P, C = cfg["patch_size"], cfg["num_channels"]

    def r(*shape, s=0.05):
        return torch.randn(*shape, generator=g) * s

    sd = {"vision_embeddings.patch_embedding.weight": r(d, C, P, P), "vision_embeddings.patch_embedding.bias": r(d),
          "ln_post.weight": 1 + r(d), "ln_post.bias": r(d), "embeddings.weight": r(V, t, s=0.5),
          "lm_head.weight": r(V, t, s=0.2)}
    if t != d:
        sd.update({"in_proj.weight": r(d, t, s=0.2), "in_proj.bias": r(d), "proj.weight": r(t, d, s=0.2),
                   "proj.bias": r(t)})
    for i in range(cfg["num_hidden_layers"]):
        p = f"visual.layers.{i}."
        for name, (o, n) in {"self_attn.q_proj": (2 * d, d), "self_attn.k_proj": (d, d), "self_attn.v_proj": (d, d),
                             "self_attn.out_proj": (d, d), "mlp.fc1": (f, d), "mlp.gate_fc": (f, d),
                             "mlp.fc2": (d, f)}.items():
            sd[p + name + ".weight"] = r(o, n, s=0.15)
            sd[p + name + ".bias"] = r(o)
        for ln in ("layer_norm1", "layer_norm2"):
            sd[p + ln + ".weight"], sd[p + ln + ".bias"] = 1 + r(d), r(d)
        sd[p + "layer_scale1.lambda1"] = 0.5 + r(d)
        sd[p + "layer_scale2.lambda1"] = 0.5 + r(d)
    return sd


def release_config(**kw) -> dict:
    """A release-format ``config.json`` dict (keys as the release writes them)."""
    cfg = {"architectures": ["GenLIPModel"], "model_type": "genlip", "num_hidden_layers": 2, "num_channels": 3,
           "hidden_size": 48, "intermediate_size": 96, "num_attention_heads": 4, "patch_size": 8,
           "hidden_act": "silu", "use_swiglu_ffn": True, "ls_init_value": 0.1, "drop_path_rate": 0.1,
           "text_embed_dim": 48, "vocab_size": 97, "gated_attention": True, "mrope_interleaved": True,
           "rope_theta": 10000.0, "rope_scaling": {"type": "mrope", "mrope_section": [2, 2, 2]},
           "tie_word_embeddings": False, "use_llm_head": False, "torch_dtype": "bfloat16"}
    cfg.update(kw)
    return cfg
