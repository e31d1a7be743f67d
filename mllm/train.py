"""Training the MLLM with the Hugging Face Trainer (DeepSpeed ZeRO-2/3 through its config), one function for both
stages: alignment (projector only) and instruction tuning (projector + LLM, the encoder frozen or not, LoRA).
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path

import torch

from genlip.train import dist as D
from mllm.recipe import MllmRecipe

log = logging.getLogger(__name__)
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
        else:
            p.requires_grad = lrs[g] > 0
        counts[g][1] += p.numel()
        counts[g][0] += p.numel() if p.requires_grad else 0
    for g, (t, n) in counts.items():
        D.print0(f"  {g:15s} lr {lrs[g]:<8g} trainable {t / 1e6:8.3f}M of {n / 1e6:8.3f}M")
    return {g: tuple(v) for g, v in counts.items()}


def _resolve_vision(path: str) -> str:
    from genlip.train.checkpoint import list_checkpoints

    ckpts = list_checkpoints(Path(path))
    return str(ckpts[-1]) if ckpts else path


def ensure_sft_data(recipe: MllmRecipe) -> tuple[str, str]:
    """The recipe's data; the generated SFT sets (and the tiny LLM, when ``model.llm=tiny``) are made on first use."""
    from genlip.train.data_setup import generated_dir

    data = recipe.data
    if data.synth is None:
        return data.path, data.image_root
    spec = dict(data.synth)
    samples, seed = int(spec.get("samples", 512)), int(spec.get("seed", 0))
    which = spec.get("set", "instruct")
    if which not in ("captions", "instruct"):
        raise ValueError(f"data.synth.set must be captions or instruct, got {which!r}")

    def make(tmp: Path) -> None:
        from genlip.data.tokenizer import train_tokenizer
        from mllm.synth_sft import write_sft
        from mllm.tiny import make_tiny_llm

        write_sft(tmp, samples, seed)
        texts = [m["value"] for f in ("captions.json", "instruct.json") for r in json.loads((tmp / f).read_text())
                 for m in r["conversations"]] + ["You are a helpful assistant.", "user", "assistant", "system"]
        train_tokenizer(texts, tmp / "tokenizer", vocab_size=1024)
        make_tiny_llm(tmp / "tokenizer", tmp / "tiny-llm")

    out = generated_dir(str(spec.get("dir", "$GENLIP_HOME/sft-n{samples}-s{seed}")), samples, seed, "sft.json", make,
                        "SFT data")
    if recipe.model.llm == "tiny":
        recipe.model.llm = str(out / "tiny-llm")
    return str(out / f"{which}.json"), str(out / "images")


def build_from_recipe(recipe: MllmRecipe):
    from mllm.build import build_mllm, load_mllm
    from mllm.processing import make_image_processor

    m = recipe.model
    if m.init_from:
        model, tokenizer, spec, ip = load_mllm(m.init_from)
        D.print0(f"initialised from {m.init_from}")
        return model, tokenizer, spec, ip
    if not m.vision or not m.llm:
        raise ValueError("model.vision and model.llm are required (or model.init_from)")
    from mllm.image_modes import default_pinpoints

    pinpoints = None
    if m.mode == "anyres" and m.image_size:
        pinpoints = default_pinpoints(m.image_size, m.max_grid)
    model, tokenizer, spec = build_mllm(_resolve_vision(m.vision), m.llm, m.mode, m.image_size, m.feature_layer,
                                        pinpoints, m.min_image_tokens, m.max_image_tokens)
    return model, tokenizer, spec, make_image_processor(spec)


def _cpu_deepspeed_state() -> None:
    """The HF Trainer + DeepSpeed on CPU processes: accelerate must be told to use DeepSpeed with gloo."""
    from accelerate import PartialState

    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    PartialState(backend="gloo")
    os.environ.pop("ACCELERATE_USE_DEEPSPEED", None)


def train(recipe: MllmRecipe) -> Path:
    from transformers import Trainer, TrainerCallback, TrainingArguments
    from transformers.trainer_utils import get_last_checkpoint

    from genlip.train.recipe import save_recipe
    from mllm.build import save_mllm, save_processing
    from mllm.data import Collator, LlavaDataset
    from mllm.processing import ConversationEncoder

    t = recipe.train
    final = Path(t.output_dir) / "final"
    if t.resume != "none" and (final / "recipe.yaml").exists():  # recipe.yaml is the last file a finished run writes
        D.print0(f"already finished: {final} holds the trained model (train.resume=none trains it again)")
        return final
    rank, _, ws = D.world()
    cuda = torch.cuda.is_available()
    if not cuda:
        from genlip.runtime import configure_cpu_allocator

        configure_cpu_allocator(t.cpu_allocator)
    if t.deepspeed and not cuda:
        _cpu_deepspeed_state()
    elif ws > 1 and not cuda:
        from accelerate import PartialState

        PartialState(backend="gloo")
    torch.manual_seed(t.seed)
    data_path, image_root = ensure_sft_data(recipe)
    model, tokenizer, spec, ip = build_from_recipe(recipe)
    lrs = {"projector": recipe.lr.projector, "language_model": recipe.lr.language_model,
           "vision_tower": recipe.lr.vision_tower}
    if recipe.lora.enabled:
        from peft import LoraConfig, get_peft_model

        targets = r"model\.language_model\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
        model = get_peft_model(model, LoraConfig(r=recipe.lora.r, lora_alpha=recipe.lora.alpha,
                                                 lora_dropout=recipe.lora.dropout, target_modules=targets,
                                                 modules_to_save=["multi_modal_projector"]))
    D.print0(f"MLLM {recipe.stage}: {spec.kind} tower ({spec.mode} mode) -> projector -> LLM | "
             f"{'LoRA on the LLM' if recipe.lora.enabled else 'full weights'}")
    apply_trainable(model, lrs, lora=recipe.lora.enabled)
    encoder = ConversationEncoder(tokenizer, spec, tokenizer.convert_tokens_to_ids("<image>"),
                                  system=recipe.data.system_prompt, max_length=recipe.data.max_length)
    dataset = LlavaDataset(data_path, image_root, encoder, recipe.data.max_skip_fraction)
    collator = Collator(spec, ip, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    if t.global_batch % (t.micro_batch * ws):
        raise ValueError(f"train.global_batch {t.global_batch} is not a multiple of train.micro_batch "
                         f"{t.micro_batch} x world size {ws}")
    bf16 = cuda and t.precision != "fp32"
    out = Path(t.output_dir)
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=t.micro_batch,
        gradient_accumulation_steps=t.global_batch // (t.micro_batch * ws), num_train_epochs=t.epochs,
        max_steps=t.max_steps, learning_rate=max(lrs.values()), lr_scheduler_type=t.scheduler,
        warmup_steps=t.warmup_ratio, weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm,
        logging_steps=t.logging_steps, save_steps=t.save_steps, save_total_limit=t.save_total_limit, seed=t.seed,
        data_seed=t.seed, bf16=bf16, deepspeed=t.deepspeed, gradient_checkpointing=t.gradient_checkpointing,
        report_to=[], remove_unused_columns=False, dataloader_num_workers=recipe.data.num_workers,
        use_cpu=not cuda, disable_tqdm=not D.is_main(),
        accelerator_config={"use_configured_state": True} if (not cuda and (t.deepspeed or ws > 1)) else None)

    skipped: Counter = Counter()
    stop_after = int(os.environ.get("GENLIP_STOP_AFTER_STEP", 0))

    class Processors(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            if state.is_world_process_zero:
                save_processing(out / f"checkpoint-{state.global_step}", model.config, tokenizer, spec)
                save_recipe(recipe, out / f"checkpoint-{state.global_step}" / "recipe.yaml")

        def on_step_end(self, args, state, control, **kw):
            # fault injection for tests: stop as if killed right after this step's checkpoint
            if stop_after and state.global_step >= stop_after:
                control.should_training_stop = True
                control.should_save = True

        def on_log(self, args, state, control, logs=None, **kw):
            if logs is not None:
                logs["skipped_samples"] = sum(skipped.values())

    class MllmTrainer(Trainer):
        def create_optimizer(self, model=None):
            if self.optimizer is None:
                groups: dict[str, list] = {}
                for n, p in self.model.named_parameters():
                    if p.requires_grad:
                        groups.setdefault(group_of(n), []).append(p)
                self.optimizer = torch.optim.AdamW(
                    [{"params": ps, "lr": lrs[g], "weight_decay": t.weight_decay} for g, ps in groups.items()],
                    betas=(0.9, 0.999), eps=1e-8, fused=not cuda or None)
            return self.optimizer

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            """transformers writes LLaVA weights under their legacy names and the Trainer's plain loader does not map
            them back (it loads non-strictly, silently keeping the old weights); load through from_pretrained."""
            if self.is_deepspeed_enabled or recipe.lora.enabled:
                return super()._load_from_checkpoint(resume_from_checkpoint, model)
            from transformers import AutoModelForImageTextToText

            loaded = AutoModelForImageTextToText.from_pretrained(resume_from_checkpoint)
            (model or self.model).load_state_dict(loaded.state_dict(), strict=True)
            D.print0(f"resumed weights from {resume_from_checkpoint}")

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            n = inputs.pop("n_skipped", None)
            if n is not None and int(n):
                skipped["decode"] += int(n)
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    trainer = MllmTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator,
                          callbacks=[Processors()])
    resume = None
    if t.resume == "auto":
        resume = get_last_checkpoint(str(out)) if out.exists() else None
    elif t.resume != "none":
        resume = t.resume
    if resume:
        D.print0(f"resuming from {resume}")
        saved = Path(resume) / "recipe.yaml"
        if saved.exists():
            import yaml

            from genlip.train.recipe import recipe_diff

            changed = [d for d in recipe_diff(yaml.safe_load(saved.read_text()), recipe) if "resume" not in d]
            if changed:
                D.print0("WARNING: the recipe differs from the checkpoint's: " + "; ".join(changed))
    trainer.train(resume_from_checkpoint=resume)
    if stop_after:
        D.print0(f"stopped after step {stop_after} (GENLIP_STOP_AFTER_STEP)")
        return out
    final = out / "final"
    to_save = model
    if recipe.lora.enabled:
        if trainer.is_world_process_zero():
            model.save_pretrained(out / "lora_adapter")
        to_save = model.merge_and_unload()
    # under ZeRO-3 the weights are sharded: gather them (collective), then rank 0 writes
    state = trainer.accelerator.get_state_dict(trainer.deepspeed) if trainer.is_deepspeed_enabled else None
    if recipe.lora.enabled:
        state = None  # the merged model holds the full weights
    if trainer.is_world_process_zero():
        save_mllm(final, to_save, tokenizer, spec, state_dict=state)
    if trainer.is_world_process_zero():
        (final / "log_history.json").write_text(json.dumps(trainer.state.log_history))
        (final / "skipped.json").write_text(json.dumps({"records": dict(dataset.skipped),
                                                        "decode": dict(skipped)}))
        save_recipe(recipe, final / "recipe.yaml")
        D.print0(f"saved {final}")
    D.barrier()
    return final
