"""Small image-caption datasets in every supported format, made by the tests themselves."""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image


def png(color=(200, 30, 30), size=(24, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def caption_of(i: int) -> str:
    return f"sample number {i} is a small coloured picture"


def write_wds(path: Path, indices, bad: dict | None = None) -> Path:
    """One shard with records ``key=000123``; ``bad`` maps index -> kind of damage."""
    from webdataset import TarWriter

    bad = bad or {}
    with open(path, "wb") as f, TarWriter(f, mtime=0.0) as tw:
        for i in indices:
            rec = {"__key__": f"{i:06d}", "png": png((i * 7 % 255, 40, 90)), "txt": caption_of(i),
                   "json": json.dumps({"caption": caption_of(i), "index": i}).encode()}
            kind = bad.get(i)
            if kind == "corrupt":
                rec["png"] = b"not an image at all"
            elif kind == "empty_caption":
                rec["txt"] = "   "
                rec["json"] = json.dumps({"index": i}).encode()
            elif kind == "tiny":
                rec["png"] = png(size=(1, 1))
            tw.write(rec)
    return path


def write_parquet(path: Path, indices, image_root: Path | None = None) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = {"key": [], "image": [], "caption": []}
    for i in indices:
        rows["key"].append(f"{i:06d}")
        if image_root is None:
            rows["image"].append({"bytes": png(), "path": None})
        else:
            (image_root / f"{i}.png").write_bytes(png())
            rows["image"].append({"bytes": None, "path": f"{i}.png"})
        rows["caption"].append(caption_of(i))
    pq.write_table(pa.table(rows), str(path), row_group_size=3)
    return path


def write_jsonl(path: Path, indices, image_root: Path) -> Path:
    image_root.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for i in indices:
            (image_root / f"img{i}.png").write_bytes(png())
            f.write(json.dumps({"id": i, "image": f"img{i}.png", "caption": caption_of(i)}) + "\n")
    return path
