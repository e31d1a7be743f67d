"""``genlip-mllm chat`` with an image or model it cannot use: one line naming the file, exit code 2, no traceback."""

import os

import pytest

from tests.cli import run_cli


@pytest.mark.parametrize("kind,words", [("missing", "No such file"), ("text", "is not an image"),
                                        ("broken_png", "is not an image"), ("no_model", "no_model: no such directory"),
                                        ("not_mllm", "is not an MLLM directory"),
                                        ("huge", "is too large to decode safely (too_large: "),
                                        ("elongated", "is too elongated (aspect_ratio: ")])
def test_unusable_inputs_are_one_line(tmp_path, kind, words):
    image = tmp_path / "x.png"
    if kind == "text":
        image.write_text("not an image")
    elif kind == "broken_png":
        image.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    elif kind in ("huge", "elongated"):  # valid images it will not decode (found by a user: "not an image")
        from PIL import Image

        Image.new("1", (10000, 10000) if kind == "huge" else (600, 2)).save(image)
    elif kind in ("no_model", "not_mllm"):
        from PIL import Image

        Image.new("RGB", (8, 8)).save(image)
        if kind == "not_mllm":
            (tmp_path / "no_model").mkdir()
    args = ["chat", "--model", str(tmp_path / "no_model"), "--prompt", "hi", "--image", str(image)]
    code, _, err = run_cli("genlip-mllm", *args, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                           subprocess=kind == "broken_png")  # the installed script once; the rest in this process
    lines = [x for x in err.strip().splitlines() if " INFO " not in x]
    assert code == 2 and len(lines) == 1 and words in lines[0] and "Traceback" not in err, err
    assert str(tmp_path) in lines[0]  # names the file


@pytest.mark.parametrize("args,words", [(["--max-new-tokens", "0"], "--max-new-tokens must be at least 1, got 0"),
                                        (["--sample", "--temperature", "-1"],
                                         "--temperature must be above 0 with --sample, got -1.0"),
                                        (["--temperature", "0.2"], "--temperature only applies with --sample (the "
                                                                   "default is greedy decoding)")])
def test_generation_settings_out_of_range_are_one_line(tmp_path, args, words):
    code, _, err = run_cli("genlip-mllm", "chat", "--model", str(tmp_path), "--prompt", "hi", *args,
                           env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert code == 2 and err.strip().splitlines() == [f"genlip-mllm: {words}"], err


@pytest.mark.parametrize("reply", ["", "B"])
def test_an_empty_answer_is_said(tmp_path, monkeypatch, reply):
    """A barely trained model often ends at once: chat printed a bare empty line (found by a user)."""
    import mllm.cli

    monkeypatch.setattr(mllm.cli, "load_mllm", lambda path: (None, None, None, None))
    monkeypatch.setattr(mllm.cli, "answer", lambda *a: reply)
    code, out, err = run_cli("genlip-mllm", "chat", "--model", str(tmp_path), "--prompt", "hi")
    assert code == 0 and out == f"{reply}\n"
    assert (err.strip() == "genlip-mllm: the answer is empty (the model ended at once, as a barely trained one "
                           "does)") == (reply == ""), err
