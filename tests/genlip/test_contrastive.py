"""The SigLIP-style baseline objective: its loss equals the sigmoid loss written out pair by pair, it trains through
``genlip-pretrain model.objective=sigmoid``, and its checkpoint loads as a plain GenLIP encoder."""

import math

import pytest
import torch

from genlip.config import genlip_config
from genlip.contrastive import GenLIPForContrastive
from genlip.masks import image_only_layout
from genlip.modeling import GenLIPVisionModel
from tests.genlip.test_pretrain_cli import _losses, _run


def _tiny(**kw):
    return genlip_config("tiny", patch_size=8, vocab_size=64, text_tower={"layers": 1, "max_len": 16}, **kw)


def test_loss_is_the_pairwise_sigmoid_loss():
    torch.manual_seed(0)
    model = GenLIPForContrastive(_tiny()).eval()
    B = 5
    pix = torch.randn(B, 3, 16, 16)
    ids = torch.randint(1, 64, (B, 9))
    labels = ids.clone()
    labels[:, :3] = -100  # the prompt: not read by the text tower
    labels[0, 7:] = -100  # a shorter caption
    out = model(ids, pix, labels=labels)
    img = model.encode_image(pix)
    txt = model.encode_text(ids, labels != -100)
    t, b = model.contrastive.logit_scale.detach().exp(), model.contrastive.logit_bias.detach()
    assert float(t) == pytest.approx(10.0) and float(b) == pytest.approx(-10.0)
    ref = 0.0
    for i in range(B):
        for j in range(B):
            z = 1.0 if i == j else -1.0
            ref -= math.log(torch.sigmoid(z * (t * (img[i] @ txt[j]) + b)).item())
    assert float(out.loss.detach()) == pytest.approx(ref / B, rel=1e-5)
    # the text tower reads only the caption: changing a prompt token changes nothing, a caption token does
    ids2 = ids.clone()
    ids2[:, 0] = (ids2[:, 0] + 1) % 64
    assert torch.allclose(model.encode_text(ids2, labels != -100), txt)
    ids2[1, 5] = (ids2[1, 5] + 1) % 64
    assert not torch.allclose(model.encode_text(ids2, labels != -100)[1], txt[1])
    # both embeddings are L2-normalised, so ``img[i] @ txt[j]`` above is a cosine similarity
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(B))
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(B))
    # gradients reach the encoder and both scalars
    out.loss.backward()
    assert model.vit.blocks[0].attn.q_proj.weight.grad.abs().sum() > 0
    assert model.contrastive.logit_scale.grad is not None and model.contrastive.logit_scale.grad.abs() > 0
    # d loss / d bias = -(1/B) * sum_ij z_ij * sigmoid(-z_ij * logit_ij), written out from the loss above
    z = 2 * torch.eye(B) - 1
    logits = t * (img.detach() @ txt.detach().t()) + b
    expected = -(z * torch.sigmoid(-z * logits)).sum() / B
    assert float(model.contrastive.logit_bias.grad) == pytest.approx(float(expected), rel=1e-4)


def test_pretrain_cli_trains_the_baseline_and_it_loads_as_an_encoder(tmp_path):
    home = tmp_path / "home"
    out = tmp_path / "siglip"
    _run(home, out, "model.objective=sigmoid", "model.overrides.text_tower={layers: 1, max_len: 32}",
         "optim.lr=1e-3")
    losses = _losses(out)
    assert losses[12][0] < losses[1][0], losses
    ckpt = sorted((out / "checkpoints").glob("step_*"))[-1]
    full = GenLIPForContrastive.from_pretrained(str(ckpt)).eval()
    enc = GenLIPVisionModel.from_pretrained(str(ckpt)).eval()
    x = torch.randn(2, 3, 32, 32)
    ref = full.vit(full.vit.patch_embed(x), image_only_layout(2, 2, 2))[0]
    torch.testing.assert_close(enc(x).last_hidden_state, ref, atol=1e-6, rtol=1e-6)
    # stage 2 (native packing) is refused with the reason
    p = _run(home, tmp_path / "bad", "model.objective=sigmoid", "data.native=true", check=False)
    assert p.returncode != 0 and "fixed resolution" in (p.stderr + p.stdout)


def test_text_tools_refuse_a_contrastive_checkpoint(tmp_path):
    from genlip.tools.common import load_captioner

    GenLIPForContrastive(_tiny()).save_pretrained(str(tmp_path / "c"))
    with pytest.raises(ValueError, match="no LM head"):
        load_captioner(tmp_path / "c")
