"""Stage-specific example builders: how one decoded (image, caption) becomes model input, and how a batch forms."""

from __future__ import annotations

from genlip.data.dataset import ExampleBuilder
from genlip.data.sequence import CaptionEncoder, collate_fixed
from genlip.data.transforms import fixed_resize


class FixedResBuilder(ExampleBuilder):
    """Stage 1: every image resized to ``image_size`` square; batches of a fixed number of samples."""

    def __init__(self, encoder: CaptionEncoder, image_size: int, mean: list[float], std: list[float]) -> None:
        self.encoder, self.image_size, self.mean, self.std = encoder, image_size, mean, std

    def build(self, image, caption: str) -> dict:
        ids, labels = self.encoder(caption)
        return {"pixel_values": fixed_resize(image, self.image_size, self.mean, self.std), "input_ids": ids,
                "labels": labels}

    def collate(self, examples: list[dict]) -> dict:
        return collate_fixed(examples, self.encoder.pad_id)
