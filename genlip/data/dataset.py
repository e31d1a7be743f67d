"""The pretraining data stream: weighted mixing of sources, rank x worker sharding, counted skips, exact resume.

Every rank runs ``max(1, num_workers)`` streams; stream ``rank * W + w`` reads its disjoint part of every source
(see :mod:`genlip.data.sources`). Each batch carries the state of the stream that made it, so the trainer can save
exactly where every stream stands and resume there without re-decoding anything.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import threading
from collections import Counter
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from genlip.data.decode import SkipSample, SkipStats, decode_image, find_caption
from genlip.data.sources import DataError, SourceSpec, SourceStream, expand_paths

log = logging.getLogger(__name__)
EARLIER = "(read before counts by source)"


class ExampleBuilder:
    """Stage-specific part of the pipeline: ``build(image, caption) -> example`` and how examples form batches.

    ``batches`` yields ``(batch, pending)``: ``pending`` lists the stream positions of examples already read but not
    yet in an emitted batch (a packer's buffer), so a resumed run can rebuild them exactly; ``None`` if there are none.
    """

    def build(self, image, caption: str) -> dict:
        raise NotImplementedError

    def batches(self, examples: Iterator[dict], batch_size: int, restored=None) -> Iterator[tuple[dict, object]]:
        """Stage 1: a fixed number of samples per batch, nothing held back."""
        buf = []
        for e in examples:
            buf.append(e)
            if len(buf) == batch_size:
                yield self.collate(buf), None
                buf = []

    def collate(self, examples: list[dict]) -> dict:
        raise NotImplementedError


class PretrainStream(IterableDataset):
    """Yields ready batches ``{..., "_stream": id, "_state": cursor, "_stats": skip counts}`` forever."""

    def __init__(self, sources: list[SourceSpec], builder: ExampleBuilder, batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, num_workers: int = 0, min_image_size: int = 2,
                 max_aspect_ratio: float = 200.0, max_skip_fraction: float = 0.1, min_seen_for_check: int = 200,
                 resume: dict | None = None, units: list[list[str]] | None = None) -> None:
        if not sources:
            raise DataError("no data sources configured")
        self.sources, self.builder, self.batch_size, self.seed = sources, builder, batch_size, seed
        # each source's files, resolved once here (``units``: already resolved by the caller); the workers receive
        # the lists with the dataset instead of globbing every shard again
        self.units = [list(u) for u in units] if units is not None else [expand_paths(s.path) for s in sources]
        if len(self.units) != len(sources):
            raise ValueError(f"units: {len(self.units)} file lists for {len(sources)} sources")
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        self.min_image_size, self.max_aspect_ratio = min_image_size, max_aspect_ratio
        self.max_skip_fraction, self.min_seen_for_check = max_skip_fraction, min_seen_for_check
        self.resume = resume or {}
        self.rotation = 0  # set by the trainer on resume so worker order continues where it stopped

    @property
    def streams_per_rank(self) -> int:
        return max(1, self.num_workers)

    def _stream_id(self) -> int:
        info = get_worker_info()
        w = 0 if info is None else (info.id + self.rotation) % info.num_workers
        return self.rank * self.streams_per_rank + w

    def __iter__(self) -> Iterator[dict]:
        sid = self._stream_id()
        n_streams = self.world_size * self.streams_per_rank
        stats = SkipStats()
        mix = len(self.sources) > 1  # reads and skips are also counted by source
        state = self.resume.get(str(sid), {})
        if state.get("stats"):
            stats = SkipStats.from_dict(state["stats"])
            if mix and "by_source" not in state["stats"] and stats.seen:
                # saved before reads were counted by source: what was read then stays in the sums, under its own name
                stats.by_source[EARLIER] = Counter({"seen": stats.seen, **stats.skipped})
        draws = state.get("draws", 0)

        def on_error(reason: str, where: str, source: str) -> None:
            log.warning("skipping %s: %s", reason, where)
            stats.skip(reason, where, source if mix else "")

        streams = [SourceStream(s, sid, n_streams, self.seed,
                                lambda reason, where, name=s.name: on_error(reason, where, name), units=u)
                   for s, u in zip(self.sources, self.units)]
        for st, spec in zip(streams, self.sources):
            if spec.name in state.get("sources", {}):
                st.load_state(state["sources"][spec.name])
        iters = [iter(s) for s in streams]
        weights = np.array([s.weight for s in self.sources], dtype=np.float64)
        weights /= weights.sum()

        def load(k: int, where: str, rec: dict) -> dict:
            if "__bad__" in rec:
                raise SkipSample(*rec["__bad__"].split(": ", 1))
            caption, fld = find_caption(rec, self.sources[k].caption_fields)
            image = decode_image(rec.get("image"), self.min_image_size, self.max_aspect_ratio)
            ex = self.builder.build(image, caption)
            ex["_used"] = (f"caption:{fld}", "caption_cut") if ex.pop("_caption_cut", False) else (f"caption:{fld}",)
            return ex

        def examples() -> Iterator[dict]:
            nonlocal draws
            while True:
                k = 0 if len(iters) == 1 else int(np.random.default_rng([self.seed, sid, draws]).choice(
                    len(iters), p=weights))
                draws += 1
                pos = {"source": k, "cursor": streams[k].state()}
                where, rec = next(iters[k])
                name = self.sources[k].name if mix else ""
                stats.read(name)
                try:
                    ex = load(k, where, rec)
                except SkipSample as e:
                    on_error(e.reason, f"{where} {e.detail}".strip(), name)
                    self._check_skips(stats, sid, name, e)
                    continue
                stats.used.update(ex.pop("_used"))
                ex["_pos"] = pos
                yield ex

        def replay(pos: dict) -> dict:
            """Rebuild an example that was read before the checkpoint but not yet trained on. What it reads past (a
            cut shard between the cursor and the record) was counted then, and is in the restored stats already."""
            k = pos["source"]
            st = SourceStream(self.sources[k], sid, n_streams, self.seed, lambda reason, where: None,
                              units=self.units[k])
            st.load_state(pos["cursor"])
            where, rec = next(iter(st))
            try:
                ex = load(pos["source"], where, rec)
            except SkipSample as e:
                raise DataError(f"cannot rebuild {where} on resume: {e}") from e
            ex.pop("_used")  # counted when it was first read
            ex["_pos"] = pos
            return ex

        restored = _map_positions(state.get("pending"), replay)
        for batch, pending in self.builder.batches(examples(), self.batch_size, restored):
            batch["_stream"] = sid
            batch["_state"] = {"draws": draws, "sources": {s.name: st.state() for s, st in
                                                          zip(self.sources, streams)},
                               "stats": stats.to_dict(), "pending": pending}
            yield batch

    def _check_skips(self, stats: SkipStats, sid: int, source: str, cause: Exception) -> None:
        """Too many bad records stop the run: more than ``max_skip_fraction`` of the stream's records once it has read
        ``min_seen_for_check``, or of one source's in a mix once that source has read as many (a broken source of
        small weight would otherwise be left out of the mix without stopping anything)."""
        limit, at_least = self.max_skip_fraction, self.min_seen_for_check
        shares = [(stats.n_records_skipped, stats.seen, "")]
        if source:
            shares.append((*stats.source_share(source), f" of source {source!r}"))
        over = [(bad, seen, of) for bad, seen, of in shares if seen >= at_least and bad / seen > limit]
        if not over:
            return
        bad, seen, of = over[0]
        by_source = stats.source_summary()
        raise DataError(f"{bad} of {seen} records{of} skipped ({bad / seen:.1%} > max_skip_fraction {limit:.1%}) in "
                        f"stream {sid}; reasons {dict(stats.skipped)}"
                        + (f"; by source: {by_source}" if by_source else "") + f"; last: {stats.last}") from cause


def _map_positions(tree, fn):
    """Apply ``fn`` to every position dict in a nested list/dict structure of positions."""
    if tree is None:
        return None
    if isinstance(tree, dict) and "cursor" in tree:
        return fn(tree)
    if isinstance(tree, dict):
        return {k: _map_positions(v, fn) for k, v in tree.items()}
    return [_map_positions(v, fn) for v in tree]


PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopSignals:
    """What both trainers' main processes do on SIGTERM/SIGUSR1 (SLURM pre-emption, ``scancel``) and a first Ctrl-C
    (SIGINT): set ``flag`` (and ``interrupted`` for Ctrl-C), so the trainer finishes its step, saves and stops. A second
    Ctrl-C stops at once (Python's KeyboardInterrupt). The loader workers ignore all three
    (:func:`ignore_preemption_signals`)."""

    def __init__(self) -> None:
        self.flag = self.interrupted = False
        for sig in (*PREEMPTION_SIGNALS, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not in the main thread
                signal.signal(sig, self._set)

    def _set(self, sig, _frame):  # flags only: printing here could re-enter a write to the same stream
        self.flag = True
        if sig == signal.SIGINT:
            self.interrupted = True
            signal.signal(signal.SIGINT, signal.default_int_handler)


def ignore_preemption_signals(worker_id: int = 0) -> None:
    """In a loader worker: SIGTERM/SIGUSR1 sent to the whole process group (``scancel``, SLURM pre-emption,
    ``--signal`` without ``B:``) belong to the trainer, which finishes its step and saves; they must not kill the
    workers first. SIGUSR1 is ignored. SIGTERM is blocked and taken by a thread that reads who sent it: from the
    worker's own parent it is the loader shutting its workers down (``Process.terminate``), and the worker exits;
    from anyone else it is ignored. (Where ``sigwaitinfo`` is missing, SIGTERM keeps its default.) SIGINT (Ctrl-C in
    a terminal reaches the whole foreground process group) is ignored too: the trainer finishes its step and saves."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):
        return
    parent = os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

    def sender_decides() -> None:
        while True:
            if signal.sigwaitinfo({signal.SIGTERM}).si_pid == parent:
                os._exit(0)

    threading.Thread(target=sender_decides, name="sigterm-from-parent", daemon=True).start()


def _init_worker(then: Callable | None, worker_id: int) -> None:
    ignore_preemption_signals(worker_id)
    if then is not None:
        then(worker_id)


def make_loader(dataset: PretrainStream, num_workers: int, worker_init: Callable | None = None,
                pin_memory: bool = False) -> DataLoader:
    """A DataLoader over ready batches (``batch_size=None``); workers keep their own streams and ignore the
    pre-emption signals (:func:`ignore_preemption_signals`) before running ``worker_init``. ``pin_memory`` (the
    trainer sets it on CUDA): batches arrive in page-locked memory, so the trainer's ``non_blocking`` copies to the
    GPU overlap with its work instead of staging through pageable memory on the training thread."""
    init = functools.partial(_init_worker, worker_init) if num_workers else None
    return DataLoader(dataset, batch_size=None, num_workers=num_workers, worker_init_fn=init,
                      persistent_workers=False, prefetch_factor=4 if num_workers else None,
                      multiprocessing_context="fork" if num_workers and os.name == "posix" else None,
                      pin_memory=pin_memory)


def split_meta(batch: dict) -> tuple[dict, dict]:
    """Separate the tensors a model needs from the stream metadata."""
    meta = {k: batch.pop(k) for k in list(batch) if k.startswith("_")}
    return {k: v for k, v in batch.items() if isinstance(v, torch.Tensor) or k == "layout"}, meta
