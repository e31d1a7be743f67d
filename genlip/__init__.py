"""GenLIP: Generative Language-Image Pre-training ("Let ViT Speak"), model and pretraining.

Importing the package registers ``genlip`` with transformers' ``AutoConfig``/``AutoModel`` (the vision encoder) and
``AutoModelForImageTextToText`` (the captioning model used in pretraining).
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText

from genlip.config import PRESETS, GenLIPConfig, genlip_config
from genlip.masks import Layout, fixed_layout, packed_layout, prefix_lm_mask
from genlip.modeling import GenLIPForCaptioning, GenLIPTransformer, GenLIPVisionModel
from genlip.release import load_release_checkpoint

__version__ = "0.1.0"

AutoConfig.register("genlip", GenLIPConfig, exist_ok=True)
AutoModel.register(GenLIPConfig, GenLIPVisionModel, exist_ok=True)
AutoModelForImageTextToText.register(GenLIPConfig, GenLIPForCaptioning, exist_ok=True)

__all__ = [
    "PRESETS", "GenLIPConfig", "genlip_config", "Layout", "fixed_layout", "packed_layout", "prefix_lm_mask",
    "GenLIPForCaptioning", "GenLIPTransformer", "GenLIPVisionModel", "load_release_checkpoint",
]
