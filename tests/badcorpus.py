"""A corpus of everything that goes wrong with real data, with a manifest of what a reader must count.

``write_wds_corpus`` / ``write_parquet_corpus`` / ``write_llava_corpus`` write shards, parquet files and LLaVA
JSONL with one defect per bad record (corrupt, truncated and empty images, odd image modes that must *not* be
skipped, empty, missing and non-UTF-8 captions, broken JSON, cut tar files, a cut parquet file, non-UTF-8 JSONL
lines, answers of the wrong type, missing and corrupt image files). Each returns a manifest: the number of usable
records, the count each skip reason must reach after one pass over the data, and (``used``) where the usable
records' captions came from and how many were cut.

Every shard ends with a usable record, so a run that has trained on exactly ``good`` records has read every bad one.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

from PIL import Image

from tests.datagen import caption_of, png

# kind -> the reason the reader must count (None: usable, e.g. an odd image mode converted properly)
WDS_KINDS = {
    "good": None,
    "corrupt": "corrupt_image",
    "cut_png": "corrupt_image",
    "zero_image": "empty_image",
    "tiny": "too_small",
    "elongated": "aspect_ratio",
    "empty_caption": "empty_caption",
    "no_caption": "missing_caption",
    "no_image": "missing_image",
    "latin1_caption": "bad_caption",
    "bad_json": "bad_metadata",
    "palette": None,
    "cmyk": None,
    "i16": None,
    "la": None,
    "huge_caption": None,  # cut to data.max_caption_tokens, not skipped (counted as caption_cut)
    "json_caption": None,  # no .txt: the caption comes from the next field, json.caption (counted as such)
}


def _image(mode: str, size=(24, 16)) -> bytes:
    buf = io.BytesIO()
    if mode == "P":
        Image.new("RGB", size, (10, 200, 30)).convert("P").save(buf, format="PNG")
    elif mode == "CMYK":
        Image.new("CMYK", size, (10, 20, 30, 0)).save(buf, format="JPEG")
    elif mode == "I;16":
        Image.new("I;16", size, 3000).save(buf, format="PNG")
    elif mode == "LA":
        Image.new("LA", size, (120, 128)).save(buf, format="PNG")
    return buf.getvalue()


def _wds_record(i: int, kind: str) -> dict:
    cap = caption_of(i)
    rec = {"__key__": f"{i:06d}", "png": png((i * 7 % 255, 40, 90)), "txt": cap.encode(),
           "json": json.dumps({"caption": cap, "index": i}).encode()}
    if kind == "corrupt":
        rec["png"] = b"not an image at all"
    elif kind == "cut_png":
        rec["png"] = png(size=(64, 64))[:60]
    elif kind == "zero_image":
        rec["png"] = b""
    elif kind == "tiny":
        rec["png"] = png(size=(1, 1))
    elif kind == "elongated":
        rec["png"] = png(size=(600, 2))
    elif kind == "empty_caption":
        rec["txt"], rec["json"] = b"  ", json.dumps({"caption": "", "index": i}).encode()
    elif kind == "no_caption":
        del rec["txt"]
        rec["json"] = json.dumps({"index": i}).encode()
    elif kind == "no_image":
        del rec["png"]
    elif kind == "latin1_caption":
        rec["txt"] = "caf\xe9 au lait".encode("latin-1")
        del rec["json"]
    elif kind == "bad_json":
        rec["json"] = b'{"caption": "unterminated'
        del rec["txt"]
    elif kind in ("palette", "cmyk", "i16", "la"):
        ext = "jpg" if kind == "cmyk" else "png"
        del rec["png"]
        rec[ext] = _image({"palette": "P", "cmyk": "CMYK", "i16": "I;16", "la": "LA"}[kind])
    elif kind == "huge_caption":
        rec["txt"] = (" ".join(["word"] * 20000)).encode()
    elif kind == "json_caption":
        del rec["txt"]
    return rec


def _write_tar(path: Path, records: list[dict]) -> None:
    from webdataset import TarWriter

    with open(path, "wb") as f, TarWriter(f, mtime=0.0) as tw:
        for r in records:
            tw.write(r)


def _member(path: Path, name: str) -> tarfile.TarInfo:
    with tarfile.open(path) as t:
        return t.getmember(name)


def write_wds_corpus(root: Path) -> dict:
    """Four shards: every kind of bad record; a shard cut inside a caption; one cut on a block boundary after a
    complete member; one complete shard of good records. Returns ``{"pattern", "good", "skipped"}``."""
    root.mkdir(parents=True, exist_ok=True)
    expected: Counter = Counter()
    good = 0
    i = 0

    def records(kinds):
        nonlocal i, good
        out = []
        for k in kinds:
            out.append(_wds_record(i, k))
            i += 1
            if WDS_KINDS[k] is None:
                good += 1
            else:
                expected[WDS_KINDS[k]] += 1
        return out

    kinds = [k for bad in WDS_KINDS if bad != "good" for k in (bad, "good")]
    _write_tar(root / "shard-000.tar", records(kinds))
    # cut inside the caption of the 4th record: three records survive, the cut one is lost with those after it
    recs = records(["good"] * 3)
    lost = [_wds_record(10_000 + j, "good") for j in range(3)]
    _write_tar(root / "shard-001.tar", recs + lost)
    m = _member(root / "shard-001.tar", f"{10_000:06d}.txt")
    _truncate(root / "shard-001.tar", m.offset_data + m.size // 2)
    expected["truncated_shard"] += 1
    # cut on a 512-byte block boundary right after the image of the 3rd record (its caption never arrives)
    recs = records(["good"] * 2)
    lost = [_wds_record(20_000 + j, "good") for j in range(2)]
    _write_tar(root / "shard-002.tar", recs + lost)
    m = _member(root / "shard-002.tar", f"{20_000:06d}.png")
    _truncate(root / "shard-002.tar", m.offset_data + -(-m.size // 512) * 512)
    expected["truncated_shard"] += 1
    _write_tar(root / "shard-003.tar", records(["good"] * 5))
    used = {"caption:txt": good - 1, "caption:json.caption": 1, "caption_cut": 1}
    return {"pattern": str(root / "shard-{000..003}.tar"), "good": good, "skipped": dict(expected), "used": used}


def _truncate(path: Path, n: int) -> None:
    data = path.read_bytes()
    assert 0 < n < len(data)
    path.write_bytes(data[:n])


def write_parquet_corpus(root: Path) -> dict:
    """Two parquet files with bad rows and a third cut in half. Returns ``{"pattern", "good", "skipped"}``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    kinds = {"good": None, "null_image": "missing_image", "corrupt": "corrupt_image", "null_caption":
             "missing_caption", "empty_caption": "empty_caption", "zero_image": "empty_image"}
    expected: Counter = Counter()
    good = 0
    for f in range(2):
        rows = {"key": [], "image": [], "caption": []}
        for j, kind in enumerate(k for bad in kinds if bad != "good" for k in (bad, "good")):
            i = 100 * f + j
            image, cap = {"bytes": png(), "path": None}, caption_of(i)
            if kind == "null_image":
                image = None
            elif kind == "corrupt":
                image = {"bytes": b"garbage", "path": None}
            elif kind == "zero_image":
                image = {"bytes": b"", "path": None}
            elif kind == "null_caption":
                cap = None
            elif kind == "empty_caption":
                cap = ""
            rows["key"].append(f"{i:06d}")
            rows["image"].append(image)
            rows["caption"].append(cap)
            if kinds[kind] is None:
                good += 1
            else:
                expected[kinds[kind]] += 1
        pq.write_table(pa.table(rows), str(root / f"part-{f}.parquet"), row_group_size=4)
    pq.write_table(pa.table({"key": ["x"], "image": [{"bytes": png(), "path": None}], "caption": ["c"]}),
                   str(root / "part-2.parquet"))
    _truncate(root / "part-2.parquet", len((root / "part-2.parquet").read_bytes()) // 2)
    expected["corrupt_shard"] += 1
    return {"pattern": str(root / "part-*.parquet"), "good": good, "skipped": dict(expected)}


def write_llava_corpus(root: Path) -> dict:
    """A LLaVA JSONL file with every kind of bad record (found when the data opens) and of bad sample (found in
    training: images present but not decodable). Returns ``{"path", "image_root", "good", "skipped"}`` where
    ``skipped`` is ``genlip-mllm``'s ``final/skipped.json`` after one epoch: ``{"records": ..., "training": ...,
    "cut_samples": ...}``."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(4):
        (root / f"{i}.png").write_bytes(png((60 * i, 90, 30), size=(32, 32)))
    (root / "corrupt.png").write_bytes(b"these bytes are not an image")
    (root / "cut.png").write_bytes(png(size=(64, 64))[:70])
    (root / "empty.png").write_bytes(b"")
    (root / "odd.png").write_bytes(_image("P", (32, 32)))  # palette: converted, used

    def qa(answer="a small picture", image=True):
        q = ("<image>\n" if image else "") + "Describe the image."
        return [{"from": "human", "value": q}, {"from": "gpt", "value": answer}]

    good = [{"id": f"g{i}", "image": f"{i % 4}.png", "conversations": qa()} for i in range(12)]
    good.append({"id": "odd", "image": "odd.png", "conversations": qa()})
    good.append({"id": "text-only", "conversations": qa(image=False)})
    # longer than the test recipe's data.max_length (256) after its image: cut, trained on, counted
    good.append({"id": "long", "image": "0.png", "conversations": qa("a small picture " * 100)})
    lines = [json.dumps(r).encode() for r in good]
    records = Counter()

    def bad(reason, line: bytes):
        lines.append(line)
        records[reason] += 1

    bad("bad_encoding", json.dumps({"id": "l1", "image": "0.png", "conversations": qa("caf_")}).encode()
        .replace(b"caf_", b"caf\xe9"))
    bad("bad_json", b'{"id": "broken", "conversations": [')
    bad("bad_record", b'["not", "an", "object"]')
    bad("no_conversation", json.dumps({"id": "nc", "image": "0.png"}).encode())
    bad("bad_turn", json.dumps({"id": "bt", "conversations": ["hello", {"from": "gpt", "value": "x"}]}).encode())
    bad("bad_role", json.dumps({"id": "br", "conversations": [{"from": "robot", "value": "x"}]}).encode())
    bad("bad_value", json.dumps({"id": "bv", "image": "0.png", "conversations": qa(42)}).encode())
    bad("no_answer", json.dumps({"id": "na", "image": "0.png", "conversations": qa("   ")}).encode())
    bad("image_placeholder_mismatch", json.dumps({"id": "pm", "image": ["0.png", "1.png"],
                                                  "conversations": qa()}).encode())
    bad("missing_image", json.dumps({"id": "mi", "image": "gone.png", "conversations": qa()}).encode())
    training = Counter()
    for name, reason in (("corrupt.png", "corrupt_image"), ("cut.png", "corrupt_image"),
                         ("empty.png", "empty_image")):
        lines.append(json.dumps({"id": name, "image": name, "conversations": qa()}).encode())
        training[reason] += 1
    path = root / "data.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return {"path": str(path), "image_root": str(root), "good": len(good),
            "skipped": {"records": dict(records), "training": dict(training), "cut_samples": 1}}
