"""Record readers for the formats the field uses, and their split across ranks and dataloader workers.

A *source* is a list of *units* (tar shards, parquet files, JSONL files) expanded from brace patterns and globs.
A *stream* (one per rank x dataloader worker) reads a disjoint part of every source each epoch:

- ``split="shard"``: units are partitioned across streams (unit ``i`` of the epoch's shuffled order goes to stream
  ``i % n_streams``); use when there are at least as many units as streams;
- ``split="sample"``: every stream reads every unit and keeps records ``j`` with ``j % n_streams == stream``.

Either way one epoch visits every record exactly once across all streams. A stream can resume from a cursor
``(epoch, unit position, record offset)`` without decoding what it skips.
"""

from __future__ import annotations

import glob
import json
import os
import random
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyarrow.parquet as pq
from braceexpand import braceexpand
from webdataset.tariterators import group_by_keys, tar_file_iterator

from genlip.data.decode import IMAGE_EXTS


class DataError(RuntimeError):
    """Input data that cannot be used at all (no files, too many bad records); the message says what and where."""


def expand_paths(pattern: str | list[str]) -> list[str]:
    """Brace-expand and glob a pattern (or list of patterns) into sorted existing files.

    ``"shards/{000..002}.tar"`` -> ``shards/000.tar``, ``shards/001.tar``, ``shards/002.tar``.
    """
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    out: list[str] = []
    for p in patterns:
        for q in braceexpand(os.path.expanduser(os.path.expandvars(p))):
            hits = sorted(glob.glob(q)) if any(c in q for c in "*?[") else ([q] if os.path.exists(q) else [])
            if not hits:
                raise DataError(f"no file matches {q!r} (from {p!r})")
            out.extend(hits)
    return out


@dataclass
class SourceSpec:
    """One data source of a recipe (see ``recipes/genlip/*.yaml``)."""

    path: str | list[str]
    type: Literal["wds", "parquet", "jsonl"] = "wds"
    weight: float = 1.0
    name: str = ""
    caption_fields: list[str] | None = None  # first non-empty wins; default: txt, json.caption, caption, text
    image_field: str = "image"  # parquet/JSONL column: bytes, {"bytes"|"path"} struct, or a path
    image_root: str | None = None  # for relative image paths in parquet/JSONL
    split: Literal["auto", "shard", "sample"] = "auto"

    def __post_init__(self) -> None:
        if self.weight <= 0:
            raise ValueError(f"source weight must be positive, got {self.weight}")
        if self.caption_fields is None:
            self.caption_fields = ["txt", "json.caption", "caption", "text"]
        if not self.name:
            self.name = str(self.path if isinstance(self.path, str) else self.path[0])


def read_wds_shard(path: str, on_error) -> Iterator[tuple[str, dict]]:
    """Samples of one tar shard grouped by key (``key.jpg`` + ``key.txt`` + ``key.json``)."""
    def handler(exc: Exception) -> bool:
        on_error("truncated_shard", f"{path}: {exc}")
        return False  # stop reading this shard; what was read before stays

    try:
        stream = open(path, "rb")  # noqa: SIM115 (closed by the with-block below)
    except OSError as e:
        on_error("unreadable_shard", f"{path}: {e}")
        return
    with stream:
        files = tar_file_iterator(stream, handler=handler)
        try:
            for sample in group_by_keys(({**f, "__url__": path} for f in files), handler=handler):
                key = sample.pop("__key__")
                sample.pop("__url__", None)
                image = next((sample.pop(e) for e in IMAGE_EXTS if e in sample), None)
                yield key, {"image": image, **sample}
        except (tarfile.TarError, OSError, EOFError) as e:  # raised by the tar stream itself
            handler(e)


def _load_image_ref(value, root: str | None) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return value["bytes"]
        value = value.get("path")
        if value is None:
            return None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    p = Path(root or "") / str(value)
    try:
        return p.read_bytes()
    except OSError:
        return None


def _read_parquet(path: str, spec: SourceSpec, on_error, start: int) -> Iterator[tuple[int, str, dict]]:
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a broken file
        on_error("corrupt_shard", f"{path}: {e}")
        return
    row0, first_group = 0, 0
    for g in range(pf.num_row_groups):  # jump straight to the row group holding `start`
        n = pf.metadata.row_group(g).num_rows
        if row0 + n > start:
            break
        row0 += n
        first_group = g + 1
    idx = row0
    try:
        for batch in pf.iter_batches(row_groups=list(range(first_group, pf.num_row_groups)), batch_size=256):
            for row in batch.to_pylist():
                key = str(row.get("key", row.get("id", idx)))
                image = _load_image_ref(row.pop(spec.image_field, None), spec.image_root)
                yield idx, key, {**row, "image": image}
                idx += 1
    except Exception as e:
        on_error("truncated_shard", f"{path}: {e}")


def _read_jsonl(path: str, spec: SourceSpec, on_error) -> Iterator[tuple[str, dict]]:
    root = spec.image_root if spec.image_root is not None else os.path.dirname(path)
    with open(path, encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f):
            if not line.strip():
                yield f"{i}", {"__bad__": "empty_line"}
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                yield f"{i}", {"__bad__": f"bad_metadata: {e}"}
                continue
            key = str(row.get("id", row.get("key", i)))
            yield key, {**row, "image": _load_image_ref(row.get(spec.image_field), root)}


class SourceStream:
    """Iterates one source's records for one stream, epoch after epoch, from a resumable cursor."""

    def __init__(self, spec: SourceSpec, stream: int, n_streams: int, seed: int, on_error) -> None:
        self.spec, self.stream, self.n_streams, self.seed, self.on_error = spec, stream, n_streams, seed, on_error
        self.units = expand_paths(spec.path)
        split = spec.split
        if split == "auto":
            split = "shard" if len(self.units) >= n_streams else "sample"
        self.split = split
        self.epoch, self.unit_pos, self.offset = 0, 0, 0

    def state(self) -> dict:
        return {"epoch": self.epoch, "unit_pos": self.unit_pos, "offset": self.offset}

    def load_state(self, s: dict) -> None:
        self.epoch, self.unit_pos, self.offset = s["epoch"], s["unit_pos"], s["offset"]

    def _my_units(self, epoch: int) -> list[str]:
        order = list(self.units)
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        if self.split == "shard":
            return [u for i, u in enumerate(order) if i % self.n_streams == self.stream]
        return order

    def _records(self, unit: str, start: int) -> Iterator[tuple[int, str, dict]]:
        """``(index in unit, key, record)``; parquet jumps to the row group holding ``start``."""
        t = self.spec.type
        if t == "parquet":
            return _read_parquet(unit, self.spec, self.on_error, start)
        it = read_wds_shard(unit, self.on_error) if t == "wds" else _read_jsonl(unit, self.spec, self.on_error)
        return ((j, key, rec) for j, (key, rec) in enumerate(it))

    def __iter__(self) -> Iterator[tuple[str, dict]]:
        """Yields ``(where, record)`` forever; the cursor always points just past the last yielded record."""
        empty_epochs = 0
        while True:
            units = self._my_units(self.epoch)
            produced = False
            while self.unit_pos < len(units):
                unit = units[self.unit_pos]
                for j, key, rec in self._records(unit, self.offset):
                    if j < self.offset:
                        continue
                    self.offset = j + 1
                    if self.split == "sample" and j % self.n_streams != self.stream:
                        continue
                    produced = True
                    yield f"{self.spec.name}:{os.path.basename(unit)}:{key}", rec
                self.unit_pos += 1
                self.offset = 0
            self.epoch += 1
            self.unit_pos = 0
            empty_epochs = 0 if produced else empty_epochs + 1
            if empty_epochs >= 2:
                raise DataError(f"source {self.spec.name!r} yields no records for stream {self.stream} "
                                f"of {self.n_streams} (units: {len(self.units)})")
