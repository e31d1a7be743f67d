"""Training the MLLM with the Hugging Face Trainer (DeepSpeed ZeRO-2/3 through its config), one function for both
stages: alignment (projector only) and instruction tuning (projector + LLM, the encoder frozen or not, LoRA).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import warnings
from collections import Counter
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from accelerate import PartialState
from transformers import AutoConfig, AutoModelForImageTextToText, Trainer, TrainerCallback, TrainingArguments
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
from transformers.trainer_utils import get_last_checkpoint

from genlip.data.dataset import StopSignals
from genlip.data.synth_sft import write_sft
from genlip.data.tokenizer import has_tokenizer, train_tokenizer
from genlip.loss import IGNORE_INDEX, shift_labels, supervised_ce
from genlip.run import dist as D
from genlip.run.batching import plan_batches
from genlip.run.checkpoint import list_checkpoints, set_aside
from genlip.run.config import RecipeError, changed_since, recipe_diff, refuse_other_recipe, save_recipe
from genlip.run.curves import plot_curves
from genlip.run.dirs import generated_dir
from genlip.run.extras import installed
from genlip.run.runtime import configure_cpu_allocator
from mllm.build import build_mllm, load_mllm, save_mllm, save_processing
from mllm.data import Collator, LlavaDataset
from mllm.image_modes import default_pinpoints
from mllm.processing import ConversationEncoder, ImageSpec, make_image_processor
from mllm.recipe import MllmModelRecipe, MllmRecipe
from mllm.tiny import make_tiny_llm
from mllm.towers import check_tower_use, load_vision_config, local_only, looks_like_path, own_normalisation

log = logging.getLogger(__name__)
# what a run writes into its train.output_dir (what train.resume=none sets aside; anything else there is left alone)
RUN_FILES = ("checkpoint-*", "final", "lora_adapter", "runs")
# recipe keys that change how a run executes, not what it trains (tested to give the same weights, or bookkeeping):
# a finished run given again with other values of these is still the same run
HOW_IT_RUNS = ("train.resume", "train.output_dir", "train.micro_batch", "train.logging_steps", "train.report_to",
               "train.save_steps", "train.save_total_limit", "train.cpu_allocator", "train.deepspeed", "train.compile",
               "train.gradient_checkpointing", "train.loss_impl", "data.num_workers", "debug")
GROUPS = {"projector": ("model.multi_modal_projector.", "model.image_newline"),
          "vision_tower": ("model.vision_tower.",),
          "language_model": ("model.language_model.", "lm_head.")}


def group_of(name: str) -> str:
    name = name.replace("base_model.model.", "")  # under PEFT
    for g, prefixes in GROUPS.items():
        if any(name.startswith(p) for p in prefixes):
            return g
    raise ValueError(f"parameter {name} belongs to no module group")


def apply_trainable(model, lrs: dict[str, float], lora: bool = False) -> dict[str, tuple[int, int]]:
    """Freeze every group whose learning rate is 0 (under LoRA the LLM's base weights stay frozen and only its
    adapters train); print trainable / total parameters per group."""
    counts: dict[str, list[int]] = {g: [0, 0] for g in GROUPS}
    for n, p in model.named_parameters():
        g = group_of(n)
        if lora and g == "language_model":
            p.requires_grad = "lora_" in n and lrs[g] > 0
        elif lora and "original_module" in n:
            p.requires_grad = False  # PEFT's frozen copy of a module it trains in full (modules_to_save)
            continue  # not counted: the module is counted once, as the copy that trains
        else:
            p.requires_grad = lrs[g] > 0
        counts[g][1] += p.numel()
        counts[g][0] += p.numel() if p.requires_grad else 0
    for g, (t, n) in counts.items():
        D.print0(f"  {g:15s} lr {lrs[g]:<8g} trainable {t / 1e6:8.3f}M of {n / 1e6:8.3f}M")
    return {g: tuple(v) for g, v in counts.items()}


def _resolve_vision(path: str) -> str:
    path = os.path.expanduser(path)
    ckpts = list_checkpoints(Path(path))
    return str(ckpts[-1]) if ckpts else path


def check_model_paths(recipe: MllmRecipe) -> None:
    """Before anything is generated or built, a :class:`RecipeError` (one line, exit code 2) unless: ``model.init_from``
    is a saved MLLM and no ``model.vision`` / ``model.llm`` is given beside it (they would be ignored); or
    ``model.vision`` gives a vision config that fits ``model.mode``, ``model.image_size`` and ``model.feature_layer``,
    and a local ``model.llm`` is a causal LM directory with a tokenizer."""
    m = recipe.model
    if m.init_from:
        _check_init_from(m)
        return
    if m.vision:
        try:
            tower = _resolve_vision(m.vision)
            info, _ = check_tower_use(load_vision_config(tower), m.mode, m.image_size, m.feature_layer)
            if info.kind != "genlip":  # GenLIP's normalisation is in its config (build_mllm reads no processor file)
                own_normalisation(tower)
        except FileNotFoundError as e:
            raise RecipeError(f"model.vision: {e}") from None
        except ValueError as e:
            raise RecipeError(f"model.vision={m.vision}: {e}") from None
        if info.kind == "siglip2" and m.max_image_tokens >= recipe.data.max_length:  # every image scales up to it
            raise RecipeError(f"model.max_image_tokens={m.max_image_tokens}: a SigLIP2 tower takes every image at "
                              f"that many tokens, which leaves no room for text in data.max_length="
                              f"{recipe.data.max_length}; lower model.max_image_tokens or raise data.max_length")
    if m.llm and m.llm != "tiny":
        _check_llm(m.llm)


# train.report_to -> the modules transformers' callback can use (TensorBoard: torch's writer or tensorboardX)
REPORTERS = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",),
             "trackio": ("trackio",)}


def check_packages(recipe: MllmRecipe) -> None:
    """DeepSpeed for ``train.deepspeed`` and each ``train.report_to`` service's package are installed (else the run
    stops with a traceback once the model is built): a one-line :class:`RecipeError` before anything is."""
    if recipe.train.deepspeed and not installed("deepspeed"):
        raise RecipeError("train.deepspeed: DeepSpeed is not installed; install it built against your torch: "
                          "DS_BUILD_OPS=0 pip install --no-build-isolation deepspeed (`make setup` does)")
    for name in recipe.train.report_to:
        if not any(installed(m) for m in REPORTERS[name]):
            raise RecipeError(f"train.report_to: {name} is not installed (pip install {REPORTERS[name][0]})")


def _check_init_from(m) -> None:
    path = Path(os.path.expanduser(m.init_from))
    if not (path / "genlip_mllm_image.json").is_file():
        why = "no such directory" if not path.exists() else "not a saved MLLM (no genlip_mllm_image.json)"
        hint = f"; did you mean {path / 'final'}?" if (path / "final" / "genlip_mllm_image.json").is_file() else \
            " (a previous stage's output_dir/final: run that stage first, e.g. `genlip-mllm pretrain`)"
        raise RecipeError(f"model.init_from: {m.init_from}: {why}{hint}")
    given = [f"model.{k}={getattr(m, k)}" for k in ("vision", "llm") if getattr(m, k)]
    if given:
        raise RecipeError(f"{' and '.join(given)} would be ignored: the model, its tower and LLM included, comes "
                          f"from model.init_from={m.init_from}; give one or the other")
    _refuse_other_settings(m, init_image_settings(path))


def _refuse_other_settings(m, have: dict) -> None:
    """The image settings come with the model too: a value the recipe asks for (not the default) that differs from
    the model's is an error, not a setting the run would record but not use."""
    asked = {k: getattr(m, k) for k, v in have.items() if getattr(m, k) not in (v, _MODEL_DEFAULTS[k])}
    if asked:
        raise RecipeError(f"{', '.join(f'model.{k}={v}' for k, v in asked.items())} would be ignored: the image "
                          f"settings come with model.init_from={m.init_from} "
                          f"({', '.join(f'{k}={have[k]}' for k in asked)}); leave them out or give those values")


_MODEL_DEFAULTS = {f.name: f.default for f in dataclasses.fields(MllmModelRecipe)}


INIT_SETTINGS = ("mode", "image_size", "feature_layer", "min_image_tokens", "max_image_tokens",
                 "max_grid")  # model.* keys


def init_image_settings(init_from: str | Path) -> dict:
    """The image settings of a saved MLLM, as the recipe keys ``model.*`` that set them (``max_grid`` for an anyres
    model: the most tiles along a side of its grids)."""
    spec = ImageSpec.load(init_from)
    config = json.loads((Path(init_from) / "config.json").read_text())
    have = {"mode": spec.mode, "image_size": spec.image_size, "feature_layer": config.get("vision_feature_layer", -1),
            "min_image_tokens": spec.min_tokens, "max_image_tokens": spec.max_tokens}
    if spec.mode == "anyres" and spec.pinpoints and spec.image_size:
        have["max_grid"] = max(max(hw) for hw in spec.pinpoints) // spec.image_size
    return have


def with_init_settings(recipe: MllmRecipe) -> MllmRecipe:
    """``recipe`` with the image settings of its ``model.init_from`` (when it is there): what the run uses, so the
    recipe it saves (and ``--print-recipe``) describes the model. A setting asked for that differs from the model's
    is a :class:`RecipeError`."""
    m = recipe.model
    if m.init_from and (Path(os.path.expanduser(m.init_from)) / "genlip_mllm_image.json").is_file():
        have = init_image_settings(os.path.expanduser(m.init_from))
        _refuse_other_settings(m, have)
        recipe = copy.deepcopy(recipe)
        for k, v in have.items():
            setattr(recipe.model, k, v)
    return recipe


def _check_llm(name: str) -> None:
    path = os.path.expanduser(name)
    if looks_like_path(path) and not os.path.isdir(path):
        raise RecipeError(f"model.llm: {name}: no such directory")
    if not os.path.isdir(path):  # a Hub id: from the local cache (or the Hub, with HF_HUB_OFFLINE=0)
        try:
            AutoConfig.from_pretrained(path, local_files_only=local_only())
        except OSError:
            where = "in the local Hugging Face cache (HF_HUB_OFFLINE=0 lets a Hub id be downloaded)" \
                if local_only() else "on the Hugging Face Hub"
            raise RecipeError(f"model.llm: {name}: no such directory, nor a model {where}") from None
        return
    if not os.path.isfile(os.path.join(path, "config.json")):
        if list_checkpoints(Path(path)):
            raise RecipeError(f"model.llm: {name}: a GenLIP pretraining run (an image encoder: model.vision takes "
                              "it), not a causal language model")
        raise RecipeError(f"model.llm: {name}: not a model directory (no config.json)")
    model_type = json.loads(Path(path, "config.json").read_text()).get("model_type")
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise RecipeError(f"model.llm: {name}: a {model_type!r} checkpoint, not a causal language model "
                          "(e.g. a Qwen2.5-*-Instruct directory)")
    if not has_tokenizer(path):
        raise RecipeError(f"model.llm: {name}: no tokenizer files (tokenizer.json / tokenizer_config.json)")


def check_data(recipe: MllmRecipe) -> None:
    """Before anything is generated or built: ``data.path`` (your own data, which the generated ``data.synth`` sets
    never replace) must exist, and ``model.llm=tiny`` (the small LLM made with the generated sets' tokenizer) needs
    ``data.synth``; otherwise a :class:`RecipeError`."""
    data = recipe.data
    if data.path and not os.path.isfile(os.path.expanduser(data.path)):
        raise RecipeError(f"data.path: {data.path}: no such file (a LLaVA JSON or JSONL file)")
    if data.image_root and not os.path.isdir(os.path.expanduser(data.image_root)):
        raise RecipeError(f"data.image_root: {data.image_root}: no such directory")
    if not data.path and data.synth is None:
        raise RecipeError("no data: set data.path (a LLaVA JSON or JSONL file) or data.synth")
    if recipe.model.llm == "tiny" and data.synth is None and not recipe.model.init_from:
        raise RecipeError("model.llm=tiny is the small LLM made with the generated data's tokenizer, which needs "
                          "data.synth; point model.llm at an LLM directory instead")


def ensure_sft_data(recipe: MllmRecipe) -> tuple[str, str]:
    """The recipe's data: ``data.path`` when given (the generated sets are then made only for the tiny LLM, when
    ``model.llm=tiny``), else the generated SFT sets, made on first use."""
    data = recipe.data
    if data.synth is None or (data.path and recipe.model.llm != "tiny"):
        return data.path, data.image_root
    spec = dict(data.synth)
    samples, seed = int(spec.get("samples", 512)), int(spec.get("seed", 0))
    which = spec.get("set", "instruct")
    if which not in ("captions", "instruct"):
        raise ValueError(f"data.synth.set must be captions or instruct, got {which!r}")

    def make(tmp: Path) -> None:
        write_sft(tmp, samples, seed)
        texts = [m["value"] for f in ("captions.json", "instruct.json") for r in json.loads((tmp / f).read_text())
                 for m in r["conversations"]] + ["You are a helpful assistant.", "user", "assistant", "system"]
        train_tokenizer(texts, tmp / "tokenizer", vocab_size=1024)
        make_tiny_llm(tmp / "tokenizer", tmp / "tiny-llm")

    out = generated_dir(str(spec.get("dir", "$GENLIP_HOME/sft-n{samples}-s{seed}")), samples, seed, "sft.json", make,
                        "SFT data")
    if recipe.model.llm == "tiny":
        recipe.model.llm = str(out / "tiny-llm")
    if data.path:
        return data.path, data.image_root
    return str(out / f"{which}.json"), str(out / "images")


def build_from_recipe(recipe: MllmRecipe):
    m = recipe.model
    if m.init_from:
        model, tokenizer, spec, ip = load_mllm(m.init_from)
        D.print0(f"initialised from {m.init_from}")
        return model, tokenizer, spec, ip
    if not m.vision or not m.llm:
        raise ValueError("model.vision and model.llm are required (or model.init_from)")
    pinpoints = None
    if m.mode == "anyres" and m.image_size:
        pinpoints = default_pinpoints(m.image_size, m.max_grid)
    model, tokenizer, spec = build_mllm(_resolve_vision(m.vision), m.llm, m.mode, m.image_size, m.feature_layer,
                                        pinpoints, m.min_image_tokens, m.max_image_tokens)
    return model, tokenizer, spec, make_image_processor(spec)


def _cpu_deepspeed_state() -> None:
    """The HF Trainer + DeepSpeed on CPU processes: accelerate must be told to use DeepSpeed with gloo."""
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    PartialState(backend="gloo")
    os.environ.pop("ACCELERATE_USE_DEEPSPEED", None)


class SaveProcessing(TrainerCallback):
    """Every Trainer checkpoint gets the processor, tokenizer, image spec and resolved recipe (so each one loads by
    itself); ``debug.stop_after_step`` stops as if killed after that checkpoint."""

    def __init__(self, out: Path, model, tokenizer, spec, recipe: MllmRecipe) -> None:
        self.out, self.model, self.tokenizer, self.spec, self.recipe = out, model, tokenizer, spec, recipe

    def on_save(self, args, state, control, **kw):
        if state.is_world_process_zero:
            ckpt = self.out / f"checkpoint-{state.global_step}"
            save_processing(ckpt, self.model.config, self.tokenizer, self.spec)
            save_recipe(self.recipe, ckpt / "recipe.yaml")

    def on_step_end(self, args, state, control, **kw):
        stop = self.recipe.debug.stop_after_step
        if stop and state.global_step >= stop:
            control.should_training_stop = True
            control.should_save = True


class Preemption(StopSignals, TrainerCallback):
    """:class:`~genlip.data.dataset.StopSignals` as a Trainer callback: after the step a signal came in, every rank
    saves a checkpoint and stops; the run resumes from it with ``train.resume=auto``. The loader workers ignore these
    signals (:mod:`mllm.data`)."""

    def on_step_end(self, args, state, control, **kw):
        flag = self.flag
        if dist.is_initialized() and dist.get_world_size() > 1:  # every rank stops (and saves) after the same step
            agreed = torch.tensor([float(flag)], device=args.device)
            dist.all_reduce(agreed)
            flag = agreed.item() > 0
        if flag:
            self.flag = True
            if self.interrupted:
                D.print0(f"\ninterrupted: saving step {state.global_step} (Ctrl-C again stops at once, unsaved)")
            control.should_save = True
            control.should_training_stop = True


class MllmTrainer(Trainer):
    """The HF Trainer with one AdamW group per module group (its own learning rate; 0 = frozen), a resume that
    maps LLaVA's legacy weight names back, and the samples its collator dropped counted by reason and logged."""

    def __init__(self, *args, lrs: dict[str, float], recipe: MllmRecipe, skipped: Counter, **kw) -> None:
        super().__init__(*args, **kw)
        self.lrs, self.recipe, self.skipped = lrs, recipe, skipped
        self.cut_samples = 0

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            groups: dict[str, list] = {}
            for n, p in self.model.named_parameters():
                if p.requires_grad:
                    groups.setdefault(group_of(n), []).append(p)
            wd = self.recipe.train.weight_decay
            # the fused kernel on CPU and CUDA alike (one pass over each tensor; what genlip-pretrain and
            # transformers' own default on current PyTorch use); DeepSpeed steps it on its fp32 partitions
            self.optimizer = torch.optim.AdamW(
                [{"params": ps, "lr": self.lrs[g], "weight_decay": wd} for g, ps in groups.items()],
                betas=(0.9, 0.999), eps=1e-8, fused=True)
        return self.optimizer

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        """transformers writes LLaVA weights under their legacy names and the Trainer's plain loader does not map
        them back (it loads non-strictly, silently keeping the old weights); load through from_pretrained."""
        if self.is_deepspeed_enabled or self.recipe.lora.enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        loaded = AutoModelForImageTextToText.from_pretrained(resume_from_checkpoint)
        (model or self.model).load_state_dict(loaded.state_dict(), strict=True)
        D.print0(f"resumed weights from {resume_from_checkpoint}")

    def log(self, logs: dict[str, float], *args, **kw) -> None:
        """Every log line (and ``log_history``) carries ``skipped_samples`` and ``skipped_<reason>`` so far."""
        logs["skipped_samples"] = sum(self.skipped.values())
        logs.update({f"skipped_{r}": n for r, n in sorted(self.skipped.items())})
        logs["cut_samples"] = self.cut_samples
        super().log(logs, *args, **kw)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.skipped.update(inputs.pop("skip_reasons", None) or ())  # the collator's dropped samples, by reason
        self.cut_samples += int(inputs.pop("cut_samples", 0))  # trained on, cut to data.max_length
        if self.compute_loss_func is not None and "labels" in inputs:  # chunked: the model returns features only
            inputs = {**inputs, "output_hidden_states": True, "logits_to_keep": 1}
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def chunked_lm_loss(model, bf16: bool):
    """``train.loss_impl=chunked``, as the Trainer's ``compute_loss_func``: the final features of the positions that
    predict a supervised token go through ``model``'s LM head chunk by chunk (``genlip.loss.supervised_ce``), summed
    and divided like the model's own loss (by the supervised-token count the Trainer gathers over devices and
    accumulation steps, which it always passes here). The Trainer calls this outside the model's autocast, so with
    ``bf16`` the head's GEMMs enter bf16 autocast themselves (else they would run in fp32 on the fp32 master
    weights)."""
    def loss(outputs, labels, num_items_in_batch=None):
        if num_items_in_batch is None:  # the Trainer treats this loss as normalised over the accumulated batch
            raise RuntimeError("chunked_lm_loss needs num_items_in_batch (the Trainer's supervised-token count)")
        targets = shift_labels(labels)
        sel = targets != IGNORE_INDEX
        h = outputs.hidden_states[-1][sel]
        with torch.autocast(h.device.type, dtype=torch.bfloat16, enabled=bf16):
            total = supervised_ce(h, model.get_output_embeddings().weight, targets[sel], "chunked")
        return total / num_items_in_batch
    return loss


def plan_steps(recipe: MllmRecipe, ws: int):
    """The batch plan for ``ws`` processes, written into ``recipe.train`` (as the finished run saved it): epochs fix
    the budget; with max_steps the steps are rescaled like genlip-pretrain's."""
    t = recipe.train
    plan = plan_batches(t.global_batch, t.micro_batch, ws, max(t.max_steps, 1), t.batch_rounding)
    t.micro_batch, t.global_batch = plan.micro_batch, plan.global_batch
    if t.max_steps > 0:
        t.max_steps = plan.steps
    return plan


def _as_finished(recipe: MllmRecipe) -> MllmRecipe:
    """``recipe`` as a finished run saved it: ``model.llm=tiny`` as the generated tiny LLM's path; with
    ``model.init_from``, an image setting left at its default as the run recorded it (the model's own value, or the
    default itself in runs saved before image settings were recorded; ``init_from`` may be gone since)."""
    saved = Path(recipe.train.output_dir) / "final" / "recipe.yaml"
    before = yaml.safe_load(saved.read_text()).get("model") or {}
    recipe = copy.deepcopy(recipe)
    if recipe.model.llm == "tiny" and Path(before.get("llm") or "").name == "tiny-llm":
        recipe.model.llm = before["llm"]
    if recipe.model.init_from:
        for k in INIT_SETTINGS:
            if getattr(recipe.model, k) == _MODEL_DEFAULTS[k] and k in before:
                setattr(recipe.model, k, before[k])
    return recipe


def finished_changes(recipe: MllmRecipe, ignore: tuple[str, ...] = ()) -> list[str] | None:
    """None unless ``train.output_dir`` holds a finished run; else the keys in which ``recipe`` (planned by
    :func:`plan_steps`) differs from the recipe that run saved, leaving out how a run executes (:data:`HOW_IT_RUNS`)
    and the keys under ``ignore``."""
    saved = Path(recipe.train.output_dir) / "final" / "recipe.yaml"
    if not saved.exists():
        return None
    return changed_since(saved, _as_finished(recipe), HOW_IT_RUNS + tuple(ignore))


def train(recipe: MllmRecipe) -> Path:
    """Build (or continue), train and save ``output_dir/final``; a finished run given again only says so."""
    t = recipe.train
    out, cuda, ws = Path(t.output_dir), torch.cuda.is_available(), D.world()[2]
    plan = plan_steps(recipe, ws)
    saved = out / "final" / "recipe.yaml"  # the last file a finished run writes
    if t.resume != "none" and saved.exists():
        refuse_other_recipe(saved, _as_finished(recipe), HOW_IT_RUNS, str(out / "final"), "train.resume=none")
        D.print0(f"already finished: {out / 'final'} holds the trained model (train.resume=none trains it again)")
        return out / "final"
    check_model_paths(recipe)
    check_data(recipe)
    D.print0(f"batches: {plan.describe()}")  # after the checks: a refused recipe is its one line
    recipe = with_init_settings(recipe)
    t = recipe.train
    if recipe.data.path and recipe.data.synth is not None:
        D.print0(f"data: {recipe.data.path} (the recipe's generated data.synth sets are not used"
                 f"{'; only its tiny LLM' if recipe.model.llm == 'tiny' else ''})")
    _process_state(t, ws, cuda)
    if t.deepspeed:  # DeepSpeed calls collectives that torch renamed: a warning per rank and call, not for the user
        warnings.filterwarnings("ignore", r"`torch\.distributed\.\w+` is deprecated", FutureWarning)
    torch.manual_seed(t.seed)
    data_path, image_root = ensure_sft_data(recipe)
    model, tokenizer, spec, ip = build_from_recipe(recipe)
    lrs = {"projector": recipe.lr.projector, "language_model": recipe.lr.language_model,
           "vision_tower": recipe.lr.vision_tower}
    if recipe.lora.enabled:
        model = _with_lora(model, recipe)
    D.print0(f"MLLM {recipe.stage}: {spec.kind} tower ({spec.mode} mode) -> projector -> LLM | "
             f"{'LoRA on the LLM' if recipe.lora.enabled else 'full weights'}")
    apply_trainable(model, lrs, lora=recipe.lora.enabled)
    if t.compile:
        D.print0(f"compiled {compile_llm_layers(model)} LLM decoder layers (train.compile)")
    encoder = ConversationEncoder(tokenizer, spec, tokenizer.convert_tokens_to_ids("<image>"),
                                  system=recipe.data.system_prompt, max_length=recipe.data.max_length,
                                  template=recipe.data.template)
    dataset = LlavaDataset(data_path, image_root, encoder, recipe.data.max_skip_fraction)
    collator = Collator(spec, ip, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    skipped: Counter = Counter()
    preempt = Preemption()
    trainer = MllmTrainer(model=model, args=training_arguments(recipe, ws, cuda, max(lrs.values())),
                          train_dataset=dataset, data_collator=collator, lrs=lrs, recipe=recipe, skipped=skipped,
                          callbacks=[SaveProcessing(out, model, tokenizer, spec, recipe), preempt],
                          compute_loss_func=(chunked_lm_loss(model, cuda and t.precision != "fp32")
                                             if t.loss_impl == "chunked" else None))
    if t.resume == "none":  # starting over: the earlier run's checkpoints and final/ must not pass for this one's
        moved = set_aside(out, RUN_FILES) if D.is_main() else None
        if moved is not None:
            D.print0(f"starting over (train.resume=none): the earlier run's files moved to {moved}")
        D.barrier()
    trainer.train(resume_from_checkpoint=_resume_point(recipe, out))
    if preempt.interrupted:
        D.print0(f"interrupted: saved {out / f'checkpoint-{trainer.state.global_step}'}; run the same command to "
                 "continue (train.resume=auto)")
        raise SystemExit(130)
    if preempt.flag:
        D.print0(f"pre-empted: saved {out / f'checkpoint-{trainer.state.global_step}'}, exiting "
                 "(train.resume=auto continues)")
        return out
    if recipe.debug.stop_after_step:
        D.print0(f"stopped after step {recipe.debug.stop_after_step} (debug.stop_after_step)")
        return out
    if skipped:
        D.print0(f"dropped from their batches during training: {dict(skipped)}")
    if trainer.cut_samples:
        D.print0(f"samples cut to data.max_length={recipe.data.max_length} (trained on what fits): "
                 f"{trainer.cut_samples}")
    return _save_final(trainer, model, tokenizer, spec, recipe, {"records": dict(dataset.skipped),
                                                                  "training": dict(skipped),
                                                                  "cut_samples": trainer.cut_samples})


def compile_llm_layers(model) -> int:
    """Compile each decoder layer of the LLM in place (``nn.Module.compile``: parameter names, checkpoints and
    gradient checkpointing unchanged), with dynamic shapes since sequence lengths vary per batch. Returns how many."""
    n = 0
    for name, mod in model.named_modules():
        if name.endswith("language_model.layers") and isinstance(mod, torch.nn.ModuleList):
            for layer in mod:
                layer.compile(dynamic=True)
                n += 1
    if not n:
        raise RuntimeError("train.compile: the model has no language_model.layers to compile")
    return n


def _process_state(t, ws: int, cuda: bool) -> None:
    """The CPU allocator, and on CPU processes the accelerate state the Trainer must find (gloo, DeepSpeed)."""
    if cuda:
        return
    configure_cpu_allocator(t.cpu_allocator)
    if t.deepspeed:
        _cpu_deepspeed_state()
    elif ws > 1:
        PartialState(backend="gloo")


def _with_lora(model, recipe: MllmRecipe):
    from peft import LoraConfig, get_peft_model  # optional: only LoRA runs pay for importing PEFT

    targets = r"model\.language_model\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
    with warnings.catch_warnings():  # PEFT asks for the old name of a transformers property: not the user's to act on
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
        return get_peft_model(model, LoraConfig(r=recipe.lora.r, lora_alpha=recipe.lora.alpha,
                                                lora_dropout=recipe.lora.dropout, target_modules=targets,
                                                modules_to_save=["multi_modal_projector"]))


def training_arguments(recipe: MllmRecipe, ws: int, cuda: bool, max_lr: float) -> TrainingArguments:
    t = recipe.train
    # transformers renamed gradient_checkpointing (a deprecated alias, with a FutureWarning, on newer versions)
    ckpt = ("activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
            else "gradient_checkpointing")
    return TrainingArguments(**{ckpt: t.gradient_checkpointing},
        output_dir=t.output_dir, per_device_train_batch_size=t.micro_batch,
        gradient_accumulation_steps=t.global_batch // (t.micro_batch * ws), num_train_epochs=t.epochs,
        max_steps=t.max_steps, learning_rate=max_lr, lr_scheduler_type=t.scheduler,
        warmup_steps=t.warmup_ratio, weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm,
        logging_steps=t.logging_steps, save_steps=t.save_steps, save_total_limit=t.save_total_limit, seed=t.seed,
        data_seed=t.seed, bf16=cuda and t.precision != "fp32", deepspeed=t.deepspeed,
        report_to=list(t.report_to), remove_unused_columns=False,
        dataloader_num_workers=recipe.data.num_workers, use_cpu=not cuda, disable_tqdm=not D.is_main(),
        accelerator_config={"use_configured_state": True} if (not cuda and (t.deepspeed or ws > 1)) else None)


def _resume_point(recipe: MllmRecipe, out: Path) -> str | None:
    """``train.resume``: auto (the newest Trainer checkpoint, if any), none, or a checkpoint directory; resuming
    under a changed recipe is allowed but never silent."""
    t = recipe.train
    resume = t.resume if t.resume not in ("auto", "none") else None
    if t.resume == "auto" and out.exists():
        resume = get_last_checkpoint(str(out))
    if resume:
        D.print0(f"resuming from {resume}")
        saved = Path(resume) / "recipe.yaml"
        if saved.exists():
            changed = [d for d in recipe_diff(yaml.safe_load(saved.read_text()), recipe) if "resume" not in d]
            if changed:
                D.print0("WARNING: the recipe differs from the checkpoint's: " + "; ".join(changed))
    return resume


def _save_adapter_and_merge(trainer: MllmTrainer, model, adapter_dir: Path):
    """Rank 0 saves the LoRA adapter, then the model is merged (base + adapter). Under ZeRO-3 every parameter is a
    shard: all ranks gather them first (collective), and the merged weights are copied out before the shards are
    restored, so both the adapter and the merged model hold full tensors. Returns ``(merged model, state dict or
    None)``."""
    zero3 = any(hasattr(p, "ds_id") for p in model.parameters())
    if not zero3:
        if trainer.is_world_process_zero():
            model.save_pretrained(adapter_dir)
        return model.merge_and_unload(), None
    import deepspeed  # optional: only ZeRO-3 runs get here

    with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
        if trainer.is_world_process_zero():
            model.save_pretrained(adapter_dir)
        merged = model.merge_and_unload()
        state = None
        if trainer.is_world_process_zero():  # copies that keep tied weights one tensor (saved once, not twice)
            copies: dict[int, torch.Tensor] = {}
            state = {}
            for k, v in merged.state_dict().items():
                if v.data_ptr() not in copies:
                    copies[v.data_ptr()] = v.detach().cpu().clone()
                state[k] = copies[v.data_ptr()]
    return merged, state


def _save_final(trainer: MllmTrainer, model, tokenizer, spec, recipe: MllmRecipe, skipped: dict) -> Path:
    """Collective: ``final/`` with the full weights (gathered under ZeRO-3; LoRA merged), the processor, the log
    history, the skip counts and, last, the resolved recipe (its presence marks the run finished)."""
    final = Path(recipe.train.output_dir) / "final"
    to_save, state = model, None
    if recipe.lora.enabled:
        to_save, state = _save_adapter_and_merge(trainer, model, Path(recipe.train.output_dir) / "lora_adapter")
    elif trainer.is_deepspeed_enabled:
        # under ZeRO-3 the weights are sharded: gather them (collective), then rank 0 writes
        state = trainer.accelerator.get_state_dict(trainer.deepspeed)
    if trainer.is_world_process_zero():
        save_mllm(final, to_save, tokenizer, spec, state_dict=state)
        (final / "log_history.json").write_text(json.dumps(trainer.state.log_history))
        plot_curves(trainer.state.log_history, final / "curves.png", f"{recipe.name} ({recipe.stage})",
                    lr_key="learning_rate")
        (final / "skipped.json").write_text(json.dumps(skipped))
        save_recipe(recipe, final / "recipe.yaml")
        D.print0(f"saved {final}")
    D.barrier()
    return final
