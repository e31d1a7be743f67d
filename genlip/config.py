"""GenLIP configuration: one typed dataclass, the paper's presets, the release's variants and CPU-sized ones.

The config is a transformers ``PreTrainedConfig`` (a strict dataclass in transformers 5), so it saves as
``config.json`` next to the weights and loads back with ``AutoConfig`` once ``genlip`` is imported.
"""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

ATTN_BACKENDS = ("auto", "prefix", "segments", "dense", "flex")


def default_mrope_section(head_dim: int) -> list[int]:
    """Split ``head_dim // 2`` rotary channels over (T, H, W) as evenly as the interleaving allows.

    >>> default_mrope_section(64), default_mrope_section(72), default_mrope_section(32)
    ([12, 10, 10], [12, 12, 12], [6, 5, 5])
    """
    half = head_dim // 2
    hw = half // 3
    return [half - 2 * hw, hw, hw]


@strict
class GenLIPConfig(PreTrainedConfig):
    r"""Architecture of a GenLIP Transformer (the paper's architecture, arXiv 2605.00809).

    Args:
        hidden_size: model width ``d``.
        num_hidden_layers: number of pre-LN blocks.
        num_attention_heads: heads (multi-head, no GQA); ``head_dim = hidden_size / heads``.
        intermediate_size: SwiGLU hidden width.
        patch_size: square patch side in pixels.
        image_size: the default square input size (stage 1 trains at 224); the model itself runs at any size.
        vocab_size: text vocabulary (151936 for the paper's Qwen3 tokenizer).
        text_embed_dim: width of the text embedding and LM head; when it differs from ``hidden_size`` the model
            gets an input projection (text→d) and an output projection (d→text), as in the reference release.
        layerscale_init: LayerScale init value (0 disables LayerScale).
        drop_path_rate: constant stochastic-depth rate of every residual branch.
        gated_attention: the paper's elementwise sigmoid output gate (fused into ``q_proj``). Off only for ablations.
        rope_theta: RoPE base.
        mrope_section: channels per (T, H, W) axis of the interleaved MRoPE; as in Qwen3-VL only the H and W entries
            bound the interleaving, T takes the rest. ``None`` chooses an even split.
        attn_backend: ``auto`` (FlexAttention on CUDA, per-sample SDPA elsewhere), ``segments``, ``dense`` or ``flex``.
        text_tower: only for the SigLIP-style contrastive baseline (:mod:`genlip.contrastive`): the text encoder's
            ``layers``, ``width``, ``heads``, ``max_len`` and the joint ``embed_dim``. ``None`` for GenLIP itself.
    """

    model_type = "genlip"

    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 2816
    patch_size: int = 16
    num_channels: int = 3
    image_size: int = 224  # default input size for fixed-resolution use (processors, LLaVA-NeXT tiles); any works
    vocab_size: int = 151936
    text_embed_dim: int | None = None
    layer_norm_eps: float = 1e-6
    layerscale_init: float = 0.1
    drop_path_rate: float = 0.1
    gated_attention: bool = True
    rope_theta: float = 10000.0
    mrope_section: list[int] | None = None
    initializer_range: float = 0.02
    attn_backend: str = "auto"
    image_mean: list[float] | None = None
    image_std: list[float] | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    tie_word_embeddings: bool = False
    text_tower: dict | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        if self.text_embed_dim is None:
            self.text_embed_dim = self.hidden_size
        if self.mrope_section is None and self.hidden_size % self.num_attention_heads == 0:
            self.mrope_section = default_mrope_section(self.hidden_size // self.num_attention_heads)
        if self.image_mean is None:
            self.image_mean = [0.5, 0.5, 0.5]
        if self.image_std is None:
            self.image_std = [0.5, 0.5, 0.5]
        super().__post_init__(**kwargs)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def validate_architecture(self) -> None:
        """Reject shapes the model cannot build, with a message that says what to change."""
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                             f"{self.num_attention_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for rotary embeddings")
        if len(self.mrope_section) != 3:
            raise ValueError(f"mrope_section must have 3 entries (T, H, W), got {self.mrope_section}")
        if sum(self.mrope_section) > self.head_dim // 2:
            raise ValueError(f"mrope_section {self.mrope_section} needs {sum(self.mrope_section)} rotary channels "
                             f"but head_dim {self.head_dim} has only {self.head_dim // 2}")
        if self.attn_backend not in ATTN_BACKENDS:
            raise ValueError(f"attn_backend must be one of {ATTN_BACKENDS}, got {self.attn_backend!r}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")


# The paper's sizes (Table 1 of the spec); mrope sections as in the release configs.
_PAPER = {
    "L16": dict(num_hidden_layers=24, hidden_size=1024, num_attention_heads=16, intermediate_size=2816,
                drop_path_rate=0.1, mrope_section=[8, 12, 12]),
    "So16": dict(num_hidden_layers=27, hidden_size=1152, num_attention_heads=16, intermediate_size=3072,
                 drop_path_rate=0.1, mrope_section=[12, 12, 12]),
    "g16": dict(num_hidden_layers=40, hidden_size=1536, num_attention_heads=24, intermediate_size=4096,
                drop_path_rate=0.2, mrope_section=[8, 12, 12]),
}
# The reference release's own configs: text width differs from model width, g/16 has 16 heads.
_RELEASE = {
    "L16-release": dict(num_hidden_layers=24, hidden_size=1152, num_attention_heads=16, intermediate_size=2752,
                        text_embed_dim=1024, drop_path_rate=0.1, mrope_section=[8, 12, 12]),
    "So16-release": dict(_PAPER["So16"], text_embed_dim=1152),
    "g16-release": dict(num_hidden_layers=40, hidden_size=1536, num_attention_heads=16, intermediate_size=4096,
                        text_embed_dim=1024, drop_path_rate=0.2, mrope_section=[16, 16, 16]),
}
# CPU-sized configs for tests, demos and benchmarks.
_SMALL = {
    "tiny": dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128,
                 vocab_size=512, drop_path_rate=0.0),
    "tiny-textproj": dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128,
                          vocab_size=512, text_embed_dim=48, drop_path_rate=0.0),
    "small": dict(num_hidden_layers=4, hidden_size=256, num_attention_heads=4, intermediate_size=704,
                  vocab_size=4096, drop_path_rate=0.0),
    "mid": dict(num_hidden_layers=8, hidden_size=512, num_attention_heads=8, intermediate_size=1408,
                vocab_size=32000, drop_path_rate=0.0),
}
PRESETS: dict[str, dict[str, Any]] = {**_PAPER, **_RELEASE, **_SMALL}


def genlip_config(preset: str, **overrides: Any) -> GenLIPConfig:
    """Build a config from a named preset (``L16``, ``So16``, ``g16``, ``*-release``, ``tiny``, ``small``, ``mid``)."""
    if preset not in PRESETS:
        raise KeyError(f"unknown GenLIP preset {preset!r}; choose one of {sorted(PRESETS)}")
    return GenLIPConfig(**{**PRESETS[preset], **overrides})
