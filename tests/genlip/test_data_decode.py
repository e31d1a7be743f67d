"""Bad input is converted correctly or skipped with a reason, never crashes and never passes silently."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from genlip.data.decode import SkipSample, caption_from_record, decode_image


def _bytes(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _reason(data, **kw):
    with pytest.raises(SkipSample) as e:
        decode_image(data, **kw)
    return e.value.reason


def test_unusable_payloads_are_skipped_with_reasons():
    good = _bytes(Image.new("RGB", (32, 32), (10, 20, 30)), "JPEG")
    assert _reason(None) == "missing_image"
    assert _reason(b"") == "empty_image"
    assert _reason(b"this is a caption, not an image") == "corrupt_image"
    assert _reason(good[: len(good) // 2]) == "corrupt_image", "truncated JPEG"
    assert _reason(_bytes(Image.new("RGB", (1, 1)))) == "too_small"
    assert _reason(_bytes(Image.new("RGB", (402, 2)))) == "aspect_ratio"
    assert _reason(_bytes(Image.new("RGB", (64, 64))), max_pixels=1000) == "too_large"
    assert decode_image(_bytes(Image.new("RGB", (400, 2))), min_size=2).size == (400, 2), "ratio 200 is allowed"


def test_palette_with_transparency_goes_through_rgba():
    p = Image.new("P", (8, 8))
    p.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    p.paste(1, (0, 0, 4, 8))
    p.info["transparency"] = 1  # the blue half is transparent -> white
    out = decode_image(_bytes(p))
    assert out.mode == "RGB"
    assert out.getpixel((6, 2)) == (255, 0, 0) and out.getpixel((1, 2)) == (255, 255, 255)


def test_alpha_is_composited_on_white_and_la_works():
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    rgba.paste((0, 128, 0, 255), (0, 0, 4, 8))
    out = decode_image(_bytes(rgba))
    assert out.getpixel((1, 1)) == (0, 128, 0) and out.getpixel((6, 1)) == (255, 255, 255)
    la = Image.new("LA", (8, 8), (50, 255))
    assert decode_image(_bytes(la)).getpixel((0, 0)) == (50, 50, 50)


def test_cmyk_and_16bit_are_converted_not_clipped():
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    r, g, b = decode_image(_bytes(cmyk, "JPEG", quality=100)).getpixel((4, 4))
    assert r > 240 and g < 20 and b < 20
    arr = np.full((8, 8), 32896, dtype=np.uint16)  # mid-grey in 16 bits
    arr[:, :4] = 65535
    img16 = Image.fromarray(arr)
    out = decode_image(_bytes(img16))
    assert out.getpixel((6, 0)) == (128, 128, 128), "16-bit mid-grey must not clip to white"
    assert out.getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 20, 20))  # red on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    out = decode_image(_bytes(img, "JPEG", exif=exif, quality=95))
    assert out.size == (20, 40)
    r, _, b = out.getpixel((10, 5))
    assert r > 200 and b < 60, "after rotating 90 CW the left (red) half is on top"


def test_caption_fields_fallback_and_empty():
    rec = {"txt": b"  ", "json": json.dumps({"re_caption": "", "caption": "alt text"}).encode()}
    assert caption_from_record(rec, ["json.re_caption", "txt", "caption"]) == "alt text"
    rec2 = {"json": json.dumps({"re_caption": "a long description"}).encode(), "txt": b"short"}
    assert caption_from_record(rec2, ["json.re_caption", "txt"]) == "a long description"
    with pytest.raises(SkipSample) as e:
        caption_from_record({"txt": b"   "}, ["txt"])
    assert e.value.reason == "empty_caption"
    with pytest.raises(SkipSample) as e:
        caption_from_record({"png": b""}, ["txt", "json.caption"])
    assert e.value.reason == "missing_caption"
    with pytest.raises(SkipSample) as e:
        caption_from_record({"txt": b"\xff\xfe\xfa"}, ["txt"])
    assert e.value.reason == "bad_caption"


def test_the_field_a_caption_came_from_is_reported_and_release_formats_read():
    from genlip.data.decode import find_caption

    rec = {"txt": b"alt text", "json": json.dumps({"re_caption": ""}).encode()}
    assert find_caption(rec, ["json.re_caption", "txt"]) == ("alt text", "txt")  # a fallback, and it says so
    with pytest.raises(SkipSample) as e:  # naming one field requires it
        find_caption(rec, ["json.re_caption"])
    assert e.value.reason == "empty_caption"
    # the reference release's stage-1 shards: the caption in json.caption
    stage1 = {"json": json.dumps({"caption": "a red bus"}).encode()}
    assert find_caption(stage1, ["json.caption"]) == ("a red bus", "json.caption")
    # its stage-2 shards: the caption is the assistant's turn of the record's conversation
    conv = [{"from": "human", "value": "<image>\nDescribe the image in detail."},
            {"from": "gpt", "value": "A long description of a red bus."}]
    stage2 = {"json": json.dumps({"conversations": conv}).encode()}
    assert find_caption(stage2, ["json.conversations"]) == ("A long description of a red bus.",
                                                            "json.conversations")
    chat = {"json": json.dumps({"messages": [{"role": "user", "content": "x"},
                                             {"role": "assistant", "content": "y"}]}).encode()}
    assert find_caption(chat, ["json.messages"])[0] == "y"


def test_captions_are_cut_only_when_asked_and_cuts_are_reported():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from genlip.data.sequence import CaptionEncoder

    words = {f"w{i}": i for i in range(300)}
    tk = Tokenizer(models.WordLevel(words, unk_token="w0"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk)
    tok.add_special_tokens({"eos_token": "<|im_end|>"})
    caption = " ".join(f"w{i % 300}" for i in range(1000))
    whole = CaptionEncoder(tok, prompt="", max_caption_tokens=None, eos="<|im_end|>")
    ids, _, cut = whole.encode(caption)
    assert ids.numel() == 1001 and not cut  # the paper's stage 1: no cap
    capped = CaptionEncoder(tok, prompt="", max_caption_tokens=128, eos="<|im_end|>")
    ids, _, cut = capped.encode(caption)
    assert ids.numel() == 129 and cut
    ids, _, cut = capped.encode("w1 w2 w3")
    assert ids.numel() == 4 and not cut
    ids, _, cut = whole.encode(caption, room=50)  # stage 2: what is left of the row
    assert ids.numel() == 51 and cut
