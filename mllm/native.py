"""Native-resolution LLaVA: for towers that take images at their own aspect ratio (GenLIP, SigLIP2-NaFlex).

transformers' LLaVA classes feed fixed-size pixel tensors to the tower; this variant takes pre-patchified images
with their grids, runs the tower once on all of them, projects each image's features and hands them to LLaVA as
precomputed encoder outputs. Weights are laid out exactly as in ``LlavaForConditionalGeneration``.
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForImageTextToText, LlavaConfig, LlavaForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutputWithPooling


class NativeLlavaConfig(LlavaConfig):
    model_type = "llava_native"


class NativeLlavaForConditionalGeneration(LlavaForConditionalGeneration):
    config_class = NativeLlavaConfig

    def native_image_features(self, pixel_values: torch.Tensor, image_grid_hw: torch.Tensor,
                              pixel_attention_mask: torch.Tensor | None = None,
                              spatial_shapes: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Projected features of every image, ``[(h_i * w_i, D), ...]``, in image order."""
        tower = self.model.vision_tower
        layer = self.config.vision_feature_layer
        counts = (image_grid_hw[:, 0] * image_grid_hw[:, 1]).tolist()
        kind = self.config.vision_config.model_type
        if kind == "genlip":
            out = tower(pixel_values, image_grid_hw=image_grid_hw, output_hidden_states=True)
            per_image = list(torch.split(out.hidden_states[layer][0], counts))
        elif kind == "siglip2_vision_model":
            out = tower(pixel_values=pixel_values, pixel_attention_mask=pixel_attention_mask,
                        spatial_shapes=spatial_shapes, output_hidden_states=True)
            hidden = out.hidden_states[layer]
            per_image = [hidden[i, :n] for i, n in enumerate(counts)]
        else:
            raise ValueError(f"native mode needs a GenLIP or SigLIP2 tower, not {kind!r}")
        return [self.model.multi_modal_projector(f) for f in per_image]

    def forward(self, input_ids=None, pixel_values=None, image_grid_hw=None, pixel_attention_mask=None,
                spatial_shapes=None, **kwargs):
        if pixel_values is not None:
            feats = self.native_image_features(pixel_values, image_grid_hw, pixel_attention_mask, spatial_shapes)
            kwargs["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=feats)}
        return super().forward(input_ids=input_ids, **kwargs)


AutoConfig.register("llava_native", NativeLlavaConfig, exist_ok=True)
AutoModelForImageTextToText.register(NativeLlavaConfig, NativeLlavaForConditionalGeneration, exist_ok=True)
