"""Load checkpoints of the public GenLIP release (``YanFang/GenLIP-*``, built on VeOmni) into this model.

The release names its modules ``vision_embeddings.patch_embedding``, ``visual.layers.{i}.{layer_norm1, self_attn.
{q,k,v,out}_proj, layer_scale1.lambda1, layer_norm2, mlp.{fc1, gate_fc, fc2}, layer_scale2.lambda1}``, ``ln_post``,
``in_proj``/``proj`` (when the text width differs from the model width), ``embeddings`` and ``lm_head``. Its
``q_proj`` is ``[2d, d]``: query rows first, gate rows second, exactly our fused layout. Its SwiGLU computes
``fc2(silu(gate_fc(x)) * fc1(x))``, so ``fc1`` is our ``up_proj``. Shapes come from the checkpoint's own
``config.json``, so the paper's and the release's size variants both load.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from genlip.config import GenLIPConfig
from genlip.modeling import GenLIPForCaptioning, GenLIPVisionModel

# (release pattern, our name); applied to every key after any wrapper prefix is stripped.
_RULES: list[tuple[str, str]] = [
    (r"^vision_embeddings\.patch_embedding\.", "vit.patch_embed.proj."),
    (r"^visual\.layers\.(\d+)\.layer_norm1\.", r"vit.blocks.\1.norm1."),
    (r"^visual\.layers\.(\d+)\.layer_norm2\.", r"vit.blocks.\1.norm2."),
    (r"^visual\.layers\.(\d+)\.self_attn\.(q_proj|k_proj|v_proj|out_proj)\.", r"vit.blocks.\1.attn.\2."),
    (r"^visual\.layers\.(\d+)\.layer_scale1\.lambda1$", r"vit.blocks.\1.ls1.gamma"),
    (r"^visual\.layers\.(\d+)\.layer_scale2\.lambda1$", r"vit.blocks.\1.ls2.gamma"),
    (r"^visual\.layers\.(\d+)\.mlp\.fc1\.", r"vit.blocks.\1.mlp.up_proj."),
    (r"^visual\.layers\.(\d+)\.mlp\.gate_fc\.", r"vit.blocks.\1.mlp.gate_proj."),
    (r"^visual\.layers\.(\d+)\.mlp\.fc2\.", r"vit.blocks.\1.mlp.down_proj."),
    (r"^ln_post\.", "vit.norm."),
    (r"^embeddings\.", "embed_tokens."),
    (r"^in_proj\.", "text_in_proj."),
    (r"^proj\.", "text_out_proj."),
    (r"^lm_head\.", "lm_head."),
]
_PREFIXES = ("module.", "model.", "GenLIP.", "genlip.")
_IGNORED = re.compile(r"(rotary_emb|inv_freq)")


def config_from_release(cfg: dict) -> GenLIPConfig:
    """Translate a release ``config.json`` into a :class:`GenLIPConfig`. Keys that change what the model computes
    are checked: a value this model does not implement (a non-SiLU activation, MRoPE that is not interleaved, a plain
    MLP, a borrowed LLM head) is an error, never a silent substitute; keys that change nothing are ignored."""
    rope = cfg.get("rope_scaling") or {}
    act = cfg.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise ValueError(f"this release checkpoint uses hidden_act={act!r}; GenLIP's SwiGLU implements silu only")
    interleaved = rope.get("mrope_interleaved", cfg.get("mrope_interleaved", True))
    if interleaved is not True:
        raise ValueError(f"this release checkpoint sets mrope_interleaved={interleaved!r}; only the interleaved "
                         "(Qwen3-VL) channel layout is implemented")
    if cfg.get("use_swiglu_ffn", True) is False:
        raise ValueError("this release checkpoint uses a plain MLP (use_swiglu_ffn=false); GenLIP models use SwiGLU")
    if cfg.get("use_llm_head"):
        raise ValueError("this release checkpoint borrows an LLM's head (use_llm_head=true), which is not supported")
    return GenLIPConfig(
        hidden_size=cfg["hidden_size"], num_hidden_layers=cfg["num_hidden_layers"],
        num_attention_heads=cfg["num_attention_heads"], intermediate_size=cfg["intermediate_size"],
        patch_size=cfg.get("patch_size", 16), num_channels=cfg.get("num_channels", 3),
        vocab_size=cfg.get("vocab_size", 151936), text_embed_dim=cfg.get("text_embed_dim"),
        layer_norm_eps=cfg.get("layer_norm_eps", 1e-6), layerscale_init=cfg.get("ls_init_value", 0.1),
        drop_path_rate=cfg.get("drop_path_rate", 0.0), gated_attention=cfg.get("gated_attention", True),
        rope_theta=float(cfg.get("rope_theta", 10000.0)), mrope_section=rope.get("mrope_section"),
    )


def convert_release_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a release state dict to this model's names; unknown keys are an error, never dropped silently."""
    out, unknown = {}, []
    for key, value in state_dict.items():
        k = key
        for p in _PREFIXES:
            if k.startswith(p):
                k = k[len(p):]
        if _IGNORED.search(k):
            continue
        for pattern, repl in _RULES:
            new, n = re.subn(pattern, repl, k)
            if n:
                out[new] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise KeyError(f"{len(unknown)} release keys have no mapping, e.g. {unknown[:5]}")
    return out


def _read_safetensors_dir(path: Path) -> dict[str, torch.Tensor]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = sorted(p.name for p in path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no safetensors weights in {path}")
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        sd.update(load_file(str(path / f)))
    return sd


def load_release_checkpoint(path: str | Path, dtype: torch.dtype = torch.float32, vision_only: bool = False):
    """Load a release directory (``config.json`` + safetensors) as a :class:`GenLIPForCaptioning` (or the vision
    model alone with ``vision_only``). Missing or mis-shaped weights raise."""
    path = Path(path)
    config = config_from_release(json.loads((path / "config.json").read_text()))
    sd = convert_release_state_dict(_read_safetensors_dir(path))
    cls = GenLIPVisionModel if vision_only else GenLIPForCaptioning
    if vision_only:
        sd = {k: v for k, v in sd.items() if k.startswith("vit.")}
    model = cls(config)
    own = model.state_dict()
    bad = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
           for k, v in sd.items() if k in own and own[k].shape != v.shape]
    if bad:
        raise ValueError("shape mismatch loading the release checkpoint: " + "; ".join(bad[:5]))
    missing, unexpected = model.load_state_dict({k: v.to(dtype) for k, v in sd.items()}, strict=False)
    if missing or unexpected:
        raise KeyError(f"release checkpoint does not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.to(dtype).eval()
