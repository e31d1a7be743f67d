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

import bz2
import glob
import gzip
import json
import lzma
import math
import os
import random
import re
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyarrow.parquet as pq
from braceexpand import braceexpand

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
        if not (self.weight > 0 and math.isfinite(self.weight)):
            raise ValueError(f"source weight must be positive and finite, got {self.weight}")
        if self.caption_fields is None:
            self.caption_fields = ["txt", "json.caption", "caption", "text"]
        if not self.caption_fields:
            raise ValueError("caption_fields must name at least one field (leave it out for the default: txt, "
                             "json.caption, caption, text)")
        if not self.name:
            self.name = str(self.path if isinstance(self.path, str) else self.path[0])


_BLOCK = 512
_ZEROS = bytes(_BLOCK)
_META = re.compile(r"__[^/]*__($|/)")  # webdataset's metadata members (``__info__.json``), not records
_FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)


class _Cut(Exception):
    """The tar stream ends before its end-of-archive marker."""


class _Corrupt(Exception):
    """Bytes that are not a tar archive where a header should be."""


def _read_exact(f, n: int) -> bytes:
    buf = f.read(n)
    while len(buf) < n:  # a short read is only final when the next one is empty
        more = f.read(n - len(buf))
        if not more:
            break
        buf += more
    return buf


def _pax_records(data: bytes) -> dict[str, str]:
    """``"LEN key=value\\n"`` records of a pax extended header."""
    out, pos = {}, 0
    try:
        while pos < len(data) and data[pos] != 0:  # some writers pad the records with NULs
            space = data.index(b" ", pos)
            n = int(data[pos:space])
            key, eq, value = data[space + 1:pos + n - 1].partition(b"=")
            if n <= space - pos or not eq or data[pos + n - 1:pos + n] != b"\n":
                raise ValueError(f"malformed record at byte {pos}")
            out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
            pos += n
    except ValueError as e:
        raise _Corrupt(f"bad pax header: {e}") from None
    return out


class _TarReader:
    """The regular files of an uncompressed tar stream, in order: :meth:`next_file` reads the next one's header,
    :meth:`payload` its bytes. Raises :class:`_Cut` where the stream ends before the end-of-archive marker and
    :class:`_Corrupt` where a header is not one."""

    def __init__(self, f) -> None:
        self.f, self.offset = f, 0  # offset: where the next header starts
        self._name, self._size, self._unread = "", 0, 0  # the current file; _unread: its padded bytes not yet read

    def _read(self, n: int, what: str) -> bytes:
        buf = _read_exact(self.f, n)
        if len(buf) < n:
            raise _Cut(f"the file ends inside {what}")
        return buf

    def next_file(self) -> str | None:
        """The next regular file's name, or ``None`` after the end-of-archive marker (two zero blocks; the padding
        after it is not read). Extension headers (pax, GNU long names) apply to the member that follows them."""
        if self._unread:  # the previous file's payload was skipped
            self._read(self._unread, f"member {self._name!r}")
            self._unread = 0
        long_name, pax = None, {}
        while True:
            at = self.offset
            block = _read_exact(self.f, _BLOCK)
            if len(block) < _BLOCK:
                raise _Cut(f"the file ends inside a header at byte {at}" if block else
                           f"no end-of-archive marker: the file ends after {at} bytes")
            if block == _ZEROS:
                second = self._read(_BLOCK, f"the end-of-archive marker at byte {at}")
                if second == _ZEROS:
                    return None
                raise _Corrupt(f"a lone zero block at byte {at}")
            try:
                info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
            except tarfile.HeaderError as e:
                raise _Corrupt(f"bad header at byte {at}: {e}") from None
            try:
                size = int(pax.get("size", info.size))
            except ValueError:
                raise _Corrupt(f"bad pax size {pax['size']!r} for the member at byte {at}") from None
            padded = -(-size // _BLOCK) * _BLOCK
            self.offset = at + _BLOCK + padded
            self._name = long_name or pax.get("path") or info.name
            if info.type in (tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME):  # extension of the next member
                data = self._read(padded, f"the extension header at byte {at}")[:size]
                if info.type == tarfile.XHDTYPE:
                    pax = _pax_records(data)
                else:
                    long_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                continue
            if info.type in _FILE_TYPES:
                self._size, self._unread = size, padded
                return self._name
            self._read(padded, f"member {self._name!r}")  # directories, links, global pax headers, ...
            if info.type not in (tarfile.XGLTYPE, tarfile.GNUTYPE_LONGLINK):
                long_name, pax = None, {}

    def payload(self) -> bytes:
        """The bytes of the file :meth:`next_file` returned."""
        data = self._read(self._unread, f"member {self._name!r}")[:self._size]
        self._unread = 0
        return data


def _open_tar_stream(f):
    """``f`` itself, or a decompressing reader for a gzip, bzip2 or xz compressed shard."""
    head = f.peek(6)[:6]
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=f, mode="rb")
    if head.startswith(b"BZh"):
        return bz2.BZ2File(f, mode="rb")
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(f, mode="rb")
    return f


def read_wds_shard(path: str, on_error) -> Iterator[tuple[str, dict]]:
    """Samples of one tar shard grouped by key (``key.jpg`` + ``key.txt`` + ``key.json``): ``(key, {"image": bytes
    or None, ext: bytes, ...})``. The key is a member's name up to the first dot of its base name (webdataset's
    convention), the extension is the rest, lower-cased.

    A shard is whole only if its end-of-archive marker is there. A shard cut before it (an interrupted download or
    copy, wherever the cut falls) is counted once as ``truncated_shard``: the records before the cut are yielded, the
    record at the cut is not, even when the cut falls right after one of its members (nothing tells whether more of
    it followed). Bytes that are not tar headers, or a member repeated within a record, count as ``corrupt_shard``
    and end the shard the same way.
    """
    try:
        raw = open(path, "rb")  # noqa: SIM115 (closed by the with-block below)
    except OSError as e:
        on_error("unreadable_shard", f"{path}: {e}")
        return
    key, sample = None, {}
    with raw:
        try:
            tar = _TarReader(_open_tar_stream(raw))
            while (name := tar.next_file()) is not None:
                folder, _, base = name.rpartition("/")
                stem, dot, ext = base.partition(".")
                if not dot or not stem or _META.match(name):
                    continue
                k = f"{folder}/{stem}" if folder else stem
                ext = ext.lower()
                if k != key:  # a new key starts: the record before it is whole
                    if key is not None:
                        yield key, _record(sample)
                    key, sample = k, {}
                if ext in sample:
                    raise _Corrupt(f"member {name!r} repeats {ext!r} in record {k!r}")
                sample[ext] = tar.payload()
        except (_Cut, EOFError) as e:  # EOFError: a compressed stream that ends early
            on_error("truncated_shard", f"{path}: {e}")
            return
        except (_Corrupt, zlib.error, lzma.LZMAError, gzip.BadGzipFile) as e:
            on_error("corrupt_shard", f"{path}: {e}")
            return
        except OSError as e:
            on_error("unreadable_shard", f"{path}: {e}")
            return
    if key is not None:
        yield key, _record(sample)


def _record(sample: dict) -> dict:
    image = next((sample.pop(e) for e in IMAGE_EXTS if e in sample), None)
    return {"image": image, **sample}


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


def parquet_columns(units: list[str], tries: int = 3) -> tuple[str, list[str]] | None:
    """``(file, column names)`` of the first of a source's first ``tries`` parquet files whose schema can be read
    (None if none can: those files are counted as bad when read)."""
    for path in units[:tries]:
        try:
            return path, list(pq.read_schema(path).names)
        except Exception:  # pyarrow raises several types for a broken file
            continue
    return None


def check_parquet_fields(spec: SourceSpec, units: list[str]) -> str | None:
    """Why ``spec``'s ``image_field`` / ``caption_fields`` cannot be found in its parquet files' columns (one line), or
    None. The schema is the same for every row, so a misnamed column is a recipe mistake, not a skip per record."""
    found = parquet_columns(units)
    if found is None:
        return None
    path, names = found
    cols = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    if spec.image_field not in names:
        return f"image_field: {spec.image_field!r} is not a column of {path} (columns: {cols})"
    if not any(f.split(".")[0] in names for f in spec.caption_fields):
        return f"caption_fields: none of {spec.caption_fields} is a column of {path} (columns: {cols})"
    return None


def _read_jsonl(path: str, spec: SourceSpec, on_error) -> Iterator[tuple[str, dict]]:
    root = spec.image_root if spec.image_root is not None else os.path.dirname(path)
    with open(path, "rb") as f:
        for i, raw in enumerate(f):
            if not raw.strip():
                yield f"{i}", {"__bad__": "empty_line"}
                continue
            try:  # a line that is not UTF-8 is skipped and counted, never decoded with replacement characters
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                yield f"{i}", {"__bad__": f"bad_metadata: not UTF-8 ({e.reason} at byte {e.start})"}
                continue
            except json.JSONDecodeError as e:
                yield f"{i}", {"__bad__": f"bad_metadata: {e}"}
                continue
            key = str(row.get("id", row.get("key", i)))
            yield key, {**row, "image": _load_image_ref(row.get(spec.image_field), root)}


class SourceStream:
    """Iterates one source's records for one stream, epoch after epoch, from a resumable cursor."""

    def _split_hint(self, units: list[str]) -> str:
        """Where files were dealt out to the streams (``split: auto`` with as many files as streams) and this
        stream's share gave nothing while other files remain: reading every file on every stream may help."""
        if self.split == "shard" and self.spec.split == "auto" and len(units) < len(self.units):
            return (f"; the source's files are dealt out to the {self.n_streams} streams (split: auto), so with "
                    "few files one bad file can leave a stream without data: give the source `split: sample` to "
                    "have every stream read every file")
        return ""

    def __init__(self, spec: SourceSpec, stream: int, n_streams: int, seed: int, on_error,
                 units: list[str] | None = None) -> None:
        self.spec, self.stream, self.n_streams, self.seed, self.on_error = spec, stream, n_streams, seed, on_error
        # ``units``: the source's files, expanded once by the caller (a paper-scale pattern names ~100K shards; a
        # stream per worker and one per record replayed on resume would otherwise each glob/stat them again)
        self.units = list(units) if units is not None else expand_paths(spec.path)
        self.last_problem: tuple[str, str] | None = None  # for the error when nothing at all can be read

        def noted(reason: str, where: str) -> None:
            self.last_problem = (reason, where)
            on_error(reason, where)
        self.on_error = noted
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
                names = ", ".join(os.path.basename(u) for u in units[:3]) + (", ..." if len(units) > 3 else "")
                why = (f"; the last problem: {self.last_problem[0]} ({self.last_problem[1]})" if self.last_problem
                       else f" (are they {self.spec.type} files?)")
                raise DataError(f"source {self.spec.name!r} yields no records for stream {self.stream} of "
                                f"{self.n_streams}: its {len(units)} of {len(self.units)} files ({names}) gave none"
                                f"{why}{self._split_hint(units)}")
