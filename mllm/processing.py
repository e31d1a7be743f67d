"""From images + a LLaVA conversation to model inputs, for every image mode.

Conversations use the Qwen chat format (``<|im_start|>role\\n...<|im_end|>\\n``) with the default system prompt.
Only assistant turns are supervised (their content and ``<|im_end|>``). Each ``<image>`` in a human turn becomes the
exact number of image tokens the model will fill for that image. For ``resize`` and ``anyres`` the pixels come
from transformers' own image processors, saved with the model, so a checkpoint also works with plain transformers.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import transformers
from PIL import Image
from transformers.models.siglip2.image_processing_pil_siglip2 import (
    Siglip2ImageProcessorPil,
    get_image_size_for_max_num_patches,
)

from genlip.data.transforms import smart_resize, to_tensor
from genlip.image import normalize, patchify
from genlip.loss import IGNORE_INDEX
from mllm.image_modes import anyres_num_tokens, native_grid, resize_num_tokens

IMAGE_PLACEHOLDER = "<image>"
DEFAULT_SYSTEM = "You are a helpful assistant."
# The processors' chat template: the conversation format ConversationEncoder trains on (Qwen turns, the default
# system prompt unless the conversation has one), for both message forms transformers users write: a string with
# ``<image>`` where the image goes, or the standard parts list ``[{"type": "image"}, {"type": "text", "text": ...}]``.
CHAT_TEMPLATE = (
    "{% if messages and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n" + DEFAULT_SYSTEM + "<|im_end|>\n' }}{% endif %}"
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '" + IMAGE_PLACEHOLDER + "' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


@dataclass
class ImageSpec:
    """How images are turned into tokens; saved as ``genlip_mllm_image.json`` next to the model."""

    mode: str  # resize | anyres | native
    kind: str  # tower kind (genlip, siglip, siglip2, aimv2, clip)
    patch_size: int
    image_size: int  # resize: the square side; anyres: the tile side
    image_mean: list[float]
    image_std: list[float]
    has_cls: bool = False
    pinpoints: list[list[int]] = field(default_factory=list)
    min_tokens: int = 16
    max_tokens: int = 576

    def save(self, directory: str | Path) -> None:
        (Path(directory) / "genlip_mllm_image.json").write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, directory: str | Path) -> ImageSpec:
        return cls(**json.loads((Path(directory) / "genlip_mllm_image.json").read_text()))

    def num_tokens(self, image: Image.Image) -> int:
        w, h = image.size
        if self.mode == "resize":
            return resize_num_tokens(self.image_size, self.patch_size)
        if self.mode == "anyres":
            return anyres_num_tokens(h, w, self.pinpoints, self.image_size, self.patch_size)
        if self.kind == "siglip2":  # SigLIP2's own NaFlex resize rule
            th, tw = get_image_size_for_max_num_patches(h, w, self.patch_size, self.max_tokens)
            return (th // self.patch_size) * (tw // self.patch_size)
        gh, gw = native_grid(h, w, self.patch_size, self.min_tokens, self.max_tokens)
        return gh * gw


def make_image_processor(spec: ImageSpec):
    """The transformers image processor of ``resize`` / ``anyres`` (None for ``native``, handled here)."""
    pil = importlib.util.find_spec("torchvision") is None  # transformers' PIL backends, without torchvision
    CLIPImageProcessor = getattr(transformers, "CLIPImageProcessorPil" if pil else "CLIPImageProcessor")
    LlavaNextImageProcessor = getattr(transformers, "LlavaNextImageProcessorPil" if pil else "LlavaNextImageProcessor")
    common = dict(image_mean=spec.image_mean, image_std=spec.image_std, do_convert_rgb=True)
    if spec.mode == "resize":
        return CLIPImageProcessor(size={"shortest_edge": spec.image_size}, do_center_crop=True,
                                  crop_size={"height": spec.image_size, "width": spec.image_size}, **common)
    if spec.mode == "anyres":
        return LlavaNextImageProcessor(size={"shortest_edge": spec.image_size}, do_center_crop=True,
                                       crop_size={"height": spec.image_size, "width": spec.image_size},
                                       image_grid_pinpoints=spec.pinpoints, **common)
    return None


def preprocess_images(spec: ImageSpec, images: list[Image.Image], image_processor=None) -> dict:
    """Pixel inputs for the model's forward, for all images of a batch in order."""
    if not images:
        return {}
    if spec.mode in ("resize", "anyres"):
        out = image_processor(images=images, return_tensors="pt")
        keep = ("pixel_values", "image_sizes") if spec.mode == "anyres" else ("pixel_values",)
        return {k: out[k] for k in keep}
    if spec.kind == "siglip2":
        proc = Siglip2ImageProcessorPil(patch_size=spec.patch_size, max_num_patches=spec.max_tokens,
                                     image_mean=spec.image_mean, image_std=spec.image_std)
        out = proc(images=images, return_tensors="pt")
        shapes = out["spatial_shapes"]
        return {"pixel_values": out["pixel_values"], "pixel_attention_mask": out["pixel_attention_mask"],
                "spatial_shapes": shapes, "image_grid_hw": shapes.clone()}
    patches, grids = [], []
    P = spec.patch_size
    for img in images:
        h, w = smart_resize(img.height, img.width, P, spec.min_tokens * P * P, spec.max_tokens * P * P)
        px = normalize(to_tensor(img.convert("RGB").resize((w, h), Image.BILINEAR)), spec.image_mean, spec.image_std)
        p, grid = patchify(px, P)
        patches.append(p)
        grids.append(grid)
    return {"pixel_values": torch.cat(patches), "image_grid_hw": torch.tensor(grids)}


class EncodeError(ValueError):
    """A conversation that cannot be encoded; ``reason`` is a short stable label the data statistics count by (the
    same labels :class:`mllm.data.LlavaDataset` uses when it checks records)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ConversationEncoder:
    """Tokenizes a LLaVA conversation into ``input_ids`` and assistant-only ``labels``.

    ``template="chat"``: the LLM's own chat format (``<|im_start|>role ... <|im_end|>``, with a system prompt).
    ``template="plain"``: LLaVA's alignment format: the image tokens, then the first answer and a newline; no roles,
    no system prompt, the question dropped (only its images kept); the answer and the newline are supervised.
    """

    def __init__(self, tokenizer, spec: ImageSpec, image_token_id: int, system: str | None = DEFAULT_SYSTEM,
                 max_length: int = 2048, template: str = "chat") -> None:
        if template not in ("chat", "plain"):
            raise ValueError(f"unknown conversation template {template!r}; use chat or plain")
        self.tok, self.spec, self.image_token_id = tokenizer, spec, image_token_id
        self.system, self.max_length, self.template = system, max_length, template
        self.im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
        self.im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.newline = tokenizer("\n", add_special_tokens=False).input_ids

    def _text(self, s: str) -> list[int]:
        return self.tok(s, add_special_tokens=False).input_ids if s else []

    def _content(self, text: str, images: list[Image.Image], cursor: list[int]) -> list[int]:
        ids: list[int] = []
        parts = text.split(IMAGE_PLACEHOLDER)
        for i, part in enumerate(parts):
            if i > 0:
                if cursor[0] >= len(images):
                    raise EncodeError("image_placeholder_mismatch",
                                      f"the conversation has more {IMAGE_PLACEHOLDER} than images ({len(images)})")
                ids += [self.image_token_id] * self.spec.num_tokens(images[cursor[0]])
                cursor[0] += 1
            ids += self._text(part)
        return ids

    def encode(self, conversations: list[dict], images: list[Image.Image], add_generation_prompt: bool = False):
        """``(input_ids, labels)`` as lists; raises :class:`EncodeError` (a ``ValueError``) for malformed
        conversations and for truncation that would cut an image. ``self.cut`` says whether this one was cut to
        ``max_length`` (trained on, and counted)."""
        self.cut = False
        if self.template == "plain":
            return self._encode_plain(conversations, images)
        ids: list[int] = []
        labels: list[int] = []
        cursor = [0]
        msgs = [{"from": "system", "value": self.system}] if self.system and (
            not conversations or ROLES.get(conversations[0].get("from")) != "system") else []
        for m in msgs + list(conversations):
            role = ROLES.get(m.get("from", m.get("role")))
            if role is None:
                raise EncodeError("bad_role", f"unknown conversation role {m.get('from', m.get('role'))!r}")
            value = m.get("value", m.get("content"))
            if not isinstance(value, str):
                raise EncodeError("bad_value", "a conversation turn has no text")
            head = [self.im_start] + self._text(role) + self.newline
            body = self._content(value, images, cursor) + [self.im_end]
            tail = self.newline
            ids += head + body + tail
            sup = role == "assistant"
            labels += [IGNORE_INDEX] * len(head) + (body if sup else [IGNORE_INDEX] * len(body)) + \
                [IGNORE_INDEX] * len(tail)
        if cursor[0] != len(images):
            raise EncodeError("image_placeholder_mismatch",
                              f"{len(images)} images but {cursor[0]} {IMAGE_PLACEHOLDER} placeholders")
        if add_generation_prompt:
            gen = [self.im_start] + self._text("assistant") + self.newline
            ids += gen
            labels += [IGNORE_INDEX] * len(gen)
        if len(ids) > self.max_length:
            n_img = sum(1 for t in ids[self.max_length:] if t == self.image_token_id)
            if n_img:
                raise EncodeError("too_long",
                                  f"truncating at {self.max_length} tokens would cut an image; raise max_length")
            ids, labels, self.cut = ids[: self.max_length], labels[: self.max_length], True
        return ids, labels

    def _encode_plain(self, conversations: list[dict], images: list[Image.Image]):
        turns = [(ROLES.get(m.get("from", m.get("role"))), m.get("value", m.get("content"))) for m in conversations]
        answers = [v for r, v in turns if r == "assistant"]
        if not answers or not isinstance(answers[0], str):
            raise EncodeError("no_answer", "the plain template needs an assistant turn")
        n_placeholders = sum(v.count(IMAGE_PLACEHOLDER) for r, v in turns if r != "assistant" and isinstance(v, str))
        if n_placeholders != len(images):
            raise EncodeError("image_placeholder_mismatch",
                              f"{len(images)} images but {n_placeholders} {IMAGE_PLACEHOLDER} placeholders")
        prefix = self._content(IMAGE_PLACEHOLDER * len(images), images, [0])
        answer = self._text(answers[0]) + self.newline
        ids, labels = prefix + answer, [IGNORE_INDEX] * len(prefix) + answer
        if len(ids) > self.max_length:
            if len(prefix) >= self.max_length:
                raise EncodeError("too_long",
                                  f"truncating at {self.max_length} tokens would cut an image; raise max_length")
            ids, labels, self.cut = ids[: self.max_length], labels[: self.max_length], True
        return ids, labels
