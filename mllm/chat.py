"""One question about one image with a saved MLLM (KV-cached greedy or sampled generation)."""

from __future__ import annotations

import torch
from PIL import Image

from genlip.data.decode import SkipSample, decode_image
from mllm.processing import ConversationEncoder, preprocess_images


@torch.no_grad()
def answer(model, tokenizer, spec, image_processor, image: Image.Image | list[Image.Image] | None, prompt: str,
           max_new_tokens: int = 128, do_sample: bool = False, temperature: float = 1.0,
           system: str | None = "You are a helpful assistant.") -> str:
    """Greedy (or sampled) reply to ``prompt`` about one image or several (``<image>`` placeholders are added in
    front of the prompt for images it does not place itself)."""
    return answer_batch(model, tokenizer, spec, image_processor, [(image, prompt)], max_new_tokens, do_sample,
                        temperature, system)[0]


@torch.no_grad()
def answer_batch(model, tokenizer, spec, image_processor, items: list[tuple], max_new_tokens: int = 128,
                 do_sample: bool = False, temperature: float = 1.0,
                 system: str | None = "You are a helpful assistant.") -> list[str]:
    """Replies to several ``(image(s) or None, prompt)`` in one ``generate`` call: prompts left-padded with their
    attention mask, every sample's images in order (any number per sample). Greedy answers equal one-at-a-time
    ones (``tests/eval/test_eval_batching.py``)."""
    model.eval()
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    enc = ConversationEncoder(tokenizer, spec, image_id, system=system, max_length=10**6)
    seqs, all_images = [], []
    for image, prompt in items:
        images = [] if image is None else ([image] if isinstance(image, Image.Image) else list(image))
        missing = len(images) - prompt.count("<image>")
        text = "<image>" * missing + ("\n" if missing > 0 else "") + prompt
        ids, _ = enc.encode([{"from": "human", "value": text}], images, add_generation_prompt=True)
        seqs.append(ids)
        all_images += images
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    T = max(len(s) for s in seqs)
    input_ids = torch.tensor([[pad] * (T - len(s)) + s for s in seqs])
    mask = torch.tensor([[0] * (T - len(s)) + [1] * len(s) for s in seqs])
    device = next(model.parameters()).device
    inputs = {"input_ids": input_ids.to(device), "attention_mask": mask.to(device)}
    inputs.update({k: v.to(device) for k, v in preprocess_images(spec, all_images, image_processor).items()})
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=do_sample,
                         temperature=temperature if do_sample else None, eos_token_id=eos, pad_token_id=pad,
                         use_cache=True)
    return [tokenizer.decode(row[T:], skip_special_tokens=True).strip() for row in out]


class ChatInputError(ValueError):
    """An image or model directory ``genlip-mllm chat`` cannot use; the message is one line for the user."""


def load_image(path: str) -> Image.Image:
    """The image at ``path`` in RGB; a missing, unreadable or non-image file is a :class:`ChatInputError`."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ChatInputError(f"cannot read the image {path}: {e.strerror}") from None
    try:
        return decode_image(data)
    except SkipSample as e:
        why = {"too_large": "is too large to decode safely", "too_small": "is too small", "empty_image": "is empty",
               "aspect_ratio": "is too elongated"}.get(e.reason, "is not an image this toolkit can decode")
        raise ChatInputError(f"{path} {why} ({e})") from None
