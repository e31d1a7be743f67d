"""LLaVA conversation data: JSON (a list) or JSONL records ``{"id", "image": path | [paths], "conversations"}`` with
an image root. Records are read one at a time and checked when the dataset is opened (encoding, JSON, structure and
value types, image files); samples that fail at training time (an image that does not decode, a conversation too
long for ``max_length``) are dropped from their batch. Every skip is counted under a short reason and reported; the
first record of each reason is named by file and line (JSONL) or record number (JSON list).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import torch
from torch.utils.data import Dataset, get_worker_info

from genlip.data.dataset import ignore_preemption_signals
from genlip.data.decode import SkipSample, decode_image
from genlip.data.sources import DataError
from genlip.loss import IGNORE_INDEX
from mllm.processing import ROLES, ConversationEncoder, EncodeError, ImageSpec, preprocess_images

log = logging.getLogger(__name__)
_ESCAPED = re.compile("[\udc80-\udcff]")  # bytes that are not UTF-8, as decoded with errors="surrogateescape"


class BadRecord(NamedTuple):
    """A record that could not be read (``bad_encoding``, ``bad_json``); counted under ``reason``."""

    reason: str
    detail: str


class Record(NamedTuple):
    number: int  # the line (JSONL) or the position in the list (JSON), from 1
    value: object  # the parsed JSON value, or a BadRecord


def _json_type(value) -> str:
    names = {bool: "boolean", int: "number", float: "number", str: "string", list: "array", dict: "object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _has_escaped_bytes(value) -> bool:
    if isinstance(value, str):
        return _ESCAPED.search(value) is not None
    if isinstance(value, dict):
        return any(_has_escaped_bytes(k) or _has_escaped_bytes(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_escaped_bytes(v) for v in value)
    return False


def _read_jsonl(path: Path) -> list[Record]:
    """Each line decoded by itself (bytes -> UTF-8 -> JSON): a bad line is a :class:`BadRecord`, not the end."""
    out = []
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                text = line.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as e:
                out.append(Record(n, BadRecord("bad_encoding", f"not UTF-8 (byte {e.start + 1} of the line)")))
                continue
            try:
                out.append(Record(n, json.loads(text)))
            except json.JSONDecodeError as e:
                out.append(Record(n, BadRecord("bad_json", f"{e.msg} at column {e.colno}")))
    return out


def _read_json_list(path: Path) -> list[Record]:
    """A JSON list. Bytes that are not UTF-8 are kept apart (``surrogateescape``) so that the file still parses and
    only the records holding them are :class:`BadRecord`; a file that is not valid JSON is one :class:`DataError`."""
    raw = path.read_bytes()
    bad_byte = None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        bad_byte = e.start
        text = raw.decode("utf-8-sig", errors="surrogateescape")
    del raw
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        why = f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"
        if bad_byte is not None:
            why += f" (and not UTF-8 from byte {bad_byte})"
        elif e.msg == "Extra data":
            why += " (one record per line is JSONL: name the file *.jsonl)"
        raise DataError(f"{path}: {why}") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of LLaVA records, got a JSON {type(data).__name__}")
    if bad_byte is None:
        return [Record(i, rec) for i, rec in enumerate(data, 1)]
    return [Record(i, BadRecord("bad_encoding", "not UTF-8") if _has_escaped_bytes(rec) else rec)
            for i, rec in enumerate(data, 1)]


def read_records(path: str | Path) -> list[Record]:
    """The records of a LLaVA JSONL (``*.jsonl``) or JSON list file, numbered; unreadable ones as :class:`BadRecord`."""
    path = Path(path)
    return _read_jsonl(path) if path.suffix == ".jsonl" else _read_json_list(path)


_QUIET_WORKERS: set[int] = set()


class LlavaDataset(Dataset):
    """Map-style dataset of encoded conversations (images decoded lazily)."""

    def __init__(self, path: str | Path, image_root: str | Path, encoder: ConversationEncoder,
                 max_skip_fraction: float = 0.1) -> None:
        self.encoder, self.image_root, self.path = encoder, Path(image_root), Path(path)
        self.unit = "line" if self.path.suffix == ".jsonl" else "record"
        self.skipped: Counter = Counter()
        self.first_skip: dict[str, str] = {}  # reason -> where the first record skipped for it is
        self.items: list[tuple[int, list[Path], list[dict]]] = []
        self._warned: set[str] = set()
        records = read_records(path)
        for number, rec in records:
            bad = self._check(rec)
            if bad:
                reason, detail = bad
                self.skipped[reason] += 1
                if reason not in self.first_skip:
                    self.first_skip[reason] = f"{self.unit} {number}" + (f" ({detail})" if detail else "")
                    log.warning("%s %s %d: skipped (%s%s)", path, self.unit, number, reason,
                                f": {detail}" if detail else "")
            else:
                imgs = rec.get("image") or []
                imgs = [imgs] if isinstance(imgs, str) else imgs
                self.items.append((number, [self.image_root / p for p in imgs], rec["conversations"]))
        n_bad = sum(self.skipped.values())
        first = "; ".join(f"{r}: {w}" for r, w in self.first_skip.items())
        if records and n_bad / len(records) > max_skip_fraction:
            raise DataError(f"{path}: {n_bad} of {len(records)} records unusable ({dict(self.skipped)}; first of "
                            f"each: {first}), above max_skip_fraction {max_skip_fraction}")
        if not self.items:
            raise DataError(f"{path}: no usable records" + (f" ({dict(self.skipped)}; first of each: {first})"
                                                            if n_bad else ""))
        if n_bad:
            log.warning("%s: skipped %d records: %s", path, n_bad, dict(self.skipped))

    def _check(self, rec) -> tuple[str, str] | None:
        """``(reason, detail)`` when a record cannot be used, checked in the order the fields are needed."""
        if isinstance(rec, BadRecord):
            return rec.reason, rec.detail
        if not isinstance(rec, dict):
            return "bad_record", f"a JSON {_json_type(rec)}, not an object"
        conv = rec.get("conversations")
        if not isinstance(conv, list) or not conv:
            return "no_conversation", ""
        for t, m in enumerate(conv, 1):
            if not isinstance(m, dict):
                return "bad_turn", f"turn {t} is a JSON {_json_type(m)}, not an object"
            role = m.get("from", m.get("role"))
            if not isinstance(role, str) or role not in ROLES:
                return "bad_role", f"turn {t}: " + ("no 'from'" if role is None else f"'from' is {role!r}")
            value = m.get("value", m.get("content"))
            if not isinstance(value, str):
                return "bad_value", f"turn {t}: " + ("no 'value'" if "value" not in m and "content" not in m else
                                                     f"'value' is a JSON {_json_type(value)}, not a string")
        if not any(ROLES[m.get("from", m.get("role"))] == "assistant" and m.get("value", m.get("content")).strip()
                   for m in conv):
            return "no_answer", ""
        imgs = rec.get("image") or []
        imgs = [imgs] if isinstance(imgs, str) else imgs
        if not isinstance(imgs, list) or not all(isinstance(p, str) and p for p in imgs):
            return "bad_image_field", "'image' must be a path or a list of paths"
        n_placeholders = sum(m.get("value", m.get("content")).count("<image>") for m in conv)
        if n_placeholders != len(imgs):
            return "image_placeholder_mismatch", f"{n_placeholders} <image> for {len(imgs)} images"
        missing = [p for p in imgs if not (self.image_root / p).is_file()]
        if missing:
            return "missing_image", str(self.image_root / missing[0])
        return None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        if get_worker_info() is not None and os.getpid() not in _QUIET_WORKERS:  # the Trainer's loader workers
            ignore_preemption_signals()  # SIGTERM/SIGUSR1 to the process group are the trainer's to handle
            _QUIET_WORKERS.add(os.getpid())
        number, paths, conv = self.items[i]
        try:
            images = [decode_image(p.read_bytes()) for p in paths]
            ids, labels = self.encoder.encode(conv, images)
        except (SkipSample, ValueError) as e:  # SkipSample and EncodeError carry their reason
            reason = e.reason if isinstance(e, (SkipSample, EncodeError)) else "encode_error"
            if reason not in self._warned:  # the first of each reason (per loader process), with where and why
                self._warned.add(reason)
                log.warning("%s %s %d: dropped from its batch (%s)", self.path, self.unit, number, e)
            return {"skip": reason}
        return {"input_ids": ids, "labels": labels, "images": images, "cut": self.encoder.cut}


class Collator:
    """Pads text, preprocesses every image of the batch in order, drops unusable samples; their reasons travel with
    the batch as ``skip_reasons`` (a list of strings, to be popped before the model's forward)."""

    def __init__(self, spec: ImageSpec, image_processor, pad_id: int) -> None:
        self.spec, self.image_processor, self.pad_id = spec, image_processor, pad_id

    def __call__(self, examples: list[dict]) -> dict:
        good = [e for e in examples if "skip" not in e]
        reasons = [e["skip"] for e in examples if "skip" in e]
        if not good:
            raise DataError(f"every sample of a batch was unusable: {reasons}")
        T = max(len(e["input_ids"]) for e in good)
        B = len(good)
        ids = torch.full((B, T), self.pad_id, dtype=torch.long)
        labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros(B, T, dtype=torch.long)
        for i, e in enumerate(good):
            n = len(e["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(e["input_ids"]), torch.tensor(e["labels"]), 1
        batch = {"input_ids": ids, "labels": labels, "attention_mask": mask}
        batch.update(preprocess_images(self.spec, [im for e in good for im in e["images"]], self.image_processor))
        # last (accelerate finds the batch size from the first value): the dropped samples' reasons, and how many
        # of the kept ones were cut to data.max_length
        batch["skip_reasons"] = reasons
        batch["cut_samples"] = sum(bool(e.get("cut")) for e in good)
        return batch
