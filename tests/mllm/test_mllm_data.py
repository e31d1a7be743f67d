"""LLaVA conversations: assistant-only labels, images expanded in order, bad records counted, truncation."""

import json
import logging

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
    assert batch["skip_reasons"] == ["corrupt_image"] and batch["input_ids"].shape[0] == 2
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
    assert len(ds) == 2 and dict(ds.skipped) == {"bad_json": 1}
    batch = Collator(spec, make_image_processor(spec), 0)([ds[0], ds[1]])
    assert batch["pixel_values"].shape[0] == 4
    assert int((batch["input_ids"] == img_id).sum()) == 4 * 16
    assert torch.equal(batch["attention_mask"].sum(1), torch.tensor([len(ds[0]["input_ids"])] * 2))


def _qa(answer="a", image=True):
    return [{"from": "human", "value": ("<image>\n" if image else "") + "q"}, {"from": "gpt", "value": answer}]


def test_jsonl_lines_are_decoded_one_at_a_time(setup, tmp_path, caplog):
    """One Latin-1 byte, one broken line, one line that is not an object: each skipped under its own reason, named by
    file and line; the other records are kept."""
    tok, spec, img_id = setup
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    good = json.dumps({"image": "a.png", "conversations": _qa()}).encode()
    latin1 = json.dumps({"image": "a.png", "conversations": _qa("CAFE")}).encode().replace(b"CAFE", b"caf\xe9")
    lines = [good] * 4 + [latin1] + [good] * 3 + [b"{broken", b"", b"[1, 2]"] + [good] * 20
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    with caplog.at_level(logging.WARNING, logger="mllm.data"):
        ds = LlavaDataset(path, tmp_path, ConversationEncoder(tok, spec, img_id))
    assert dict(ds.skipped) == {"bad_encoding": 1, "bad_json": 1, "bad_record": 1} and len(ds) == 27
    assert ds.first_skip["bad_encoding"].startswith("line 5 ") and ds.first_skip["bad_json"].startswith("line 9 ")
    assert ds.first_skip["bad_record"].startswith("line 11 ")  # line numbers count the empty line
    assert any(f"{path} line 5: skipped (bad_encoding" in r.getMessage() for r in caplog.records), caplog.text
    path.write_bytes(b"\n".join([latin1] * 3 + [good]))
    with pytest.raises(DataError, match=rf"{path}: 3 of 4 records unusable .*bad_encoding: line 1 "):
        LlavaDataset(path, tmp_path, ConversationEncoder(tok, spec, img_id))


def test_json_list_keeps_its_records_around_one_not_utf8(setup, tmp_path, caplog):
    tok, spec, img_id = setup
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    records = [{"image": "a.png", "conversations": _qa("CAFE" if i == 3 else "a")} for i in range(20)]
    path = tmp_path / "d.json"
    path.write_bytes(json.dumps(records).encode().replace(b"CAFE", b"caf\xe9"))
    with caplog.at_level(logging.WARNING, logger="mllm.data"):
        ds = LlavaDataset(path, tmp_path, ConversationEncoder(tok, spec, img_id))
    assert dict(ds.skipped) == {"bad_encoding": 1} and len(ds) == 19
    assert ds.first_skip["bad_encoding"].startswith("record 4")
    assert any(f"{path} record 4: skipped (bad_encoding" in r.getMessage() for r in caplog.records), caplog.text
    # a file that is not JSON at all (here: JSONL named .json) is one line naming the file and where
    path.write_text("\n".join(json.dumps(r) for r in records))
    with pytest.raises(DataError) as e:
        LlavaDataset(path, tmp_path, ConversationEncoder(tok, spec, img_id))
    assert str(e.value).startswith(f"{path}: not valid JSON: Extra data at line 2 column 1") and \
        "\n" not in str(e.value) and ".jsonl" in str(e.value)


def test_wrong_value_types_are_counted_when_opened(setup, tmp_path):
    """An answer that is the number 42, a turn that is not an object, a turn without ``from``, an image that is not a
    path: each counted under its own reason when the dataset opens, none left to fail during training."""
    tok, spec, img_id = setup
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    good = {"image": "a.png", "conversations": _qa()}
    bad = [{"image": "a.png", "conversations": _qa(42)},
           {"image": "a.png", "conversations": [_qa()[0], "answer"]},
           {"image": "a.png", "conversations": [{"value": "<image>\nq"}, _qa()[1]]},
           {"image": 5, "conversations": _qa()}]
    path = tmp_path / "d.json"
    path.write_text(json.dumps([good] * 40 + bad))
    ds = LlavaDataset(path, tmp_path, ConversationEncoder(tok, spec, img_id))
    assert dict(ds.skipped) == {"bad_value": 1, "bad_turn": 1, "bad_role": 1, "bad_image_field": 1}
    assert len(ds) == 40
    assert ds.first_skip["bad_value"] == "record 41 (turn 2: 'value' is a JSON number, not a string)"


def test_training_time_skips_carry_their_reasons(setup, tmp_path):
    """A sample dropped from its batch is reported under its reason (SkipSample's for images, ``too_long`` for a
    conversation that truncation would cut through an image), not a bare count."""
    tok, spec, img_id = setup
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    long_q = [{"from": "human", "value": "describe the image " * 40 + "<image>"}, {"from": "gpt", "value": "a"}]
    long_a = [{"from": "human", "value": "<image>\ndescribe"}, {"from": "gpt", "value": "a long answer " * 40}]
    records = [{"image": "a.png", "conversations": _qa()}, {"image": "broken.png", "conversations": _qa()},
               {"image": "a.png", "conversations": long_q}, {"image": "a.png", "conversations": long_a}]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(records))
    ds = LlavaDataset(path, tmp_path, ConversationEncoder(tok, spec, img_id, max_length=64))
    assert [ds[i].get("skip") for i in range(4)] == [None, "corrupt_image", "too_long", None]
    batch = Collator(spec, make_image_processor(spec), 0)([ds[i] for i in range(4)])
    assert batch["skip_reasons"] == ["corrupt_image", "too_long"] and batch["input_ids"].shape[0] == 2
    # the long answer is cut to max_length and trained on: counted, not silent (found by a user)
    assert batch["cut_samples"] == 1 and len(ds[3]["input_ids"]) == 64 and not ds[0]["cut"] and ds[3]["cut"]
    with pytest.raises(DataError, match=r"every sample of a batch was unusable: \['corrupt_image', 'too_long'\]"):
        Collator(spec, make_image_processor(spec), 0)([ds[1], ds[2]])


def test_plain_template_is_llavas_alignment_format(setup):
    """LLaVA's ``plain``: the image, then the caption and a newline; no roles, no system prompt, no question."""
    tok, spec, img_id = setup
    enc = ConversationEncoder(tok, spec, img_id, template="plain")
    conv = [{"from": "human", "value": "Render a clear and concise summary of the photo.\n<image>"},
            {"from": "gpt", "value": "a red square on a table"}]
    ids, labels = enc.encode(conv, [Image.new("RGB", (32, 32))])
    n_img = spec.num_tokens(Image.new("RGB", (32, 32)))
    assert ids[:n_img] == [img_id] * n_img and labels[:n_img] == [IGNORE_INDEX] * n_img
    assert tok.decode(ids[n_img:]) == "a red square on a table\n"
    assert labels[n_img:] == ids[n_img:]  # the caption and its newline are supervised
    assert tok.convert_tokens_to_ids("<|im_start|>") not in ids
    chat = ConversationEncoder(tok, spec, img_id).encode(conv, [Image.new("RGB", (32, 32))])[0]
    assert len(chat) > len(ids) + 10  # the chat template adds the system prompt, roles and the question
    with pytest.raises(ValueError, match="placeholders"):
        enc.encode(conv, [])
