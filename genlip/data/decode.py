"""Decode and validate one image-caption record. Bad input is never hidden: it raises :class:`SkipSample` with a
reason, which the reader counts and reports (see :class:`SkipStats`)."""

from __future__ import annotations

import io
import json
import warnings
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")


class SkipSample(Exception):
    """A record that cannot be used; ``reason`` is a short stable label used for counting."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


# skips of a whole file, not of one record: a tar or parquet file that cannot be opened or read (unreadable, corrupt)
# or that ends early (truncated); the records read before are kept
SHARD_REASONS = ("truncated_shard", "corrupt_shard", "unreadable_shard")


@dataclass
class SkipStats:
    """Counts of records seen and skipped (by reason), with the last skipped key for error messages, and the same
    counts for each source of a mix (``by_source``: name -> {"seen": n, reason: n, ...}), so a weighted mix says which
    source its bad records came from."""

    seen: int = 0
    skipped: Counter = field(default_factory=Counter)
    last: str = ""
    # what happened to the records that were used: "caption:<field>" (where each caption came from) and
    # "caption_cut" (captions cut to data.max_caption_tokens or to fit a row)
    used: Counter = field(default_factory=Counter)
    by_source: dict = field(default_factory=dict)

    def _source(self, name: str) -> Counter:
        return self.by_source.setdefault(name, Counter())

    def read(self, source: str = "") -> None:
        """One record read (from ``source``, when given)."""
        self.seen += 1
        if source:
            self._source(source)["seen"] += 1

    def skip(self, reason: str, where: str, source: str = "") -> None:
        self.skipped[reason] += 1
        self.last = f"{where} ({reason})"
        if source:
            self._source(source)[reason] += 1

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    @property
    def n_records_skipped(self) -> int:
        """The records skipped, without the shards that could not be read or were cut short (they hold no record
        that was read, so a share of the records read that counted them could exceed 1)."""
        return sum(n for reason, n in self.skipped.items() if reason not in SHARD_REASONS)

    def fraction(self) -> float:
        """The share of the records read that were skipped."""
        return self.n_records_skipped / max(self.seen, 1)

    def source_share(self, name: str) -> tuple[int, int]:
        """``(records skipped, records read)`` of one source of a mix (file-level skips left out, as above)."""
        c = self.by_source.get(name, Counter())
        return sum(n for reason, n in c.items() if reason != "seen" and reason not in SHARD_REASONS), c["seen"]

    def source_summary(self) -> str:
        """Per source, for a mix of more than one: ``name: skipped of read {reason: n}``; empty for one source."""
        if len(self.by_source) < 2:
            return ""
        parts = []
        for name, c in sorted(self.by_source.items()):
            reasons = {k: v for k, v in sorted(c.items()) if k != "seen"}
            parts.append(f"{name}: {sum(reasons.values())} of {c.get('seen', 0)} read"
                         + (f" {reasons}" if reasons else ""))
        return "; ".join(parts)

    def to_dict(self) -> dict:
        return {"seen": self.seen, "skipped": dict(self.skipped), "last": self.last, "used": dict(self.used),
                "by_source": {k: dict(v) for k, v in self.by_source.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> SkipStats:
        return cls(d.get("seen", 0), Counter(d.get("skipped", {})), d.get("last", ""), Counter(d.get("used", {})),
                   {k: Counter(v) for k, v in d.get("by_source", {}).items()})

    def merge(self, other: SkipStats) -> SkipStats:
        names = set(self.by_source) | set(other.by_source)
        by_source = {k: self.by_source.get(k, Counter()) + other.by_source.get(k, Counter()) for k in names}
        return SkipStats(self.seen + other.seen, self.skipped + other.skipped, other.last or self.last,
                         self.used + other.used, by_source)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB correctly: palette via RGBA, alpha composited on white, 16-bit and 32-bit
    integer images scaled (not clipped) to 8 bits, CMYK and YCbCr through PIL's converters."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        if mode == "F":
            lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
            a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
        else:  # 16-bit data (PIL loads 16-bit PNG as I;16 or I): full range 0..65535 -> 0..255
            a = a / 257.0
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def decode_image(data: bytes | None, min_size: int = 2, max_aspect_ratio: float = 200.0,
                 max_pixels: int = 178_956_970) -> Image.Image:
    """Bytes -> upright RGB image, or :class:`SkipSample` (empty, corrupt, too small, too elongated, too large)."""
    if data is None:
        raise SkipSample("missing_image")
    if len(data) == 0:
        raise SkipSample("empty_image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise SkipSample("too_large", f"{w}x{h}")
            img.load()
            img = ImageOps.exif_transpose(img)
    except SkipSample:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise SkipSample("corrupt_image" if isinstance(e, UnidentifiedImageError) else "too_large", str(e)) from e
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # truncated or malformed payloads
        raise SkipSample("corrupt_image", str(e)) from e
    w, h = img.size
    if min(w, h) < min_size:
        raise SkipSample("too_small", f"{w}x{h}")
    if max(w, h) / min(w, h) > max_aspect_ratio:
        raise SkipSample("aspect_ratio", f"{w}x{h}")
    return to_rgb(img)


def caption_from_record(record: dict, fields: list[str]) -> str:
    """The first non-empty caption among ``fields`` (see :func:`find_caption`)."""
    return find_caption(record, fields)[0]


def _conversation_text(turns: list) -> str | None:
    """The assistant's text of a LLaVA/OpenAI-style conversation (``from: gpt`` / ``role: assistant`` turns)."""
    out = []
    for t in turns:
        if not isinstance(t, dict):
            return None
        role = t.get("from", t.get("role"))
        value = t.get("value", t.get("content"))
        if role in ("gpt", "assistant") and isinstance(value, str):
            out.append(value)
    return "\n".join(out)


def find_caption(record: dict, fields: list[str]) -> tuple[str, str]:
    """``(caption, field)``: the first non-empty caption among ``fields``, and the field it came from.

    A field is ``txt`` (a ``.txt`` member), or ``json.KEY`` / ``KEY`` looked up in the record's JSON metadata
    (``json`` member or a parquet/JSONL row). A value that is a conversation (a list of ``{from, value}`` or
    ``{role, content}`` turns, as in the reference release's stage-2 shards: ``json.conversations``) gives the
    assistant's text."""
    meta = record.get("json")
    if isinstance(meta, (bytes, bytearray)):
        try:
            meta = json.loads(meta.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SkipSample("bad_metadata", str(e)) from e
    present = False
    for f in fields:
        name = f[5:] if f.startswith("json.") else f
        value = record.get(name) if not f.startswith("json.") else None
        if value is None and isinstance(meta, dict):
            value = meta.get(name)
        if value is None:
            continue
        present = True
        if isinstance(value, (bytes, bytearray)):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError as e:
                raise SkipSample("bad_caption", "not UTF-8") from e
        if isinstance(value, list):
            value = _conversation_text(value)
        if not isinstance(value, str):
            continue
        value = value.strip()
        if value:
            return value, f
    raise SkipSample("empty_caption" if present else "missing_caption", f"fields {fields}")
