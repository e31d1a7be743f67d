"""A tiny GenLIP checkpoint (model + trained tokenizer, as genlip-pretrain writes them) that has learned to say one
caption per generated image, for the encoder-tool tests."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

CAPTIONS = ["a red square on black", "green stripes across", "a blue corner here"]
SIZE = 16


def tool_images() -> list[Image.Image]:
    red = Image.new("RGB", (SIZE, SIZE), (0, 0, 0))
    red.paste((230, 20, 20), (4, 4, 12, 12))
    green = Image.new("RGB", (SIZE, SIZE), (0, 0, 0))
    for y in range(0, SIZE, 4):
        green.paste((20, 220, 20), (0, y, SIZE, y + 2))
    blue = Image.new("RGB", (SIZE, SIZE), (255, 255, 255))
    blue.paste((20, 20, 230), (0, 0, 8, 8))
    return [red, green, blue]


def make_captioner(root: Path, steps: int = 200, gated: bool = True, seed: int = 0) -> Path:
    """Train the tokenizer and overfit a tiny model (patch 8, 16 px) on the three images; save like a checkpoint."""
    from genlip.config import genlip_config
    from genlip.data.sequence import CaptionEncoder
    from genlip.data.tokenizer import train_tokenizer
    from genlip.data.transforms import fixed_resize
    from genlip.modeling import GenLIPForCaptioning

    out = Path(root)
    out.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(CAPTIONS * 4 + ["Describe the image in detail."] * 4, out, vocab_size=300)
    torch.manual_seed(seed)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    vocab = (len(tok) + 63) // 64 * 64
    cfg = genlip_config("tiny", patch_size=8, image_size=SIZE, vocab_size=vocab, eos_token_id=eos,
                        pad_token_id=tok.pad_token_id, gated_attention=gated, drop_path_rate=0.0)
    model = GenLIPForCaptioning(cfg)
    enc = CaptionEncoder(tok)
    seqs = [enc(c) for c in CAPTIONS]
    L = max(len(s[0]) for s in seqs)
    ids = torch.full((3, L), tok.pad_token_id)
    labels = torch.full((3, L), -100)
    mask = torch.zeros(3, L, dtype=torch.long)
    for i, (s, lab) in enumerate(seqs):
        ids[i, :len(s)], labels[i, :len(lab)], mask[i, :len(s)] = s, lab, 1
    pix = torch.stack([fixed_resize(im, SIZE, cfg.image_mean, cfg.image_std) for im in tool_images()])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.0)
    model.train()
    for _ in range(steps):
        loss = model(ids, pix, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.save_pretrained(str(out))
    return out
