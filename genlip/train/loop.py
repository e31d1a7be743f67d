"""The pretraining loop shared by both stages: once in a while log / save, then one optimizer step.

One optimizer step = ``accum`` micro-batches per rank; the loss of every micro-batch is its summed cross-entropy
divided by the *global* number of supervised tokens of the step, so accumulation and data parallelism give the
same update as one big batch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from genlip.config import GenLIPConfig, genlip_config
from genlip.contrastive import GenLIPForContrastive
from genlip.data.dataset import PretrainStream, StopSignals, make_loader, split_meta
from genlip.data.decode import SkipStats
from genlip.export_hf import image_processor
from genlip.loss import count_supervised
from genlip.modeling import GenLIPForCaptioning
from genlip.run import checkpoint as C
from genlip.run import dist as D
from genlip.run.batching import BatchPlan, plan_batches
from genlip.run.config import RecipeError, recipe_diff, refuse_other_recipe
from genlip.run.curves import plot_curves
from genlip.run.runtime import configure_cpu_allocator
from genlip.train.data_setup import build_stream_parts
from genlip.train.metrics import RunLogger, check_logging
from genlip.train.optim import build_optimizer, lr_at
from genlip.train.recipe import Recipe

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    pass


def build_model(recipe: Recipe, tokenizer) -> GenLIPForCaptioning:
    """From scratch: the preset + overrides. With ``model.init_from`` (stage 2): the architecture and weights of that
    checkpoint, with the recipe's overrides (e.g. drop path) on top; optimizer and schedule start fresh.
    ``model.objective=sigmoid`` builds the SigLIP-style baseline (:mod:`genlip.contrastive`) instead."""
    cls = GenLIPForContrastive if recipe.model.objective == "sigmoid" else GenLIPForCaptioning

    overrides = {"attn_backend": recipe.model.attn_backend, **recipe.model.overrides}
    if not recipe.data.native:  # the config records the size it trains at: processors and exports default to it
        overrides.setdefault("image_size", recipe.data.image_size)
    if recipe.model.init_from:
        src = C.resolve_weights_dir(recipe.model.init_from)
        config = GenLIPConfig.from_pretrained(src)
        for k, v in overrides.items():
            setattr(config, k, v)
        if config.vocab_size < len(tokenizer):
            raise RecipeError(f"{src} has a vocabulary of {config.vocab_size} but the tokenizer has "
                              f"{len(tokenizer)} tokens")
        _check_preset(recipe, config, src)
        model = cls(config)
        C.load_weights(src, model)
        D.print0(f"initialised weights from {src} (fresh optimizer and schedule)")
    else:  # the vocabulary is the preset's (151,936 at paper scale) or model.overrides.vocab_size, never resized
        config = genlip_config(recipe.model.preset, eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                               pad_token_id=tokenizer.pad_token_id, **overrides)
        if config.vocab_size < len(tokenizer):
            raise RecipeError(f"the tokenizer has {len(tokenizer)} tokens, more than the vocabulary of "
                              f"{config.vocab_size} (model.preset {recipe.model.preset}); set "
                              f"model.overrides.vocab_size (at least {len(tokenizer)}) or use another tokenizer")
        model = cls(config)
    model.vit.activation_checkpointing = recipe.model.activation_checkpointing
    return model


# recipe keys that change how a run executes, not what it trains (options tested equal to the default, bookkeeping):
# a finished run given again with other values of these is still the same run
HOW_IT_RUNS = ("checkpoint", "log", "debug", "train.output_dir", "train.micro_batch", "train.parallel",
               "train.cpu_allocator", "data.num_workers", "model.attn_backend", "model.loss_impl",
               "model.activation_checkpointing", "model.compile", "model.compile_mode", "model.compile_scope")
# what a run writes into its train.output_dir (what --resume none sets aside; anything else there is left alone)
RUN_FILES = ("checkpoints", "metrics.jsonl", "tensorboard", "curves.png", "wandb")
ARCH_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "patch_size")


def _check_preset(recipe: Recipe, config, src: Path) -> None:
    """A stage-2 recipe that names a preset continues a checkpoint of that architecture, never another one."""
    if recipe.model.preset is None:
        return
    want = genlip_config(recipe.model.preset, **{k: v for k, v in recipe.model.overrides.items() if k in ARCH_KEYS})
    diff = [f"{k} {getattr(config, k)} (preset: {getattr(want, k)})" for k in ARCH_KEYS
            if getattr(config, k) != getattr(want, k)]
    if diff:
        raise RecipeError(f"model.preset={recipe.model.preset} does not match the init_from checkpoint {src}: "
                         f"{', '.join(diff)}; set model.preset to the checkpoint's or null")


@dataclass
class Run:
    """Everything :func:`train` sets up for the loop: the model and its wrapper, the data stream and its position,
    the trainer state that goes into every checkpoint."""

    recipe: Recipe
    device: torch.device
    model: GenLIPForCaptioning
    wrapped: torch.nn.Module
    optimizer: torch.optim.Optimizer
    tokenizer: object
    accum: int
    state: dict
    batches: Iterator
    consumed: int
    stream_states: dict
    logger: RunLogger
    autocast: contextlib.AbstractContextManager = field(default_factory=contextlib.nullcontext)

    def next_step_batches(self) -> list[dict]:
        """The ``accum`` micro-batches of one optimizer step on this rank; the data position advances."""
        micro = []
        for _ in range(self.accum):
            inputs, meta = split_meta(next(self.batches))
            self.consumed += 1
            self.stream_states[str(meta["_stream"])] = meta["_state"]
            micro.append(inputs)
        return micro


def train(recipe: Recipe) -> Path:
    """Set up (or resume), loop ``train_step`` until ``train.steps``, logging and saving on the way; a finished run
    given again only says so. SIGTERM/SIGUSR1 finish the current step, save and return."""
    device = D.init()
    plan = resolve_batches(recipe.train, D.world()[2])
    done = _finished(recipe)
    if done is not None:
        refuse_other_recipe(done / "recipe.yaml", recipe, HOW_IT_RUNS, str(done), "--resume none")
        D.print0(f"already finished: {recipe.train.output_dir} reached step {recipe.train.steps}; final weights: "
                 f"{done} (raise train.steps to train on, or --resume none to start again)")
        return Path(recipe.train.output_dir)
    check_logging(recipe)
    run = setup(recipe, device, plan)
    preempt = StopSignals()
    t = recipe.train
    step = last_saved = run.state["step"]
    one = D.world()[2] == 1
    loss, tic, stopped = float("nan"), time.time(), one and preempt.flag
    run.wrapped.train()
    try:
        while step < t.steps and not stopped:
            micro = run.next_step_batches()
            loss, grad_norm, n_global, stop_any = train_step(run, micro, step + 1, stop=preempt.flag)
            step += 1
            _count_progress(run, micro)
            if step % recipe.log.every == 0 or step == t.steps:
                _log_step(run, step, micro, loss, grad_norm, n_global, time.time() - tic)
                tic = time.time()
            if step % recipe.checkpoint.every == 0 or step == t.steps:
                save_checkpoint(run, step)
                last_saved = step
            # the ranks learn of a signal through the next step's all-reduce, so all stop after the same step; one
            # process stops right after the step it was signalled in
            stopped = stop_any or (one and preempt.flag)
        if stopped and last_saved != step:  # every rank (the save is collective)
            if preempt.interrupted:
                D.print0(f"\ninterrupted: saving step {step} (Ctrl-C again stops at once, unsaved)")
            save_checkpoint(run, step)
            last_saved = step
    finally:
        run.logger.close()
    if D.is_main() and (Path(t.output_dir) / "metrics.jsonl").exists():
        rows = [json.loads(x) for x in (Path(t.output_dir) / "metrics.jsonl").read_text().splitlines() if x.strip()]
        plot_curves(rows, Path(t.output_dir) / "curves.png", f"{recipe.name} (stage {recipe.stage})")
    if stopped and preempt.interrupted:
        D.print0(f"interrupted: saved step {last_saved}; run the same command to continue (--resume auto)")
        raise SystemExit(130)
    if stopped:
        D.print0(f"pre-empted: saved step {last_saved}, exiting")
    elif D.is_main() and last_saved == t.steps:
        stats = SkipStats.from_dict(run.state["skips"])  # every rank's, gathered by the final save
        by_source = stats.source_summary()
        D.print0(f"done: {t.steps} steps, final loss {loss:.4f}; skipped records: {stats.n_skipped} "
                 f"{dict(stats.skipped)}" + (f" (by source: {by_source})" if by_source else "")
                 + f"; used records: {dict(stats.used)}; final weights: "
                 f"{Path(t.output_dir) / 'checkpoints' / f'{C.STEP_PREFIX}{step:08d}'}")
    return Path(t.output_dir)


def _options(recipe: Recipe, bf16: bool) -> str:
    """The speed and memory options in effect, as one part of the start-up line."""
    m, t = recipe.model, recipe.train
    compiled = f"compiled {m.compile_scope} ({m.compile_mode})" if m.compile else "not compiled"
    return (f"{'bf16' if bf16 else 'fp32'} compute, {t.param_dtype} params, {compiled}, attention {m.attn_backend}, "
            f"checkpointing {m.activation_checkpointing}, loss {m.loss_impl}")


def resolve_batches(t, world_size: int) -> BatchPlan:
    """Split ``train.global_batch`` over the ranks (see :mod:`genlip.run.batching`) and write the result into the
    recipe (micro-batch, global batch and steps as trained), so checkpoints hold what was run."""
    plan = plan_batches(t.global_batch, t.micro_batch, world_size, t.steps, t.batch_rounding)
    t.micro_batch, t.global_batch, t.steps = plan.micro_batch, plan.global_batch, plan.steps
    return plan


def setup(recipe: Recipe, device: torch.device, plan: BatchPlan | None = None) -> Run:
    """Model, optimizer, data and trainer state, from scratch or from the run's checkpoint; prints the set-up."""
    t = recipe.train
    if t.precision == "bf16" and device.type != "cuda":
        raise RecipeError("train.precision=bf16 needs CUDA; bf16 matmuls are far slower than fp32 on CPUs")
    rank, _, ws = D.world()
    plan = plan or resolve_batches(t, ws)
    run_dir = Path(t.output_dir)
    torch.manual_seed(t.seed)  # identical initial weights on every rank
    # the recipe's data mistakes stop here, before any log
    sources, units, tokenizer, builder = build_stream_parts(recipe)
    allocator = configure_cpu_allocator(t.cpu_allocator) if device.type == "cpu" else "cuda caching"
    model = build_model(recipe, tokenizer).to(device)
    if recipe.model.compile:
        compile_model(model, recipe.model.compile_mode, recipe.model.compile_scope)
    parallel = t.parallel
    if t.param_dtype == "bf16":  # fp32 master weights live in FSDP2's shards, bf16 copies are gathered per forward
        if ws > 1 and t.parallel != "fsdp":
            raise RecipeError("train.param_dtype=bf16 keeps fp32 master weights in FSDP2's shards: with several "
                              "processes it needs train.parallel=fsdp")
        if ws == 1:
            D.init_single(device)  # FSDP2 over one process: the same weights, dtypes and checkpoints
        parallel = "fsdp"
    wrapped = D.wrap(model, parallel, device, t.param_dtype)
    optimizer = build_optimizer(wrapped, recipe.optim)
    state = {"step": 0, "samples": 0, "tokens": 0, "nonfinite_skips": 0, "data": {"streams": {}, "batches": {}}}
    if recipe.checkpoint.resume == "none":  # starting over, the recipe checked: the earlier run's files must not
        moved = C.set_aside(run_dir, RUN_FILES) if D.is_main() else None  # pass for this one's
        if moved is not None:
            D.print0(f"starting over (--resume none): the earlier run's files moved to {moved}")
        D.barrier()
    ckpt = C.find_resume(run_dir, recipe.checkpoint.resume)
    if ckpt is not None:
        state = C.load(ckpt, wrapped, optimizer)
        D.print0(f"resumed from {ckpt} at step {state['step']}")
        _warn_recipe_changes(ckpt / "recipe.yaml", recipe)
    else:
        torch.manual_seed(t.seed + 1000 * rank)  # per-rank stream for DropPath; restored on resume
    consumed = int(state["data"]["batches"].get(str(rank), 0))
    dataset = PretrainStream(sources, builder, t.micro_batch, seed=t.seed, rank=rank, world_size=ws,
                             num_workers=recipe.data.num_workers, min_image_size=recipe.data.min_image_size,
                             max_aspect_ratio=recipe.data.max_aspect_ratio,
                             max_skip_fraction=recipe.data.max_skip_fraction,
                             min_seen_for_check=recipe.data.skip_check_after, resume=state["data"]["streams"],
                             units=units)
    dataset.rotation = consumed % dataset.streams_per_rank
    accum = plan.accum
    c = model.config
    bf16 = device.type == "cuda" and t.precision != "fp32"  # auto: bf16 autocast on CUDA
    D.print0(f"GenLIP stage {recipe.stage} | {recipe.model.preset or 'init_from'} ({c.num_hidden_layers} x "
             f"{c.hidden_size}) {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params | "
             f"{plan.describe()} | {t.steps} steps | "
             f"{ws * dataset.streams_per_rank} data streams | device {device.type} (allocator: {allocator}) | "
             f"{_options(recipe, bf16)} | run dir {run_dir}")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    loader = make_loader(dataset, recipe.data.num_workers, pin_memory=device.type == "cuda")
    return Run(recipe, device, model, wrapped, optimizer, tokenizer, accum, state,
               iter(loader), consumed, dict(state["data"]["streams"]),
               RunLogger(run_dir, recipe, t.steps, state["step"]), autocast)


def compile_model(model, mode: str = "default", scope: str = "blocks", dynamic: bool = True) -> None:
    """``model.compile=true``: GenLIP's blocks compiled in place (parameter names and checkpoints unchanged), each
    on its own or the whole stack as one graph (``model.compile_scope``). genlip-pretrain compiles for dynamic shapes
    (stage-1 text lengths vary per batch); the benchmarks, whose batches never change shape, pass ``dynamic=False``."""
    for part in [model.vit] if scope == "transformer" else model.vit.blocks:
        part.compile(dynamic=dynamic, mode=mode)


def train_step(run: Run, micro: list[dict], step: int, stop: bool = False) -> tuple[float, float, int, bool]:
    """One optimizer step (``step`` counts from 1) over the micro-batches: returns the loss, the gradient norm
    before clipping, the global number of supervised tokens and whether any rank asked to ``stop`` (a signal: it
    rides on the all-reduce of the token count, so agreeing costs no collective of its own). A non-finite loss or
    gradient skips the update (counted, with ``train.skip_nonfinite``) or raises :class:`NonFiniteError`."""
    recipe, wrapped, ws = run.recipe, run.wrapped, D.world()[2]
    if recipe.model.objective == "sigmoid":  # the loss is normalised per sample (row of the pair matrix)
        n_local = sum(int(m["input_ids"].shape[0]) for m in micro)
    else:
        n_local = sum(count_supervised(m["labels"], m.get("sample_ids")) for m in micro)
    n_global, stop_any = D.all_reduce_sum(torch.tensor([n_local, float(stop)], dtype=torch.float64)).tolist()
    n_global, stop_any = int(n_global), stop_any > 0
    # the loss stays on the device until the step's end: one read-back per step, not a wait for every
    # micro-batch's backward before the next one's copy and forward can be queued
    loss_sum = torch.zeros((), dtype=torch.float64, device=run.device)
    poison = float("nan") if step in recipe.debug.nan_steps else 1.0
    # CUDA graphs (compile modes reduce-overhead, max-autotune) reuse their output memory from one run to the next:
    # each micro-batch's forward + backward is one run, said explicitly rather than left to inference
    graphs = recipe.model.compile and recipe.model.compile_mode in ("reduce-overhead", "max-autotune")
    for i, m in enumerate(micro):
        sync = wrapped.no_sync() if i < len(micro) - 1 and hasattr(wrapped, "no_sync") else contextlib.nullcontext()
        m = {k: v.to(run.device, non_blocking=True) for k, v in m.items()}
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with sync, run.autocast:
            out = wrapped(**m, num_items_in_batch=max(n_global, 1), loss_impl=recipe.model.loss_impl)
            (out.loss * (ws * poison)).backward()  # DDP/FSDP average gradients over ranks; undo that
        loss_sum += out.loss_sum.detach().double() * poison
    loss_total = D.all_reduce_sum(loss_sum)
    norm = torch.nn.utils.clip_grad_norm_(wrapped.parameters(), recipe.optim.clip_grad)  # queued before reading
    loss = float(loss_total.item()) / max(n_global, 1)
    grad_norm = float(norm)
    if math.isfinite(loss) and math.isfinite(grad_norm):
        for g in run.optimizer.param_groups:
            g["lr"] = lr_at(step - 1, recipe.train.steps, recipe.optim.lr, recipe.optim.min_lr,
                            recipe.optim.warmup_ratio)
        run.optimizer.step()
    else:
        _nonfinite(run, step, loss, grad_norm)
    run.optimizer.zero_grad(set_to_none=True)
    return loss, grad_norm, n_global, stop_any


def _nonfinite(run: Run, step: int, loss: float, grad_norm: float) -> None:
    t = run.recipe.train
    if not t.skip_nonfinite or run.state["nonfinite_skips"] >= t.max_nonfinite_skips:
        last = C.list_checkpoints(Path(t.output_dir))
        advice = (f"{run.state['nonfinite_skips']} steps were skipped already (train.max_nonfinite_skips="
                  f"{t.max_nonfinite_skips})" if t.skip_nonfinite else
                  "or set train.skip_nonfinite=true to skip such steps (counted)")
        raise NonFiniteError(
            f"non-finite loss ({loss}) or gradient norm ({grad_norm}) at step {step}; the last good checkpoint is "
            f"{last[-1] if last else 'none'}. Lower optim.lr, raise warmup, {advice}.")
    run.optimizer.zero_grad(set_to_none=True)
    run.state["nonfinite_skips"] += 1
    log.warning("skipped step %d: non-finite loss/gradient (%d skipped so far)", step, run.state["nonfinite_skips"])


def _count_progress(run: Run, micro: list[dict]) -> None:
    ws = D.world()[2]
    run.state["samples"] += sum(_count_samples(m) for m in micro) * ws
    run.state["tokens"] += sum(_count_tokens(m, run.model.config.patch_size) for m in micro) * ws


def _log_step(run: Run, step: int, micro: list[dict], loss: float, grad_norm: float, n_global: int,
              seconds: float) -> None:
    recipe, ws = run.recipe, D.world()[2]
    every = recipe.log.every
    samples = sum(_count_samples(m) for m in micro) * ws
    tokens = sum(_count_tokens(m, run.model.config.patch_size) for m in micro) * ws
    streams = _gather_data_state(run.stream_states, run.consumed)["streams"] if ws > 1 else run.stream_states
    stats = _merged_stats(streams)
    lr = lr_at(step - 1, recipe.train.steps, recipe.optim.lr, recipe.optim.min_lr, recipe.optim.warmup_ratio)
    row = {"loss": loss, "lr": lr, "grad_norm": grad_norm,
           "supervised_tokens": n_global, "samples/s": samples * every / seconds, "tok/s": tokens * every / seconds,
           "skipped": stats.n_skipped, "skip_reasons": dict(stats.skipped), "used": dict(stats.used),
           "nonfinite_skips": run.state["nonfinite_skips"]}
    if stats.by_source:  # a mix of more than one source: what each was read and skipped for
        row["by_source"] = stats.to_dict()["by_source"]
    if "sample_ids" in micro[0]:
        row["fill"] = tokens / (sum(m["sample_ids"].numel() for m in micro) * ws)
    run.logger.log(step, row)


def save_checkpoint(run: Run, step: int) -> None:
    """Collective: the trainer state with every rank's data position, then :func:`genlip.run.checkpoint.save`."""
    run.state["step"] = step
    run.state["data"] = _gather_data_state(run.stream_states, run.consumed)
    run.state["skips"] = _merged_stats(run.state["data"]["streams"]).to_dict()
    C.save(Path(run.recipe.train.output_dir), step, run.wrapped, run.optimizer, run.state, run.recipe,
           run.recipe.checkpoint.keep, extra_files=lambda d: _processing_files(run, d))


def _processing_files(run: Run, d: Path) -> None:
    """Beside the weights: the tokenizer, and the image processor of the training preprocessing (square resize to
    the config's size, bilinear, mean = std = 0.5), so ``AutoImageProcessor`` loads a checkpoint as it is."""
    run.tokenizer.save_pretrained(str(d))
    image_processor(run.model.config).save_pretrained(str(d))


def _finished(recipe: Recipe) -> Path | None:
    """The checkpoint of a run that already reached ``train.steps`` (what a second run of the same command finds)."""
    ckpt = C.find_resume(Path(recipe.train.output_dir), recipe.checkpoint.resume)
    info = C.run_info(recipe.train.output_dir, ckpt) if ckpt is not None else None
    return ckpt if info is not None and info.step >= recipe.train.steps else None


def _gather_data_state(stream_states: dict, consumed: int) -> dict:
    rank = D.world()[0]
    gathered = D.all_gather_object({"streams": stream_states, "batches": {str(rank): consumed}})
    out = {"streams": {}, "batches": {}}
    for g in gathered:
        out["streams"].update(g["streams"])
        out["batches"].update(g["batches"])
    return out


def _merged_stats(stream_states: dict) -> SkipStats:
    total = SkipStats()
    for s in stream_states.values():
        total = total.merge(SkipStats.from_dict(s.get("stats", {})))
    return total


def _count_samples(m: dict) -> int:
    if "sample_ids" in m:
        return int((m["sample_ids"].max(dim=1).values + 1).sum())
    return int(m["input_ids"].shape[0])


def _count_tokens(m: dict, patch: int) -> int:
    """Tokens the Transformer processes (image + text, padding excluded)."""
    if "sample_ids" in m:
        return int((m["sample_ids"] >= 0).sum())
    px = m["pixel_values"]
    n_img = (px.shape[-2] // patch) * (px.shape[-1] // patch)
    return int(m["attention_mask"].sum()) + n_img * px.shape[0]


def _warn_recipe_changes(saved: Path, recipe: Recipe) -> None:
    """Resuming under a different recipe is allowed (e.g. more steps) but never silent."""
    if saved.exists():
        changed = [d for d in recipe_diff(yaml.safe_load(saved.read_text()), recipe)
                   if not d.startswith("checkpoint.resume")]
        if changed:  # once, from the first rank
            D.print0("WARNING: the recipe differs from the checkpoint's: " + "; ".join(changed))
