"""Batched answers (left-padded prompts, any number of images per sample) equal one-at-a-time answers, for every
image mode; the lmms-eval model batches requests and keeps their order."""

import pytest
import torch
from PIL import Image

from mllm.build import build_mllm
from mllm.chat import answer, answer_batch
from mllm.processing import make_image_processor
from tests.mllm_fixtures import make_llm, make_towers


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("b")
    return make_towers(root), make_llm(root)


def _img(seed, size):
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(size[1], size[0], 3, generator=g) * 255).byte().numpy())


ITEMS = [
    (_img(0, (32, 32)), "What is in the picture?"),
    (None, "Say something short."),
    ([_img(1, (48, 24)), _img(2, (24, 40))], "Compare <image> and <image> please, in a few words."),
    (_img(3, (40, 56)), "Colour?"),
]


@pytest.mark.parametrize("tower,mode", [("genlip", "resize"), ("siglip", "anyres"), ("genlip", "native")])
def test_batched_answers_equal_one_at_a_time(parts, tower, mode):
    towers, llm = parts
    torch.manual_seed(0)
    model, tok, spec = build_mllm(str(towers[tower]), str(llm), mode, image_size=32)
    with torch.no_grad():  # a random tiny LM repeats one token whatever it sees: make its answers depend on the input
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    ip = make_image_processor(spec)
    alone = [answer(model, tok, spec, ip, img, q, max_new_tokens=8) for img, q in ITEMS]
    batched = answer_batch(model, tok, spec, ip, ITEMS, max_new_tokens=8)
    assert batched == alone
    assert len(set(alone)) > 1  # the comparison could have failed: the answers differ between samples


def test_lmms_eval_model_batches_requests_in_their_order(parts):
    pytest.importorskip("lmms_eval")
    from types import SimpleNamespace

    from eval.lmms_model import GenlipMllm

    towers, llm = parts
    torch.manual_seed(0)
    model, tok, spec = build_mllm(str(towers["genlip"]), str(llm), "resize", image_size=32)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    ip = make_image_processor(spec)
    docs = [{"img": img, "q": q} for img, q in ITEMS] * 2

    def visual(d):
        return [] if d["img"] is None else (d["img"] if isinstance(d["img"], list) else [d["img"]])

    reqs = [SimpleNamespace(args=(d["q"], {"max_new_tokens": 6 + i % 2, "until": []}, visual, i, "t", "test"))
            for i, d in enumerate(docs)]
    answers = {}
    for bs in (1, 3):
        m = GenlipMllm.from_live(model, tok, spec, ip, batch_size=bs)
        m.task_dict = {"t": {"test": docs}}
        answers[bs] = m.generate_until(reqs)
    assert answers[3] == answers[1] and len(set(answers[1])) > 2
