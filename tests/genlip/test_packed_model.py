"""A packed row is exactly its samples processed alone: losses, gradients, isolation between samples."""

import pytest
import torch

from genlip.config import genlip_config
from genlip.data.packing import collate_packed
from genlip.image import patchify
from genlip.loss import IGNORE_INDEX
from genlip.modeling import GenLIPForCaptioning

P = 8


def _examples(seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for (h, w), n in [((16, 24), 6), ((8, 8), 4), ((24, 8), 5)]:
        img = torch.randn(3, h, w, generator=g)
        patches, grid = patchify(img, P)
        ids = torch.randint(0, 200, (n,), generator=g)
        labels = ids.clone()
        labels[:2] = IGNORE_INDEX  # the prompt
        out.append({"image": img, "patches": patches, "grid": grid, "input_ids": ids, "labels": labels})
    return out


def _model(drop_path=0.0):
    torch.manual_seed(0)
    return GenLIPForCaptioning(genlip_config("tiny-textproj", patch_size=P, vocab_size=200,
                                             drop_path_rate=drop_path))


def _packed(exs, row_len=40):
    return collate_packed([exs], row_len, pad_id=0)


def _alone(model, ex):
    return model(ex["input_ids"][None], ex["image"][None], labels=ex["labels"][None])


@pytest.mark.parametrize("backend", ["segments", "dense"])
def test_packed_loss_and_gradients_equal_samples_alone(backend):
    exs = _examples()
    model = _model()
    batch = _packed(exs)
    for k, ex in enumerate(exs):  # the loss of each sample, read from the packed row
        labels = batch["labels"].clone()
        labels[batch["sample_ids"] != k] = IGNORE_INDEX
        out = model(**{**batch, "labels": labels}, attn_backend=backend)
        alone = _alone(model, ex)
        torch.testing.assert_close(out.loss_sum, alone.loss_sum, atol=1e-5, rtol=1e-5)
        assert out.num_supervised == alone.num_supervised
    model.zero_grad()
    model(**batch, attn_backend=backend, num_items_in_batch=1).loss.backward()
    packed_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    sum(model(ex["input_ids"][None], ex["image"][None], labels=ex["labels"][None], num_items_in_batch=1).loss
        for ex in exs).backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(packed_grads[n], p.grad, atol=1e-5, rtol=1e-4, msg=n)


def test_perturbing_one_sample_changes_no_other_sample():
    exs = _examples()
    model = _model().eval()
    base = model(**{k: v for k, v in _packed(exs).items() if k != "labels"}, output_hidden_states=True)
    exs[1]["patches"] = exs[1]["patches"] + 1.0
    exs[1]["input_ids"] = (exs[1]["input_ids"] + 7) % 200
    batch = _packed(exs)
    out = model(**{k: v for k, v in batch.items() if k != "labels"}, output_hidden_states=True)
    sid = batch["sample_ids"][0]
    for layer in range(len(out.hidden_states)):
        a, b = base.hidden_states[layer][0], out.hidden_states[layer][0]
        assert torch.equal(a[sid != 1], b[sid != 1]), f"layer {layer}: another sample changed"
        assert not torch.allclose(a[sid == 1], b[sid == 1])


def test_text_never_changes_image_tokens():
    exs = _examples()
    model = _model().eval()
    before = _packed(exs)
    exs[0]["input_ids"] = (exs[0]["input_ids"] + 3) % 200
    after = _packed(exs)
    drop = {"labels"}
    h0 = model(**{k: v for k, v in before.items() if k not in drop}).last_hidden_state[0]
    h1 = model(**{k: v for k, v in after.items() if k not in drop}).last_hidden_state[0]
    img = before["image_ids"][0] >= 0
    assert torch.equal(h0[img], h1[img])
    assert not torch.allclose(h0[~img & (before["sample_ids"][0] == 0)], h1[~img & (after["sample_ids"][0] == 0)])


def test_flex_agrees_with_sdpa_on_packed_rows():
    exs = _examples()
    model = _model().eval()
    batch = {k: v for k, v in _packed(exs).items() if k != "labels"}
    with torch.no_grad():
        ref = model(**batch, attn_backend="segments").logits
        for backend in ("dense", "flex"):
            torch.testing.assert_close(model(**batch, attn_backend=backend).logits, ref, atol=1e-5, rtol=1e-5)
