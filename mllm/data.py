"""LLaVA conversation data: JSON (a list) or JSONL records ``{"id", "image": path | [paths], "conversations"}`` with
an image root. Records are checked when the dataset is opened (structure, image files, length); images that fail
to decode at training time are dropped from their batch. Both kinds of skip are counted by reason and reported.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path

import torch
from torch.utils.data import Dataset, get_worker_info

from genlip.data.dataset import ignore_preemption_signals
from genlip.data.decode import SkipSample, decode_image
from genlip.data.sources import DataError
from genlip.loss import IGNORE_INDEX
from mllm.processing import ConversationEncoder, ImageSpec, preprocess_images

log = logging.getLogger(__name__)


def read_records(path: str | Path) -> list:
    path = Path(path)
    text = path.read_text()
    if path.suffix == ".jsonl":
        out = []
        for i, line in enumerate(text.splitlines()):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    out.append({"__bad__": f"line {i + 1}"})
        return out
    data = json.loads(text)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of LLaVA records")
    return data


_QUIET_WORKERS: set[int] = set()


class LlavaDataset(Dataset):
    """Map-style dataset of encoded conversations (images decoded lazily)."""

    def __init__(self, path: str | Path, image_root: str | Path, encoder: ConversationEncoder,
                 max_skip_fraction: float = 0.1) -> None:
        self.encoder, self.image_root = encoder, Path(image_root)
        self.skipped: Counter = Counter()
        self.items: list[tuple[list[Path], list[dict]]] = []
        records = read_records(path)
        for rec in records:
            reason = self._check(rec)
            if reason:
                self.skipped[reason] += 1
            else:
                imgs = rec.get("image") or []
                imgs = [imgs] if isinstance(imgs, str) else imgs
                self.items.append(([self.image_root / p for p in imgs], rec["conversations"]))
        n_bad = sum(self.skipped.values())
        if records and n_bad / len(records) > max_skip_fraction:
            raise DataError(f"{path}: {n_bad} of {len(records)} records unusable ({dict(self.skipped)}), above "
                            f"max_skip_fraction {max_skip_fraction}")
        if not self.items:
            raise DataError(f"{path}: no usable records ({dict(self.skipped)})")
        if n_bad:
            log.warning("%s: skipped %d records: %s", path, n_bad, dict(self.skipped))

    def _check(self, rec) -> str | None:
        if not isinstance(rec, dict) or "__bad__" in rec:
            return "bad_record"
        conv = rec.get("conversations")
        if not isinstance(conv, list) or not conv:
            return "no_conversation"
        if not any(m.get("from") in ("gpt", "assistant") and str(m.get("value", "")).strip() for m in conv
                   if isinstance(m, dict)):
            return "no_answer"
        imgs = rec.get("image") or []
        imgs = [imgs] if isinstance(imgs, str) else imgs
        n_placeholders = sum(str(m.get("value", "")).count("<image>") for m in conv if isinstance(m, dict))
        if n_placeholders != len(imgs):
            return "image_placeholder_mismatch"
        if any(not (self.image_root / p).is_file() for p in imgs):
            return "missing_image"
        return None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        if get_worker_info() is not None and os.getpid() not in _QUIET_WORKERS:  # the Trainer's loader workers
            ignore_preemption_signals()  # SIGTERM/SIGUSR1 to the process group are the trainer's to handle
            _QUIET_WORKERS.add(os.getpid())
        paths, conv = self.items[i]
        try:
            images = [decode_image(p.read_bytes()) for p in paths]
            ids, labels = self.encoder.encode(conv, images)
        except SkipSample as e:
            return {"skip": e.reason}
        except ValueError as e:
            return {"skip": f"encode_error: {e}"}
        return {"input_ids": ids, "labels": labels, "images": images}


class Collator:
    """Pads text, preprocesses every image of the batch in order, drops (and counts) unusable samples."""

    def __init__(self, spec: ImageSpec, image_processor, pad_id: int) -> None:
        self.spec, self.image_processor, self.pad_id = spec, image_processor, pad_id

    def __call__(self, examples: list[dict]) -> dict:
        good = [e for e in examples if "skip" not in e]
        if not good:
            raise DataError(f"every sample of a batch was unusable: {[e['skip'] for e in examples]}")
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
        batch["n_skipped"] = torch.tensor(len(examples) - B)
        return batch
