"""The supported ways to load a ``resize`` / ``anyres`` MLLM with transformers, exactly as the README states them:
with a SigLIP (or CLIP, AIMv2) tower plain transformers loads it; with a GenLIP tower the process must
``import genlip`` first (it registers GenLIP with the Auto classes), and without it transformers refuses."""

import os
import subprocess
import sys

import pytest
import torch

from mllm.build import build_mllm, save_mllm
from tests.mllm_fixtures import make_llm, make_towers

LOAD = ("from transformers import AutoModelForImageTextToText, AutoProcessor; import sys; "
        "m = AutoModelForImageTextToText.from_pretrained(sys.argv[1]); AutoProcessor.from_pretrained(sys.argv[1]); "
        "print(type(m).__name__, type(m.model.vision_tower).__name__)")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("plain")
    towers, llm = make_towers(root), make_llm(root)
    out = {}
    for tower, mode in (("siglip", "resize"), ("genlip", "resize"), ("genlip", "anyres")):
        torch.manual_seed(0)
        model, tok, spec = build_mllm(str(towers[tower]), str(llm), mode, image_size=32)
        out[(tower, mode)] = root / f"{tower}_{mode}"
        save_mllm(out[(tower, mode)], model, tok, spec)
    return out


def _load(path, prelude: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", prelude + LOAD, str(path)], capture_output=True, text=True, env=env,
                          cwd=path)  # not the folder holding a tower named genlip/


def test_a_siglip_tower_loads_with_plain_transformers(saved):
    p = _load(saved[("siglip", "resize")])
    assert p.returncode == 0 and p.stdout.split() == ["LlavaForConditionalGeneration", "SiglipVisionModel"], p.stderr


@pytest.mark.parametrize("mode,cls", [("resize", "LlavaForConditionalGeneration"),
                                      ("anyres", "LlavaNextForConditionalGeneration")])
def test_a_genlip_tower_needs_import_genlip_first(saved, mode, cls):
    plain = _load(saved[("genlip", mode)])
    assert plain.returncode != 0 and "genlip" in plain.stderr.splitlines()[-1], plain.stderr[-500:]
    p = _load(saved[("genlip", mode)], "import genlip; ")
    assert p.returncode == 0 and p.stdout.split() == [cls, "GenLIPVisionModel"], p.stderr[-2000:]


def test_apply_chat_template_takes_both_message_forms_and_matches_training(saved):
    """transformers' standard parts list and a string with ``<image>`` give the same prompt, and it is the format
    the harness trains on (ConversationEncoder), image tokens and all."""
    from PIL import Image
    from transformers import AutoProcessor

    from mllm.build import load_mllm
    from mllm.processing import ConversationEncoder

    path = saved[("siglip", "resize")]
    proc = AutoProcessor.from_pretrained(path)
    parts = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is drawn?"}]}]
    plain = [{"role": "user", "content": "<image>What is drawn?"}]
    a = proc.apply_chat_template(parts, add_generation_prompt=True, tokenize=False)
    b = proc.apply_chat_template(plain, add_generation_prompt=True, tokenize=False)
    assert a == b == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>What is "
                      "drawn?<|im_end|>\n<|im_start|>assistant\n")
    image = Image.new("RGB", (40, 30), (200, 30, 30))
    got = proc(text=a, images=[image], return_tensors="pt")["input_ids"][0].tolist()
    _, tok, spec, _ = load_mllm(path)
    enc = ConversationEncoder(tok, spec, tok.convert_tokens_to_ids("<image>"))
    want, _ = enc.encode([{"from": "human", "value": "<image>What is drawn?"}], [image], add_generation_prompt=True)
    assert got == want
