"""LLaVA conversations: assistant-only labels, images expanded in order, bad records counted, truncation."""

import json

import pytest
import torch
from PIL import Image

from genlip.data.sources import DataError
from genlip.loss import IGNORE_INDEX
from mllm.build import build_mllm
from mllm.data import Collator, LlavaDataset
from mllm.processing import ConversationEncoder, make_image_processor
from tests.mllm_fixtures import make_llm, make_towers


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("d")
    towers, llm = make_towers(root), make_llm(root)
    model, tok, spec = build_mllm(str(towers["siglip"]), str(llm), "resize")
    return tok, spec, model.config.image_token_id


def test_only_assistant_turns_are_supervised(setup):
    tok, spec, img_id = setup
    enc = ConversationEncoder(tok, spec, img_id)
    conv = [{"from": "human", "value": "<image>\nwhat color?"}, {"from": "gpt", "value": "red"},
            {"from": "human", "value": "sure?"}, {"from": "gpt", "value": "the word apple"}]
    ids, labels = enc.encode(conv, [Image.new("RGB", (32, 32))])
    sup = [i for i, lab in zip(ids, labels) if lab != IGNORE_INDEX]
    assert tok.decode(sup) == "red<|im_end|>the word apple<|im_end|>"
    assert all(lab == IGNORE_INDEX for i, lab in zip(ids, labels) if i == img_id)
    assert ids.count(img_id) == 16
    text = tok.decode(ids)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")


def test_images_expand_in_order_and_counts_must_match(setup):
    tok, spec, img_id = setup
    enc = ConversationEncoder(tok, spec, img_id)
    ids, _ = enc.encode([{"from": "human", "value": "<image> and <image>"}, {"from": "gpt", "value": "ok"}],
                        [Image.new("RGB", (32, 32))] * 2)
    assert ids.count(img_id) == 32
    with pytest.raises(ValueError, match="placeholders"):
        enc.encode([{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "x"}],
                   [Image.new("RGB", (8, 8))] * 2)
    with pytest.raises(ValueError, match="truncating"):
        ConversationEncoder(tok, spec, img_id, max_length=20).encode(
            [{"from": "human", "value": "hi <image>"}, {"from": "gpt", "value": "x"}], [Image.new("RGB", (8, 8))])
    ids, labels = ConversationEncoder(tok, spec, img_id, max_length=40).encode(
        [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "describe the image " * 20}], [])
    assert len(ids) == len(labels) == 40


def test_bad_records_are_counted_and_decode_failures_dropped(setup, tmp_path):
    tok, spec, img_id = setup
    root = tmp_path / "img"
    root.mkdir()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(root / "ok.png")
    (root / "broken.png").write_bytes(b"not a png")
    qa = [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]
    good = {"image": "ok.png", "conversations": qa}
    records = [good] * 30 + [
        {"image": "missing.png", "conversations": good["conversations"]},
        {"image": "ok.png", "conversations": [{"from": "human", "value": "no image"}, {"from": "gpt", "value": "a"}]},
        {"image": "ok.png", "conversations": [{"from": "human", "value": "<image>"}]},
        {"image": "broken.png", "conversations": good["conversations"]},
    ]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(records))
    ds = LlavaDataset(path, root, ConversationEncoder(tok, spec, img_id))
    assert dict(ds.skipped) == {"missing_image": 1, "image_placeholder_mismatch": 1, "no_answer": 1}
    assert len(ds) == 31
    batch = Collator(spec, make_image_processor(spec), 0)([ds[0], ds[30], ds[1]])
    assert int(batch["n_skipped"]) == 1 and batch["input_ids"].shape[0] == 2
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    path.write_text(json.dumps([records[-2]] * 5 + [good]))
    with pytest.raises(DataError, match="above max_skip_fraction"):
        LlavaDataset(path, root, ConversationEncoder(tok, spec, img_id))


def test_jsonl_and_multi_image_records(setup, tmp_path):
    tok, spec, img_id = setup
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    rec = {"image": ["a.png", "a.png"], "conversations": [{"from": "human", "value": "<image><image> same?"},
                                                          {"from": "gpt", "value": "yes"}]}
    (tmp_path / "d.jsonl").write_text(json.dumps(rec) + "\n{broken\n" + json.dumps(rec) + "\n")
    ds = LlavaDataset(tmp_path / "d.jsonl", tmp_path, ConversationEncoder(tok, spec, img_id), max_skip_fraction=0.5)
    assert len(ds) == 2 and ds.skipped["bad_record"] == 1
    batch = Collator(spec, make_image_processor(spec), 0)([ds[0], ds[1]])
    assert batch["pixel_values"].shape[0] == 4
    assert int((batch["input_ids"] == img_id).sum()) == 4 * 16
    assert torch.equal(batch["attention_mask"].sum(1), torch.tensor([len(ds[0]["input_ids"])] * 2))
