"""This project's MLLM checkpoints as an lmms-eval model (``--model genlip_mllm --model_args pretrained=DIR``).

Registered through lmms-eval's ``lmms_eval.models`` entry point (see ``pyproject.toml``). Batch size 1: some tasks'
scores change with padding. Usable in-process on a live model too: :meth:`GenlipMllm.from_live` keeps the model alive
after lmms-eval's post-evaluation ``clean()``.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter

import torch
from lmms_eval.api.model import lmms
from lmms_eval.models.registry_v2 import ModelManifest

from eval.run import PROGRESS_PREFIX
from mllm.build import load_mllm
from mllm.chat import answer_batch

log = logging.getLogger(__name__)


class Progress:
    """Answers done per benchmark, its rate and the time left, as one line on stderr every ``every`` seconds and when
    a benchmark finishes (``genlip-eval run`` shows these lines while the rest of lmms-eval's output goes to its
    log)."""

    def __init__(self, tasks: list[str], every: float = 10.0, stream=None) -> None:
        self.total, self.done = Counter(tasks), Counter()
        self.every, self.stream = every, stream or sys.stderr
        self.start: dict[str, float] = {}
        self.last = 0.0
        self.mark = time.monotonic()  # a benchmark's clock starts when the previous one finished (or at creation)

    def step(self, task: str) -> None:
        now = time.monotonic()
        self.start.setdefault(task, self.mark)
        self.done[task] += 1
        finished = self.done[task] == self.total[task]
        if finished:
            self.mark = now
        if finished or now - self.last >= self.every:
            self.last = now
            n, total = self.done[task], self.total[task]
            rate = n / max(now - self.start[task], 1e-9)
            eta = "done" if finished else f"ETA {int((total - n) / rate) // 60}m{int((total - n) / rate) % 60:02d}s"
            print(f"{PROGRESS_PREFIX} {task}: {n}/{total} answers ({100 * n / total:.0f}%), {rate:.2f}/s, {eta}",
                  file=self.stream, flush=True)


class GenlipMllm(lmms):
    is_simple = True

    def __init__(self, pretrained: str | None = None, batch_size: int | str = 1, max_new_tokens: int = 64,
                 device: str = "auto", system_prompt: str | None = "You are a helpful assistant.",
                 keep_alive: bool = False, **kwargs) -> None:
        super().__init__()
        if kwargs:
            log.warning("genlip_mllm ignores unknown model_args %s", sorted(kwargs))
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.max_new_tokens, self.system_prompt, self.keep_alive = int(max_new_tokens), system_prompt, keep_alive
        self.parts = None
        if pretrained is not None:
            self.parts = load_mllm(pretrained)
            dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
            self.parts[0].to(dev).eval()

    @classmethod
    def from_live(cls, model, tokenizer, spec, image_processor, **kwargs) -> GenlipMllm:
        """Wrap an in-memory model; lmms-eval's ``clean()`` will not delete it."""
        obj = cls(pretrained=None, keep_alive=True, **kwargs)
        obj.parts = (model, tokenizer, spec, image_processor)
        return obj

    def clean(self) -> None:
        if not self.keep_alive:
            self.parts = None
            super().clean()

    def generate_until(self, requests) -> list[str]:
        """Answers in batches of ``batch_size`` requests with the same generation settings (left-padded prompts;
        greedy answers equal batch size 1's), returned in the requests' order."""
        model, tok, spec, ip = self.parts
        out: list[str | None] = [None] * len(requests)
        progress = Progress([req.args[4] for req in requests])
        groups: dict[tuple, list[int]] = {}
        for i, req in enumerate(requests):
            gen_kwargs = dict(req.args[1] or {})
            temperature = float(gen_kwargs.get("temperature", 0) or 0)
            s = (int(gen_kwargs.get("max_new_tokens", self.max_new_tokens)),
                 bool(gen_kwargs.get("do_sample", False)) and temperature > 0, temperature or 1.0,
                 tuple(x for x in (gen_kwargs.get("until", []) or []) if x))
            groups.setdefault(s, []).append(i)
        for (max_new, sample, temperature, until), idx in groups.items():
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start:start + self.batch_size]
                items = []
                for i in chunk:
                    context, _, doc_to_visual, doc_id, task, split = requests[i].args
                    doc = self.task_dict[task][split][doc_id]
                    visuals = [v.convert("RGB") for v in (doc_to_visual(doc) or [])]
                    items.append((visuals or None, context))
                texts = answer_batch(model, tok, spec, ip, items, max_new_tokens=max_new, do_sample=sample,
                                     temperature=temperature, system=self.system_prompt)
                for i, text in zip(chunk, texts):
                    for stop in until:
                        if stop in text:
                            text = text.split(stop)[0]
                    out[i] = text
                    progress.step(requests[i].args[4])
        return out

    def loglikelihood(self, requests):
        raise NotImplementedError("genlip_mllm answers by generation; loglikelihood tasks are not supported")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("genlip_mllm does not support multi-round generation tasks")


def manifest() -> ModelManifest:
    return ModelManifest(model_id="genlip_mllm", simple_class_path="eval.lmms_model.GenlipMllm")
