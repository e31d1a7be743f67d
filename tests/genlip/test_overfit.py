"""Overfit one batch: a tiny GenLIP learns to caption a handful of fixed images, then says the captions back."""

import torch

from genlip.config import genlip_config
from genlip.loss import IGNORE_INDEX
from genlip.modeling import GenLIPForCaptioning


def test_tiny_model_learns_to_caption_fixed_images():
    torch.manual_seed(0)
    V, eos, prompt = 40, 1, [2, 3]
    model = GenLIPForCaptioning(genlip_config("tiny", patch_size=8, vocab_size=V, eos_token_id=eos))
    # four images that differ in colour and layout, each with its own caption
    pix = torch.zeros(4, 3, 16, 16)
    pix[0, 0] = 1
    pix[1, 1, :8] = 1
    pix[2, 2, :, 8:] = 1
    pix[3] = torch.linspace(-1, 1, 16)
    captions = [[10, 11, 12, 13], [14, 15, 16, 17], [18, 19, 20, 21], [22, 23, 12, 24]]
    ids = torch.tensor([prompt + c + [eos] for c in captions])
    labels = ids.clone()
    labels[:, : len(prompt)] = IGNORE_INDEX
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.0)
    model.train()
    first = None
    for _ in range(150):
        loss = model(ids, pix, labels=labels).loss
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 3.0 and loss.item() < 0.02, (first, loss.item())
    model.eval()
    assert model.caption(pix, prompt, max_new_tokens=8, eos_token_id=eos) == captions
