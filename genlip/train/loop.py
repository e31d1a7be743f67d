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
import os
import signal
import time
from pathlib import Path

import torch

from genlip.config import genlip_config
from genlip.data.dataset import PretrainStream, make_loader, split_meta
from genlip.data.decode import SkipStats
from genlip.loss import count_supervised
from genlip.modeling import GenLIPForCaptioning
from genlip.runtime import configure_cpu_allocator
from genlip.train import checkpoint as C
from genlip.train import dist as D
from genlip.train.data_setup import build_stream_parts
from genlip.train.metrics import RunLogger
from genlip.train.optim import build_optimizer, lr_at
from genlip.train.recipe import Recipe, RecipeError

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    pass


def build_model(recipe: Recipe, tokenizer) -> GenLIPForCaptioning:
    """From scratch: the preset + overrides. With ``model.init_from`` (stage 2): the architecture and weights of that
    checkpoint, with the recipe's overrides (e.g. drop path) on top; optimizer and schedule start fresh.
    ``model.objective=sigmoid`` builds the SigLIP-style baseline (:mod:`genlip.contrastive`) instead."""
    from genlip.config import GenLIPConfig

    if recipe.model.objective not in ("generative", "sigmoid"):
        raise ValueError(f"model.objective must be generative or sigmoid, got {recipe.model.objective!r}")
    cls = GenLIPForCaptioning
    if recipe.model.objective == "sigmoid":
        from genlip.contrastive import GenLIPForContrastive

        if recipe.data.native:
            raise ValueError("model.objective=sigmoid trains at a fixed resolution (stage 1); set data.native=false")
        cls = GenLIPForContrastive

    vocab = int(math.ceil(len(tokenizer) / 64) * 64)
    overrides = {"attn_backend": recipe.model.attn_backend, **recipe.model.overrides}
    if recipe.model.init_from:
        src = C.resolve_weights_dir(recipe.model.init_from)
        config = GenLIPConfig.from_pretrained(src)
        for k, v in overrides.items():
            setattr(config, k, v)
        if config.vocab_size < len(tokenizer):
            raise ValueError(f"{src} has a vocabulary of {config.vocab_size} but the tokenizer has {len(tokenizer)}")
        _check_preset(recipe, config, src)
        model = cls(config)
        C.load_weights(src, model)
        D.print0(f"initialised weights from {src} (fresh optimizer and schedule)")
    else:
        model = cls(genlip_config(
            recipe.model.preset, vocab_size=vocab, eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
            pad_token_id=tokenizer.pad_token_id, **overrides))
    if recipe.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


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


class _Preempt:
    """SIGTERM/SIGUSR1 (SLURM pre-emption): finish the current step, save, exit."""

    def __init__(self) -> None:
        self.flag = False
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            with contextlib.suppress(ValueError):  # not in the main thread
                signal.signal(sig, self._set)

    def _set(self, *_):
        self.flag = True


def train(recipe: Recipe) -> Path:
    device = D.init()
    done = _finished(recipe)
    if done is not None:
        D.print0(f"already finished: {recipe.train.output_dir} reached step {recipe.train.steps}; final weights: "
                 f"{done} (raise train.steps to train on, or --resume none to start again)")
        return Path(recipe.train.output_dir)
    allocator = configure_cpu_allocator(recipe.train.cpu_allocator) if device.type == "cpu" else "cuda caching"
    rank, _, ws = D.world()
    run_dir = Path(recipe.train.output_dir)
    torch.manual_seed(recipe.train.seed)  # identical initial weights on every rank
    sources, tokenizer, builder = build_stream_parts(recipe)
    model = build_model(recipe, tokenizer).to(device)
    if recipe.model.compile:
        for block in model.vit.blocks:
            block.compile(dynamic=True)
    wrapped = D.wrap(model, recipe.train.parallel, device)
    optimizer = build_optimizer(wrapped, recipe.optim)
    t = recipe.train
    if t.global_batch % (t.micro_batch * ws):
        raise ValueError(f"train.global_batch {t.global_batch} must be a multiple of micro_batch {t.micro_batch} x "
                         f"world size {ws}")
    accum = t.global_batch // (t.micro_batch * ws)

    state = {"step": 0, "samples": 0, "tokens": 0, "nonfinite_skips": 0, "data": {"streams": {}, "batches": {}}}
    ckpt = C.find_resume(run_dir, recipe.checkpoint.resume)
    if ckpt is not None:
        state = C.load(ckpt, wrapped, optimizer)
        D.print0(f"resumed from {ckpt} at step {state['step']}")
        _warn_recipe_changes(ckpt / "recipe.yaml", recipe)
    if ckpt is None:
        torch.manual_seed(recipe.train.seed + 1000 * rank)  # per-rank stream for DropPath; restored on resume

    consumed = int(state["data"]["batches"].get(str(rank), 0))
    workers = recipe.data.num_workers
    dataset = PretrainStream(sources, builder, t.micro_batch, seed=t.seed, rank=rank, world_size=ws,
                             num_workers=workers, min_image_size=recipe.data.min_image_size,
                             max_aspect_ratio=recipe.data.max_aspect_ratio,
                             max_skip_fraction=recipe.data.max_skip_fraction, resume=state["data"]["streams"])
    dataset.rotation = consumed % dataset.streams_per_rank
    batches = iter(make_loader(dataset, workers))
    stream_states = dict(state["data"]["streams"])

    n_params = sum(p.numel() for p in model.parameters())
    c = model.config
    arch = f"{recipe.model.preset or 'init_from'} ({c.num_hidden_layers} x {c.hidden_size})"
    D.print0(f"GenLIP stage {recipe.stage} | {arch} {n_params / 1e6:.1f}M params | world {ws} x "
             f"micro {t.micro_batch} x accum {accum} = {t.global_batch} per step | {t.steps} steps | "
             f"{ws * dataset.streams_per_rank} data streams | device {device.type} (allocator: {allocator}) | "
             f"run dir {run_dir}")
    logger = RunLogger(run_dir, recipe, t.steps, state["step"])
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and t.precision != "fp32"
                else contextlib.nullcontext())
    if t.precision == "bf16" and device.type != "cuda":
        raise ValueError("train.precision=bf16 needs CUDA; bf16 matmuls are far slower than fp32 on CPUs")
    preempt = _Preempt()
    # fault injection for tests: make these steps' loss (and so every gradient) NaN
    inject_nan = {int(x) for x in os.environ.get("GENLIP_INJECT_NAN_STEPS", "").split(",") if x.strip()}
    step, last_saved = state["step"], state["step"]
    loss = float("nan")
    tic = time.time()
    wrapped.train()
    try:
        while step < t.steps:
            micro = []
            for _ in range(accum):
                inputs, meta = split_meta(next(batches))
                consumed += 1
                stream_states[str(meta["_stream"])] = meta["_state"]
                micro.append(inputs)
            if recipe.model.objective == "sigmoid":  # the loss is normalised per sample (row of the pair matrix)
                n_local = sum(int(m["input_ids"].shape[0]) for m in micro)
            else:
                n_local = sum(count_supervised(m["labels"], m.get("sample_ids")) for m in micro)
            n_global = int(D.all_reduce_sum(torch.tensor(n_local, dtype=torch.float64)).item())
            loss_sum = torch.zeros((), dtype=torch.float64)
            poison = float("nan") if step in inject_nan else 1.0
            for i, m in enumerate(micro):
                sync = contextlib.nullcontext()
                if i < accum - 1 and hasattr(wrapped, "no_sync"):
                    sync = wrapped.no_sync()
                m = {k: v.to(device, non_blocking=True) for k, v in m.items()}
                with sync, autocast:
                    out = wrapped(**m, num_items_in_batch=max(n_global, 1), loss_impl=recipe.model.loss_impl)
                    (out.loss * (ws * poison)).backward()  # DDP/FSDP average gradients over ranks; undo that
                loss_sum += out.loss_sum.double().cpu() * poison
            loss = float(D.all_reduce_sum(loss_sum).item()) / max(n_global, 1)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(wrapped.parameters(), recipe.optim.clip_grad))
            lr = lr_at(step, t.steps, recipe.optim.lr, recipe.optim.min_lr, recipe.optim.warmup_ratio)
            if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                optimizer.zero_grad(set_to_none=True)
                if not t.skip_nonfinite or state["nonfinite_skips"] >= t.max_nonfinite_skips:
                    last = C.list_checkpoints(run_dir)
                    raise NonFiniteError(
                        f"non-finite loss ({loss}) or gradient norm ({grad_norm}) at step {step}; the last good "
                        f"checkpoint is {last[-1] if last else 'none'}. Lower optim.lr, raise warmup, or set "
                        f"train.skip_nonfinite=true to skip such steps (counted).")
                state["nonfinite_skips"] += 1
                log.warning("skipped step %d: non-finite loss/gradient (%d skipped so far)", step,
                            state["nonfinite_skips"])
            else:
                for g in optimizer.param_groups:
                    g["lr"] = lr
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            step += 1
            samples = sum(_count_samples(m) for m in micro) * ws
            tokens = sum(_count_tokens(m, model.config.patch_size) for m in micro) * ws
            state["samples"] += samples
            state["tokens"] += tokens
            if step % recipe.log.every == 0 or step == t.steps:
                dt = time.time() - tic
                stats = _merged_stats(_gather_data_state(stream_states, consumed)["streams"] if ws > 1
                                      else stream_states)
                logger.log(step, {"loss": loss, "lr": lr, "grad_norm": grad_norm, "supervised_tokens": n_global,
                                  "samples/s": samples * recipe.log.every / dt, "tok/s": tokens * recipe.log.every / dt,
                                  "skipped": stats.n_skipped, "skip_reasons": dict(stats.skipped),
                                  "nonfinite_skips": state["nonfinite_skips"],
                                  **({"fill": tokens / (sum(m["sample_ids"].numel() for m in micro) * ws)}
                                     if "sample_ids" in micro[0] else {})})
                tic = time.time()
            save_now = step % recipe.checkpoint.every == 0 or step == t.steps or preempt.flag
            if save_now:
                state["step"] = step
                state["data"] = _gather_data_state(stream_states, consumed)
                state["skips"] = _merged_stats(state["data"]["streams"]).to_dict()
                C.save(run_dir, step, wrapped, optimizer, state, recipe, recipe.checkpoint.keep,
                       extra_files=lambda d: tokenizer.save_pretrained(str(d)))
                last_saved = step
            if preempt.flag:
                D.print0(f"pre-empted: saved step {step}, exiting")
                break
    finally:
        logger.close()
    if D.is_main() and last_saved == t.steps:
        stats = _merged_stats(stream_states)
        D.print0(f"done: {t.steps} steps, final loss {loss:.4f}; skipped records: {stats.n_skipped} "
                 f"{dict(stats.skipped)}; final weights: {run_dir / 'checkpoints' / f'{C.STEP_PREFIX}{step:08d}'}")
    return run_dir


def _finished(recipe: Recipe) -> Path | None:
    """The checkpoint of a run that already reached ``train.steps`` (what a second run of the same command finds)."""
    ckpt = C.find_resume(Path(recipe.train.output_dir), recipe.checkpoint.resume)
    if ckpt is None:
        return None
    step = json.loads((ckpt / "trainer_state.json").read_text()).get("step", 0)
    return ckpt if step >= recipe.train.steps else None


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
    import yaml

    from genlip.train.recipe import recipe_diff

    if saved.exists():
        changed = [d for d in recipe_diff(yaml.safe_load(saved.read_text()), recipe)
                   if not d.startswith("checkpoint.resume")]
        if changed:
            log.warning("resuming with a recipe that differs from the checkpoint's: %s", "; ".join(changed))
            D.print0("WARNING: the recipe differs from the checkpoint's: " + "; ".join(changed))
