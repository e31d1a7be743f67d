"""Export a GenLIP encoder to timm's NaFlex ViT (``timm.models.naflexvit.NaFlexVit``, timm >= 1.0.31).

The exported model gives the same patch features as :class:`~genlip.modeling.GenLIPVisionModel`: its
``forward_features(pixel_values)`` (or ``forward``, since the head is empty) equals our ``last_hidden_state``, the
final-LayerNorm output of every patch token. Image normalisation (mean = std = 0.5) stays outside both models.

How the two architectures line up (read off timm 1.0.31's ``naflexvit.py``, ``eva.py``, ``layers/attention.py``,
``layers/mlp.py`` and ``layers/pos_embed_sincos.py``):

- ``rope_type='mrope'`` makes ``get_block_fn`` build ``EvaBlock`` with ``attn_type='rope'`` (``AttentionRope``),
  ``rotate_half=True`` and ``gated_attn=attn_gated``. ``RotaryEmbeddingMRope`` assigns frequency ``j`` to H when
  ``j % 3 == 1 and j < 3 * section[1]``, to W when ``j % 3 == 2 and j < 3 * section[2]``, else to T (position 0
  for images), with ``inv_freq = theta ** (-2j / head_dim)``: exactly our interleaved MRoPE, and patch ``(r, c)``
  of the row-major grid gets ``(0, r, c)`` both from a whole image and from NaFlex ``patch_coord`` (the grid size
  is taken from the coordinates, the first ``h * w`` tokens are assumed row-major, as ours are).
- ``AttentionRope`` with ``qkv_fused=True`` has one ``qkv`` Linear (q, k, v stacked, all with bias) and a separate
  ``gate`` Linear; its output is ``proj(heads * sigmoid(gate(x)))``. Our fused ``q_proj`` is ``[query; gate]``, so
  its first ``d`` rows go to ``qkv`` and its last ``d`` rows to ``gate``. (The k bias matters: under RoPE it is
  not a softmax-invariant shift.)
- ``swiglu_mlp=True`` with ``swiglu_align_to=0`` and no MLP norm builds the packed ``GluMlp(gate_last=False)``
  with ``fc1`` of ``2 * int(dim * mlp_ratio)`` rows, gate half first: ``fc1 = [gate_proj; up_proj]``,
  ``fc2 = down_proj``. ``mlp_ratio`` is chosen so that ``int(dim * mlp_ratio)`` is exactly our
  ``intermediate_size``.
- LayerScale is ``gamma_1``/``gamma_2`` (``init_values=None`` when ours is disabled, ``layerscale_init == 0``).
- ``embed_proj_type='linear'`` with ``patchify_channels_last=True`` (timm's default, the layout its NaFlex data
  pipeline produces) flattens each patch as ``(ph, pw, C)``, so our ``Conv2d`` weight ``(d, C, P, P)`` is stored
  permuted to ``(d, P, P, C)``. The linear embedding accepts whole images ``(B, C, H, W)`` and pre-patchified NaFlex
  batches alike.
- no class/register tokens, ``pos_embed='none'``, ``pre_norm=False`` (so the patch projection keeps its bias),
  ``final_norm=True`` with ``fc_norm=False`` (the final LayerNorm is ``norm``), ``global_pool=''``,
  ``num_classes=0``.
- timm's default ``LayerNorm`` has ``eps=1e-6``; a config can only name the norm layer (``norm_layer='layernorm'``),
  so other eps values are rejected rather than exported approximately.
- ``drop_path_rate`` is exported as 0 (inference). timm spreads stochastic depth linearly over the blocks, GenLIP
  uses a constant rate; pass ``drop_path_rate=...`` yourself when fine-tuning in timm.

Recreating an export with timm alone (``out_dir`` holds ``model.safetensors`` and a timm-format ``config.json``
with ``architecture``, ``model_args`` and ``pretrained_cfg``)::

    import timm
    model = timm.create_model(f"local-dir:{out_dir}", pretrained=True)        # config + weights, strict load

    # or by hand: model_args holds every NaFlexVitCfg field plus in_chans and num_classes
    args = json.load(open(f"{out_dir}/config.json"))["model_args"]
    model = timm.create_model("naflexvit_base_patch16_gap", pretrained=False, **args)
    model = NaFlexVit(**args)                                                 # same model, without the registry
    model.load_state_dict(safetensors.torch.load_file(f"{out_dir}/model.safetensors"), strict=True)

    feats = model.eval().forward_features(pixel_values)                       # (B, H/P * W/P, d)

``model_args`` lists every ``NaFlexVitCfg`` field on purpose: the ``naflexvit_base_patch16_gap`` entry point
starts from a config with register tokens, a learned position embedding and average pooling, and the kwargs must
override all of that. In this module: :func:`timm_config`, :func:`to_timm_state_dict`, :func:`build_timm_model`,
:func:`export_timm` and :func:`load_timm_export`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from genlip.config import GenLIPConfig
from genlip.export_card import write_card
from genlip.modeling import GenLIPTransformer
from genlip.run.checkpoint import list_checkpoints, resolve_weights_dir

TIMM_ARCHITECTURE = "naflexvit_base_patch16_gap"  # registry entry whose kwargs rebuild the export
TIMM_NORM_EPS = 1e-6  # eps of timm.layers.LayerNorm, the only LayerNorm a NaFlexVit config can name
_TEXT_PREFIXES = ("embed_tokens.", "lm_head.", "text_in_proj.", "text_out_proj.")


def _mlp_ratio(dim: int, hidden: int) -> float:
    """The smallest float ``r >= hidden / dim`` with ``int(dim * r) == hidden`` (timm builds ``int(dim * r)``)."""
    r = hidden / dim
    for _ in range(8):
        if int(dim * r) == hidden:
            return r
        r = math.nextafter(r, math.inf)
    raise ValueError(f"no float mlp_ratio gives int({dim} * mlp_ratio) == intermediate_size {hidden}")


def _mrope_section(section: list[int]) -> list[int]:
    """Our section for timm. A negative H/W entry selects no channel, exactly like 0, but timm asserts ``>= 0``."""
    return [max(0, int(s)) for s in section]


def _check_exportable(cfg: GenLIPConfig) -> None:
    cfg.validate_architecture()  # ValueError for shapes our own model cannot build either
    if cfg.layer_norm_eps != TIMM_NORM_EPS:
        raise ValueError(
            f"layer_norm_eps={cfg.layer_norm_eps} cannot be exported: NaFlexVitCfg names its norm layer by registry "
            f"string ('layernorm' -> timm.layers.LayerNorm), whose eps is fixed at {TIMM_NORM_EPS}")


def timm_config(cfg: GenLIPConfig) -> dict[str, Any]:
    """Keyword arguments of the equivalent timm NaFlexVit, JSON-ready.

    Every ``NaFlexVitCfg`` field is listed, plus the constructor arguments ``in_chans`` and ``num_classes`` (0), so
    the dict works as ``NaFlexVit(**kwargs)`` and as ``timm.create_model(TIMM_ARCHITECTURE, **kwargs)``; drop those
    two keys for ``NaFlexVitCfg(**kwargs)``. Raises ``ValueError`` for configs timm cannot express.
    """
    from timm.models.naflexvit import NaFlexVitCfg  # optional: the [tools] extra

    _check_exportable(cfg)
    d = cfg.hidden_size
    ours = dict(
        patch_size=cfg.patch_size, embed_dim=d, depth=cfg.num_hidden_layers, num_heads=cfg.num_attention_heads,
        mlp_ratio=_mlp_ratio(d, cfg.intermediate_size),
        # attention: EvaBlock + AttentionRope, fused qkv with bias (k included), separate sigmoid gate
        attn_type="rope", qkv_fused=True, qkv_bias=True, proj_bias=True, qk_norm=False, num_kv_heads=None,
        scale_attn_inner_norm=False, attn_gated=bool(cfg.gated_attention), use_key_only_attn_mask=False,
        # MLP: packed SwiGLU (GluMlp, gate half first), hidden width int(embed_dim * mlp_ratio)
        swiglu_mlp=True, swiglu_align_to=0, scale_mlp_norm=False, mlp_layer=None, act_layer=None, block_fn=None,
        attn_layer=None,
        init_values=float(cfg.layerscale_init) if cfg.layerscale_init > 0 else None, attn_only_layer_scale=False,
        # positions: interleaved MRoPE only, no absolute embedding, no prefix tokens
        pos_embed="none", rope_type="mrope", rope_mrope_section=_mrope_section(cfg.mrope_section),
        rope_temperature=float(cfg.rope_theta), rope_grid_indexing="ij", rope_rotate_half=True, rope_grid_offset=0.0,
        rope_ref_feat_shape=None, rope_shift_coords=None, rope_jitter_coords=None, rope_rescale_coords=None,
        class_token=False, reg_tokens=0,
        # patch embedding: Linear on (ph, pw, C)-flattened patches (images are patchified inside)
        embed_proj_type="linear", patchify_channels_last=True, dynamic_img_pad=False, input_norm_layer=None,
        embed_norm_layer=None, enable_patch_interpolator=False,
        # norms and head: pre-LN blocks, final LayerNorm, no pooling, no classifier
        norm_layer="layernorm", pre_norm=False, final_norm=True, fc_norm=False, global_pool="",
        # inference: no dropout of any kind
        drop_rate=0.0, pos_drop_rate=0.0, patch_drop_rate=0.0, proj_drop_rate=0.0, attn_drop_rate=0.0,
        drop_path_rate=0.0,
    )
    fields = dataclasses.asdict(dataclasses.replace(NaFlexVitCfg(), **ours))
    kwargs = json.loads(json.dumps(fields))  # tuples -> lists, exactly what a config.json round trip gives
    kwargs.update(in_chans=int(cfg.num_channels), num_classes=0)
    return kwargs


def build_timm_model(cfg: GenLIPConfig, device: torch.device | str | None = None) -> nn.Module:
    """A randomly initialised timm ``NaFlexVit`` with the architecture of ``cfg`` (eval mode)."""
    from timm.models.naflexvit import NaFlexVit  # optional: the [tools] extra

    return NaFlexVit(**timm_config(cfg), device=device).eval()


def _genlip_shapes(cfg: GenLIPConfig) -> dict[str, torch.Size]:
    """Parameter shapes of ``GenLIPTransformer(cfg)`` (built on the meta device, so free)."""
    with torch.device("meta"):
        return {k: v.shape for k, v in GenLIPTransformer(cfg).state_dict().items()}


def _encoder_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ViT part of a GenLIPVisionModel / GenLIPForCaptioning (``vit.*``) or GenLIPTransformer state dict."""
    if any(k.startswith("vit.") for k in sd):
        out, unknown = {}, []
        for k, v in sd.items():
            if k.startswith("vit."):
                out[k[4:]] = v
            elif not k.startswith(_TEXT_PREFIXES):
                unknown.append(k)
        if unknown:
            raise KeyError(f"{len(unknown)} keys are neither encoder (vit.*) nor text weights, e.g. {unknown[:5]}")
        return out
    return dict(sd)


def to_timm_state_dict(genlip_state_dict_or_model: dict[str, torch.Tensor] | nn.Module,
                       cfg: GenLIPConfig | None = None) -> dict[str, torch.Tensor]:
    """Map a GenLIP encoder's weights to the names and layouts of the timm NaFlexVit of :func:`timm_config`.

    Accepts a ``GenLIPVisionModel``/``GenLIPForCaptioning`` (or its state dict, text embedding, text projections
    and LM head are dropped) or a bare ``GenLIPTransformer`` state dict. ``cfg`` defaults to the model's config.
    Missing, unexpected or mis-shaped weights raise; nothing is dropped silently.
    """
    src = genlip_state_dict_or_model
    if isinstance(src, nn.Module):
        cfg = cfg if cfg is not None else getattr(src, "config", None)
        src = src.state_dict()
    if cfg is None:
        raise ValueError("to_timm_state_dict needs the GenLIPConfig of a state dict")
    _check_exportable(cfg)
    sd = _encoder_state_dict(src)
    sd = {k: v for k, v in sd.items() if not k.startswith("rope.")}  # MRoPE buffers are rebuilt by timm

    expected = _genlip_shapes(cfg)
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    bad = [f"{k}: {tuple(sd[k].shape)} vs {tuple(s)}" for k, s in expected.items() if k in sd and sd[k].shape != s]
    if missing or unexpected or bad:
        raise ValueError(f"the GenLIP weights do not match the config (depth {cfg.num_hidden_layers}, width "
                         f"{cfg.hidden_size}, gated_attention={cfg.gated_attention}): missing {missing[:4]}, "
                         f"unexpected {unexpected[:4]}, wrong shape {bad[:4]}")

    d, P, C = cfg.hidden_size, cfg.patch_size, cfg.num_channels
    out: dict[str, torch.Tensor] = {
        # Conv2d (d, C, P, P) -> Linear on (ph, pw, C)-flattened patches (patchify_channels_last=True)
        "embeds.proj.weight": sd["patch_embed.proj.weight"].permute(0, 2, 3, 1).reshape(d, P * P * C),
        "embeds.proj.bias": sd["patch_embed.proj.bias"],
        "norm.weight": sd["norm.weight"],
        "norm.bias": sd["norm.bias"],
    }
    for i in range(cfg.num_hidden_layers):
        b = f"blocks.{i}."  # the block prefix is the same on both sides
        q_w, q_b = sd[b + "attn.q_proj.weight"], sd[b + "attn.q_proj.bias"]
        out[b + "attn.qkv.weight"] = torch.cat([q_w[:d], sd[b + "attn.k_proj.weight"], sd[b + "attn.v_proj.weight"]])
        out[b + "attn.qkv.bias"] = torch.cat([q_b[:d], sd[b + "attn.k_proj.bias"], sd[b + "attn.v_proj.bias"]])
        if cfg.gated_attention:  # q_proj = [query rows; gate rows]
            out[b + "attn.gate.weight"], out[b + "attn.gate.bias"] = q_w[d:], q_b[d:]
        out[b + "attn.proj.weight"] = sd[b + "attn.out_proj.weight"]
        out[b + "attn.proj.bias"] = sd[b + "attn.out_proj.bias"]
        for n in ("norm1", "norm2"):
            out[b + n + ".weight"], out[b + n + ".bias"] = sd[b + n + ".weight"], sd[b + n + ".bias"]
        # GluMlp(gate_last=False): silu(first half) * second half
        out[b + "mlp.fc1.weight"] = torch.cat([sd[b + "mlp.gate_proj.weight"], sd[b + "mlp.up_proj.weight"]])
        out[b + "mlp.fc1.bias"] = torch.cat([sd[b + "mlp.gate_proj.bias"], sd[b + "mlp.up_proj.bias"]])
        out[b + "mlp.fc2.weight"] = sd[b + "mlp.down_proj.weight"]
        out[b + "mlp.fc2.bias"] = sd[b + "mlp.down_proj.bias"]
        if cfg.layerscale_init > 0:
            out[b + "gamma_1"], out[b + "gamma_2"] = sd[b + "ls1.gamma"], sd[b + "ls2.gamma"]
    # own, contiguous storage: safetensors refuses views and shared tensors
    return {k: v.detach().contiguous().clone() for k, v in out.items()}


def _check_against_timm(tsd: dict[str, torch.Tensor], cfg: GenLIPConfig) -> None:
    """The mapped dict has exactly the keys and shapes of the timm model (checked on the meta device)."""
    want = {k: v.shape for k, v in build_timm_model(cfg, device="meta").state_dict().items()}
    missing, unexpected = sorted(set(want) - set(tsd)), sorted(set(tsd) - set(want))
    bad = [k for k in want.keys() & tsd.keys() if tsd[k].shape != want[k]]
    if missing or unexpected or bad:  # a mapping bug or a timm version with other names
        raise RuntimeError(f"timm NaFlexVit state dict mismatch: missing {missing[:4]}, unexpected "
                           f"{unexpected[:4]}, wrong shape {bad[:4]}")


def _load_genlip(source: str | Path | nn.Module) -> tuple[dict[str, torch.Tensor], GenLIPConfig, Path | None]:
    """The weights, the config and the directory they came from (None for a model)."""
    if isinstance(source, nn.Module):
        if not isinstance(getattr(source, "config", None), GenLIPConfig):
            raise TypeError("export_timm needs a GenLIPVisionModel / GenLIPForCaptioning or a directory")
        return source.state_dict(), source.config, None
    path = Path(source)
    if not (path / "config.json").is_file() and list_checkpoints(path):
        path = resolve_weights_dir(path)  # a pretraining run directory: its newest checkpoint
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json; expected a GenLIP save_pretrained directory or a "
                                "pretraining run directory")
    cfg = GenLIPConfig.from_pretrained(path)
    index = path / "model.safetensors.index.json"
    files = (sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file()
             else sorted(p.name for p in path.glob("*.safetensors")))
    if not files:
        raise FileNotFoundError(f"no safetensors weights in {path}")
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        sd.update(load_file(str(path / f)))
    return sd, cfg, path


def export_timm(model_dir_or_model: str | Path | nn.Module, out_dir: str | Path,
                dtype: torch.dtype | None = None) -> Path:
    """Write ``out_dir/model.safetensors`` and a timm ``config.json``; returns ``out_dir``.

    ``model_dir_or_model`` is a GenLIP model, a directory saved by ``save_pretrained`` (vision or captioning model)
    or a pretraining run directory (its newest checkpoint). The preprocessing written for timm is the training one:
    the config's size (what stage 1 trained at), bilinear resizing, mean = std = 0.5. ``dtype`` casts the weights
    (default: keep). Load the result with :func:`load_timm_export` or
    ``timm.create_model(f"local-dir:{out_dir}", pretrained=True)``.
    """
    sd, cfg, src = _load_genlip(model_dir_or_model)
    args = timm_config(cfg)
    tsd = to_timm_state_dict(sd, cfg)
    if dtype is not None:
        tsd = {k: v.to(dtype) for k, v in tsd.items()}
    _check_against_timm(tsd, cfg)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.cpu() for k, v in tsd.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = {
        "architecture": TIMM_ARCHITECTURE,
        "num_classes": 0,
        "num_features": cfg.hidden_size,
        "model_args": args,
        "pretrained_cfg": {
            "tag": "genlip",
            "custom_load": False,
            "input_size": [cfg.num_channels, cfg.image_size, cfg.image_size],
            "fixed_input_size": False,
            "interpolation": "bilinear",  # as training resizes (genlip.data.transforms.fixed_resize)
            "crop_pct": 1.0,
            "mean": list(cfg.image_mean),
            "std": list(cfg.image_std),
            "num_classes": 0,
            "pool_size": None,
            "first_conv": "embeds.proj",
            "classifier": "head",
        },
        # provenance only; timm ignores it
        "genlip": {"source_config": json.loads(cfg.to_json_string(use_diff=False)),
                   "features": "forward_features(pixel_values) == GenLIPVisionModel(pixel_values).last_hidden_state"},
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    write_card(out, cfg, src, "timm", sum(v.numel() for v in tsd.values()))
    return out


def load_timm_export(out_dir: str | Path, device: torch.device | str | None = None) -> nn.Module:
    """Rebuild the timm model of an :func:`export_timm` directory and load its weights with ``strict=True``."""
    import timm  # optional: the [tools] extra

    out = Path(out_dir)
    config = json.loads((out / "config.json").read_text())
    model = timm.create_model(config["architecture"], pretrained=False,
                              pretrained_cfg_overlay=config.get("pretrained_cfg"), **config["model_args"])
    model.load_state_dict(load_file(str(out / "model.safetensors")), strict=True)
    return model.to(device).eval() if device is not None else model.eval()
