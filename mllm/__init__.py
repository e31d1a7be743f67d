"""LLaVA-NeXT-style MLLM harness: any vision tower -> 2-layer MLP projector -> a causal LM (Qwen2.5).

Importing ``mllm`` registers the native-resolution LLaVA variant with transformers' Auto classes (and, through
``genlip``, the GenLIP vision tower).
"""

import genlip  # noqa: F401  (registers GenLIP with AutoConfig / AutoModel)
from mllm.native import NativeLlavaConfig, NativeLlavaForConditionalGeneration

__all__ = ["NativeLlavaConfig", "NativeLlavaForConditionalGeneration"]
