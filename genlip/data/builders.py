"""Stage-specific example builders: how one decoded (image, caption) becomes model input, and how a batch forms."""

from __future__ import annotations

from collections import deque

from PIL import Image

from genlip.data.dataset import ExampleBuilder
from genlip.data.decode import SkipSample
from genlip.data.packing import RowPacker, collate_packed
from genlip.data.sequence import CaptionEncoder, collate_fixed
from genlip.data.transforms import fixed_resize, smart_resize, to_tensor
from genlip.image import normalize, patchify


class FixedResBuilder(ExampleBuilder):
    """Stage 1: every image resized to ``image_size`` square; batches of a fixed number of samples."""

    def __init__(self, encoder: CaptionEncoder, image_size: int, mean: list[float], std: list[float]) -> None:
        self.encoder, self.image_size, self.mean, self.std = encoder, image_size, mean, std

    def build(self, image, caption: str) -> dict:
        ids, labels, cut = self.encoder.encode(caption)
        return {"pixel_values": fixed_resize(image, self.image_size, self.mean, self.std), "input_ids": ids,
                "labels": labels, "_caption_cut": cut}

    def collate(self, examples: list[dict]) -> dict:
        return collate_fixed(examples, self.encoder.pad_id)


class NativeResBuilder(ExampleBuilder):
    """Stage 2: native aspect ratio (smart resize), patchified; samples packed into rows of ``max_seq_len`` tokens.

    A batch is ``batch_size`` rows (a token budget of ``batch_size * max_seq_len``), however many samples that is.
    Windows of ``window`` samples are packed first-fit-decreasing; rows below ``min_fill`` are re-packed once with
    the next window.
    """

    def __init__(self, encoder: CaptionEncoder, patch_size: int, min_pixels: int, max_pixels: int, max_seq_len: int,
                 mean: list[float] | None = None, std: list[float] | None = None, window: int = 64,
                 min_fill: float = 0.9) -> None:
        self.encoder, self.patch_size = encoder, patch_size
        self.min_pixels, self.max_pixels, self.max_seq_len = min_pixels, max_pixels, max_seq_len
        self.mean, self.std = mean or [0.5] * 3, std or [0.5] * 3
        self.window, self.min_fill = window, min_fill
        self.fixed = len(encoder.prompt_ids) + len(encoder.eos_ids)  # text tokens besides the caption
        cap = encoder.max_caption_tokens or 1
        longest = max_pixels // patch_size**2 + self.fixed + cap
        if longest > max_seq_len:
            raise ValueError(f"data.max_seq_len {max_seq_len} cannot hold the longest sample ({longest} tokens: "
                             f"{max_pixels // patch_size**2} image + prompt + {cap} caption "
                             f"+ EOS); raise max_seq_len or lower max_pixels / max_caption_tokens")

    def build(self, image, caption: str) -> dict:
        h, w = smart_resize(image.height, image.width, self.patch_size, self.min_pixels, self.max_pixels)
        pixels = normalize(to_tensor(image.resize((w, h), Image.BILINEAR)), self.mean, self.std)
        patches, grid = patchify(pixels, self.patch_size)
        room = self.max_seq_len - patches.shape[0] - self.fixed  # a caption never overflows its row: it is cut
        if room < 1:  # never expected (see __init__), but a sample that cannot fit a row is skipped
            raise SkipSample("too_long_for_row", f"{patches.shape[0]} image tokens > data.max_seq_len "
                             f"{self.max_seq_len}")
        ids, labels, cut = self.encoder.encode(caption, room)
        return {"patches": patches, "grid": grid, "input_ids": ids, "labels": labels, "_caption_cut": cut}

    def batches(self, examples, batch_size: int, restored=None):
        packer = RowPacker(self.max_seq_len, self.window, self.min_fill)
        if restored:
            packer.queue, packer.carry = deque(restored["queue"]), list(restored["carry"])
        while True:
            rows = packer.take(examples, batch_size)
            batch = collate_packed(rows, self.max_seq_len, self.encoder.pad_id)
            pending = {"queue": [[e["_pos"] for e in r] for r in packer.queue],
                       "carry": [e["_pos"] for e in packer.carry]}
            yield batch, pending
