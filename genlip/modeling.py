"""The GenLIP model: one Transformer over ``[image patches ; text]`` trained by next-token prediction.

- :class:`GenLIPTransformer` is the ViT itself (patch embedding, MRoPE, blocks, final LayerNorm).
- :class:`GenLIPForCaptioning` adds the text embedding and the untied LM head: the pretraining model.
- :class:`GenLIPVisionModel` is the encoder alone (image-only input, full attention), usable as a LLaVA vision tower.
Both save as Hugging Face directories; the vision model loads from a captioning checkpoint (text parts ignored).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput

from genlip.attention import AttentionPlan, MaskPlan, build_plan, dense_plan
from genlip.config import GenLIPConfig
from genlip.generation import generate
from genlip.layers import Block, LayerScale, PatchEmbed
from genlip.loss import IGNORE_INDEX, gather_supervised, supervised_ce
from genlip.masks import Layout, fixed_layout, image_only_layout, packed_layout
from genlip.positions import text_start_position
from genlip.rope import MRoPE, mrope_axis_of_channel


class GenLIPTransformer(nn.Module):
    """Patch embedding + pre-LN blocks + final LayerNorm. Text embedding and LM head live in the wrapper."""

    def __init__(self, config: GenLIPConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_embed = PatchEmbed(config.patch_size, config.num_channels, config.hidden_size)
        self.rope = MRoPE(config.head_dim, config.mrope_section, config.rope_theta)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        # none | selective (recompute the cheap elementwise work, keep matmul and attention outputs) | full
        self.activation_checkpointing = "none"

    @property
    def gradient_checkpointing(self) -> bool:
        return self.activation_checkpointing != "none"

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, enable: bool) -> None:
        self.activation_checkpointing = "full" if enable else "none"

    def plan(self, layout: Layout, backend: str | None = None) -> AttentionPlan:
        return build_plan(layout, backend or self.config.attn_backend)

    def forward(self, h: torch.Tensor, layout: Layout, plan: AttentionPlan | None = None,
                collect: bool = False, caches=None):
        """Run the blocks on embeddings ``h`` ``(B, L, d)``. Returns ``(norm(h_last), [h_0, ..., h_N] or None)``.

        ``caches``: a list of per-layer ``[k, v]`` lists or a transformers ``Cache`` (see :func:`cache_update`)."""
        plan = plan or self.plan(layout)
        rope = self.rope(layout.position_ids, dtype=h.dtype)
        sample_ids = layout.sample_ids if self.training else None
        states = [h] if collect else None
        for i, block in enumerate(self.blocks):
            cache = None if caches is None else caches[i] if isinstance(caches, list) else (caches, i)
            mode = self.activation_checkpointing if self.training and torch.is_grad_enabled() else "none"
            if mode == "full":
                h = checkpoint(block, h, rope, plan, sample_ids, cache, use_reentrant=False)
            elif mode == "selective":
                h = checkpoint(block, h, rope, plan, sample_ids, cache, use_reentrant=False,
                               context_fn=_selective_context, **_SAC_KWARGS)
            else:
                h = block(h, rope, plan, sample_ids, cache)
            if collect:
                states.append(h)
        return self.norm(h), states


def _saved_ops() -> set:
    aten = torch.ops.aten
    names = ("mm", "addmm", "bmm", "baddbmm", "convolution", "_scaled_dot_product_flash_attention",
             "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
             "_scaled_dot_product_flash_attention_for_cpu", "_flash_attention_forward", "_efficient_attention_forward")
    return {getattr(aten, n).default for n in names if hasattr(aten, n)}


_SAVED = _saved_ops()


# what selective checkpointing keeps goes through saved-tensor hooks (e.g. offloading) like everything else, where
# this PyTorch can be told so
_SAC_KWARGS = ({"respect_saved_tensors_hooks": True}
               if "respect_saved_tensors_hooks" in inspect.signature(checkpoint).parameters else {})


def _selective_policy(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in _SAVED else CheckpointPolicy.PREFER_RECOMPUTE


def _selective_context():
    """Selective activation checkpointing: matmul and attention outputs are kept, everything elementwise between
    them (LayerNorms, RoPE, SwiGLU and gate products, LayerScale) is recomputed in the backward pass."""
    return create_selective_checkpoint_contexts(_selective_policy)


class GenLIPPreTrainedModel(PreTrainedModel):
    config_class = GenLIPConfig
    base_model_prefix = "genlip"
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = True
    _no_split_modules = ["Block"]
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The release's initialisation: N(0, 0.02) with zero bias, xavier-uniform attention, LayerScale 0.1."""
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            if getattr(module, "xavier_init", False):  # attention projections (marked by GatedAttention)
                init.xavier_uniform_(module.weight)
            else:
                init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, LayerScale):
            init.constant_(module.gamma, self.config.layerscale_init)
        elif isinstance(module, MRoPE):
            half = module.head_dim // 2
            inv = module.theta ** (-torch.arange(0, half, dtype=torch.float32) * 2 / module.head_dim)
            init.copy_(module.inv_freq, inv)
            init.copy_(module.axis, mrope_axis_of_channel(half, module.mrope_section))

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func=None) -> None:
        self.vit.gradient_checkpointing = enable

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict | None = None,
                                        every_n_layers: int = 1, offload: bool = False) -> None:
        """transformers' switch (its name since 5.x; ``gradient_checkpointing_enable`` before): full checkpointing of
        every block, always non-reentrant (``use_reentrant`` may be given, with either value: the gradients are the
        same). For selective checkpointing set ``model.vit.activation_checkpointing = "selective"``. Checkpointing
        only some blocks (``every_n_layers``) and offloading to the host are not implemented: refused, not ignored."""
        unknown = sorted(set(activation_checkpointing_kwargs or {}) - {"use_reentrant"})
        if unknown or every_n_layers != 1 or offload:
            given = {"kwargs": unknown} if unknown else {"every_n_layers": every_n_layers} if every_n_layers != 1 \
                else {"offload": offload}
            raise ValueError(f"GenLIP checkpoints every block (full or selective) on the device; {given} is not "
                             "supported")
        self.vit.activation_checkpointing = "full"

    def activation_checkpointing_disable(self) -> None:
        self.vit.activation_checkpointing = "none"

    # the names before transformers 5.x's, and what its Trainer and PEFT call in some versions
    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None, **kwargs) -> None:
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)

    def gradient_checkpointing_disable(self) -> None:
        self.activation_checkpointing_disable()


@dataclass
class GenLIPOutput(ModelOutput):
    """``loss`` is the mean over supervised tokens (or over ``num_items_in_batch`` when given)."""

    loss: torch.Tensor | None = None
    loss_sum: torch.Tensor | None = None
    num_supervised: int | None = None
    logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    cache: object | None = None  # the transformers Cache of a generation step


class GenLIPForCaptioning(GenLIPPreTrainedModel, GenerationMixin):
    """GenLIP pretraining model: the ViT plus text embedding, optional text projections and an untied LM head.

    Two input formats share one forward:

    - **fixed** (stage 1): ``pixel_values`` ``(B, C, H, W)``, ``input_ids`` ``(B, T)`` with the text of each sample,
      ``attention_mask`` ``(B, T)`` marking its right padding, ``labels`` ``(B, T)`` (``-100`` = unsupervised).
      Image tokens are prepended to every row.
    - **packed** (stage 2): ``input_ids``/``labels`` ``(B, L)`` cover whole rows, ``pixel_values`` holds every image
      patch of the batch ``(N, C, P, P)`` in token order, and ``layout`` (or ``sample_ids``/``image_ids``/
      ``position_ids``) describes the rows (see :mod:`genlip.masks`).

    ``labels`` are aligned with the tokens as in Hugging Face models; shifting happens inside, never across samples.

    **Generation** (transformers' ``generate``): ``model.generate(input_ids=prompt, pixel_values=images,
    attention_mask=mask)`` with same-size images ``(B, C, H, W)`` and the prompt left-padded by ``mask``; greedy,
    sampling, beam search and the KV cache work as for any transformers language model, and the result equals
    :meth:`caption` (which also takes images of different sizes in one batch). As in transformers' decoder models,
    the returned sequences start with the prompt.
    """

    _keys_to_ignore_on_load_unexpected = [r"\.rope\."]
    main_input_name = "input_ids"  # generate() treats the main input as the prompt

    def __init__(self, config: GenLIPConfig) -> None:
        super().__init__(config)
        d, t = config.hidden_size, config.text_embed_dim
        self.vit = GenLIPTransformer(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, t)
        self.text_in_proj = nn.Linear(t, d) if t != d else None
        self.text_out_proj = nn.Linear(d, t) if t != d else None
        self.lm_head = nn.Linear(t, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def embed_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        e = self.embed_tokens(input_ids)
        return self.text_in_proj(e) if self.text_in_proj is not None else e

    def head_input(self, h: torch.Tensor) -> torch.Tensor:
        """Final-LayerNorm features -> the LM head's input width (the release's ``proj``)."""
        return self.text_out_proj(h) if self.text_out_proj is not None else h

    def build_inputs(self, input_ids, pixel_values=None, attention_mask=None, labels=None, layout=None):
        """Embeddings, layout and aligned labels for either input format."""
        if layout is None:  # fixed format
            B, T = input_ids.shape
            if pixel_values is not None:
                img = self.vit.patch_embed(pixel_values.to(self.vit.patch_embed.proj.weight.dtype))
                gh, gw = self.vit.patch_embed.grid(*pixel_values.shape[-2:])
            else:
                img, gh, gw = None, 0, 0
            layout = fixed_layout(B, gh, gw, attention_mask, T).to(input_ids.device)
            txt = self.embed_text(input_ids)
            h = txt if img is None else torch.cat([img.to(txt.dtype), txt], dim=1)
            if labels is not None and img is not None:
                pad = labels.new_full((B, img.shape[1]), IGNORE_INDEX)
                labels = torch.cat([pad, labels], dim=1)
            return h, layout, labels
        h = self.embed_text(input_ids.clamp(min=0))
        is_img = layout.is_image
        if pixel_values is not None:
            patches = self.vit.patch_embed.embed_patches(pixel_values).to(h.dtype)
            if patches.shape[0] != int(is_img.sum()):
                raise ValueError(f"{patches.shape[0]} image patches for {int(is_img.sum())} image positions")
            h = h.masked_scatter(is_img[..., None], patches)
        elif bool(is_img.any()):
            raise ValueError("the layout has image tokens but no pixel_values were given")
        return h, layout, labels

    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                layout: Layout | None = None, sample_ids: torch.Tensor | None = None,
                image_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                num_items_in_batch: int | torch.Tensor | None = None, loss_impl: str = "plain",
                loss_chunk_size: int = 1024, logits_to_keep: int = 0, output_hidden_states: bool = False,
                attn_backend: str | None = None, cache=None, past_key_values=None, use_cache: bool | None = None,
                **kwargs) -> GenLIPOutput:
        kwargs.pop("return_dict", None)
        if kwargs:
            raise TypeError(f"unexpected arguments: {sorted(kwargs)}")
        cache = cache if cache is not None else past_key_values
        if cache is not None or use_cache is not None:  # a step of transformers' generate()
            return self._generation_step(input_ids, pixel_values, attention_mask, cache, logits_to_keep)
        if layout is None and sample_ids is not None:
            layout = Layout(sample_ids, image_ids, position_ids)
        h, layout, labels = self.build_inputs(input_ids, pixel_values, attention_mask, labels, layout)
        hidden, states = self.vit(h, layout, self.vit.plan(layout, attn_backend), collect=output_hidden_states)
        out = GenLIPOutput(last_hidden_state=hidden, hidden_states=tuple(states) if states else None)
        if labels is not None:
            h_sup, y = gather_supervised(hidden, labels, layout.sample_ids)
            loss_sum = supervised_ce(self.head_input(h_sup), self.lm_head.weight, y, loss_impl, loss_chunk_size)
            denom = num_items_in_batch if num_items_in_batch is not None else max(int(y.numel()), 1)
            out.loss, out.loss_sum, out.num_supervised = loss_sum / denom, loss_sum.detach(), int(y.numel())
        else:
            keep = hidden if logits_to_keep <= 0 else hidden[:, -logits_to_keep:]
            out.logits = self.lm_head(self.head_input(keep))
        return out

    @torch.no_grad()
    def caption(self, pixel_values, prompt_ids, **generate_kwargs) -> list[list[int]]:
        """Greedy (or sampled) captions with a KV cache; see :func:`genlip.generation.generate`."""
        return generate(self, pixel_values, prompt_ids, **generate_kwargs)

    def _image_grid(self, pixel_values: torch.Tensor | None) -> tuple[int, int]:
        if pixel_values is None or pixel_values.dim() != 4:
            raise ValueError("generate() needs pixel_values (B, C, H, W): every sequence starts with its image")
        return self.vit.patch_embed.grid(*pixel_values.shape[-2:])

    def prepare_inputs_for_generation(self, input_ids: torch.Tensor, cache=None, past_key_values=None,
                                      attention_mask: torch.Tensor | None = None,
                                      pixel_values: torch.Tensor | None = None, use_cache: bool | None = True,
                                      logits_to_keep: int | None = None, **kwargs) -> dict:
        """The tokens the cache does not hold yet; the images ride along (embedded only at the first step)."""
        cache = cache if cache is not None else past_key_values
        gh, gw = self._image_grid(pixel_values)
        if cache is not None and cache.get_seq_length() > 0:
            input_ids = input_ids[:, cache.get_seq_length() - gh * gw:]
        return {"input_ids": input_ids, "pixel_values": pixel_values, "attention_mask": attention_mask,
                "cache": cache, "use_cache": bool(use_cache), "logits_to_keep": logits_to_keep or 0}

    def _generation_step(self, input_ids, pixel_values, attention_mask, cache, logits_to_keep) -> GenLIPOutput:
        """``[image] + text`` with the text left-padded by ``attention_mask`` (which covers all text so far).

        Text positions count real tokens only, so a padded prompt is computed exactly as the same prompt alone.
        Without a cache (or with an empty one) the image and all text are run; with one, only the new tokens.
        """
        gh, gw = self._image_grid(pixel_values)
        n_img = gh * gw
        B, T = input_ids.shape
        device = input_ids.device
        past = cache.get_seq_length() if cache is not None else 0
        n_text = past - n_img + T if past else T
        text_mask = (torch.ones(B, n_text, dtype=torch.bool, device=device) if attention_mask is None
                     else attention_mask[:, -n_text:].bool())
        if past == 0:  # the stage-1 layout; padding inside the row (left-padded prompts) needs the dense mask
            h, layout, _ = self.build_inputs(input_ids, pixel_values, text_mask)
            plan = dense_plan(layout)
        else:
            new_pos = text_start_position(gh, gw) + text_mask.long().sum(-1, keepdim=True) - T + torch.arange(
                T, device=device)
            key_valid = torch.cat([torch.ones(B, n_img, dtype=torch.bool, device=device), text_mask], dim=1)
            causal = torch.ones(T, past + T, dtype=torch.bool, device=device).tril(past)
            plan = MaskPlan(key_valid[:, None, None, :] & causal[None, None])
            layout = Layout(torch.zeros(B, T, dtype=torch.long, device=device),
                            torch.full((B, T), -1, dtype=torch.long, device=device), new_pos[None].expand(3, B, T))
            h = self.embed_text(input_ids)
        hidden, _ = self.vit(h, layout, plan, caches=cache)
        keep = hidden if logits_to_keep <= 0 else hidden[:, -logits_to_keep:]
        return GenLIPOutput(logits=self.lm_head(self.head_input(keep)), last_hidden_state=hidden, cache=cache)


class GenLIPVisionModel(GenLIPPreTrainedModel):
    """The encoder alone: image-only input, full attention, final-LayerNorm patch features.

    ``hidden_states`` (with ``output_hidden_states``) has ``num_hidden_layers + 1`` entries: the patch embeddings,
    the outputs of blocks ``1 .. N-1``, and the final-LayerNorm output of block ``N``; so ``hidden_states[-1]`` is the
    feature the paper feeds to the MLLM and ``hidden_states[-2]`` the raw penultimate block (LLaVA's default).
    ``output_hidden_states`` may also be an ``int`` layer index, as transformers' LLaVA classes pass it.
    """

    _keys_to_ignore_on_load_unexpected = [r"^embed_tokens\.", r"^lm_head\.", r"^text_(in|out)_proj\.", r"\.rope\.",
                                          r"^contrastive\."]

    def __init__(self, config: GenLIPConfig) -> None:
        super().__init__(config)
        self.vit = GenLIPTransformer(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.vit.patch_embed

    def forward(self, pixel_values: torch.Tensor, image_grid_hw: torch.Tensor | None = None,
                output_hidden_states: bool | int | None = None, return_dict: bool = True,
                attn_backend: str | None = None, **kwargs) -> BaseModelOutputWithPooling:
        """Fixed-size images ``(B, C, H, W)`` -> ``(B, N, d)``; or native-resolution patches ``(N, C, P, P)`` with
        ``image_grid_hw`` ``(n_images, 2)`` -> ``(1, N, d)`` (each image attends only to itself)."""
        collect = bool(output_hidden_states) or output_hidden_states == 0
        if image_grid_hw is None:
            B = pixel_values.shape[0]
            h = self.vit.patch_embed(pixel_values.to(self.vit.patch_embed.proj.weight.dtype))
            gh, gw = self.vit.patch_embed.grid(*pixel_values.shape[-2:])
            layout = image_only_layout(B, gh, gw, pixel_values.device)
        else:
            grids = [tuple(int(x) for x in g) for g in image_grid_hw.tolist()]
            layout = packed_layout([[[("image", g)] for g in grids]], sum(a * b for a, b in grids))
            layout = layout.to(pixel_values.device)
            h = self.vit.patch_embed.embed_patches(pixel_values)[None]
        hidden, states = self.vit(h, layout, self.vit.plan(layout, attn_backend), collect=collect)
        all_states = tuple(states[:-1]) + (hidden,) if collect else None
        pooled = hidden.mean(dim=1)
        if not return_dict:
            return (hidden, pooled, all_states)
        return BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=pooled, hidden_states=all_states)

    def forward_intermediates(self, pixel_values: torch.Tensor, indices: list[int], norm: bool = False):
        """Features after the given blocks (1-based block index, negative counts from the end), timm-style."""
        out = self(pixel_values, output_hidden_states=True)
        raw = list(out.hidden_states[:-1])
        n = self.config.num_hidden_layers
        feats = []
        for i in indices:
            i = i if i >= 0 else n + 1 + i
            if i == n:
                feats.append(out.last_hidden_state)
            else:
                feats.append(self.vit.norm(raw[i]) if norm else raw[i])
        return feats


def num_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


