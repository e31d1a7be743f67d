"""Probes on frozen GenLIP features for an image-folder classification dataset (discriminative transfer, small scale).

The dataset is ImageNet-style::

    root/train/<class>/*.{jpg,jpeg,png,webp,bmp,gif,tif,tiff}
    root/val/<class>/*

The class list is the sorted list of ``train`` sub-folders; a ``val`` class that is not a ``train`` class is an error,
and so is an empty split or a class folder without images. Files are found recursively inside each class folder;
hidden files and files whose extension is not an image extension are not images and are ignored. Images that cannot
be read or decoded (see :func:`genlip.data.decode.decode_image`) are skipped, counted by reason and reported in the
result (``skipped``); nothing is substituted for them.

Preprocessing is the stage-1 one (:func:`genlip.data.transforms.fixed_resize`): RGB, bilinear resize to
``image_size x image_size`` (a multiple of the patch size), rescale to ``[0, 1]``, normalise with the config's
``image_mean`` / ``image_std``. The encoder runs once, frozen (eval mode, ``torch.no_grad``), and its final-LayerNorm
features are kept **in memory**: ``(n, d)`` mean-pooled features for the linear probe and the whole ``(n, N, d)``
patch-token sequence for the attentive probe (``n * N * d * 4`` bytes: 10k images of 196 tokens at d=1024 is 8 GB;
meant for the small datasets this module targets).

Two probes are trained on the features:

- :class:`LinearProbe`: a linear classifier on the pooled feature (no BatchNorm; the features are standardised with
  fixed per-dimension train-set statistics, an affine map that could be folded into the weights).
- :class:`AttentiveProbe`: one learned query cross-attends over the patch tokens (multi-head attention pooling, as in
  V-JEPA / AIM), followed by LayerNorm and a linear classifier.

Both train with AdamW and a cosine learning-rate schedule. Given several learning rates, each is trained on the
train split minus a stratified held-out part, the best on the held-out part is kept and the probe is retrained on the
whole train split with it. Everything is deterministic under ``seed``.

Python: :func:`run_probe` / :func:`run_probes`; command line: ``genlip-analyze probe`` (:mod:`genlip.tools.probe_cli`).

Why not torchvision's ``ImageFolder`` and scikit-learn's ``LogisticRegression``: the reader must find files
recursively, ignore non-images by extension, decode through :func:`genlip.data.decode.decode_image` and count every
skip by reason instead of raising or substituting, which ``ImageFolder`` does not; the linear probe trains with the
same AdamW/cosine/learning-rate-sweep protocol as the attentive probe, on the GPU when there is one, so the two are
comparable, and scikit-learn is not a dependency of the project.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from genlip.data.decode import IMAGE_EXTS, SkipSample, SkipStats, decode_image
from genlip.data.transforms import fixed_resize
from genlip.masks import image_only_layout
from genlip.modeling import GenLIPForCaptioning, GenLIPVisionModel
from genlip.run.checkpoint import resolve_weights_dir

log = logging.getLogger(__name__)

KINDS = ("linear", "attentive")
DEFAULTS = {  # per-kind training defaults
    "linear": {"epochs": 50, "lr": 1e-3, "weight_decay": 1e-4},
    "attentive": {"epochs": 50, "lr": 1e-3, "weight_decay": 0.05},
}
MAX_LISTED_SKIPS = 20


class ProbeDataError(ValueError):
    """The image folder cannot be used as a probe dataset (layout, classes, empty split)."""


# ----------------------------------------------------------------------------------------------------- the dataset


@dataclass
class ImageFolder:
    """File lists of an image-folder dataset: ``(path, label)`` pairs per split, labels index ``classes``."""

    root: Path
    classes: list[str]
    train: list[tuple[Path, int]]
    val: list[tuple[Path, int]]


def _is_image_file(p: Path) -> bool:
    return p.suffix.lower().lstrip(".") in IMAGE_EXTS and not p.name.startswith(".")


def _class_files(class_dir: Path) -> list[Path]:
    files = []
    for p in sorted(class_dir.rglob("*")):
        rel = p.relative_to(class_dir).parts
        if any(part.startswith(".") for part in rel):
            continue
        if _is_image_file(p) and (p.is_file() or p.is_symlink()):  # a broken symlink is an unreadable image
            files.append(p)
    return files


def _class_dirs(split_dir: Path) -> list[Path]:
    return sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_image_folder(root: str | Path) -> ImageFolder:
    """List ``root/train/<class>/*`` and ``root/val/<class>/*``; see the module docstring for the rules."""
    root = Path(root)
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise ProbeDataError(f"{root} is not an image-folder dataset: {root / split} is not a directory "
                                 f"(expected {root}/train/<class>/<image> and {root}/val/<class>/<image>)")
    train_dirs = _class_dirs(root / "train")
    if not train_dirs:
        raise ProbeDataError(f"{root / 'train'} has no class folders (expected {root}/train/<class>/<image>)")
    classes = [d.name for d in train_dirs]
    index = {c: i for i, c in enumerate(classes)}
    val_dirs = _class_dirs(root / "val")
    unknown = [d.name for d in val_dirs if d.name not in index]
    if unknown:
        raise ProbeDataError(f"val classes not present in train: {unknown} (the class list comes from "
                             f"{root / 'train'}: {classes})")
    splits: dict[str, list[tuple[Path, int]]] = {}
    for split, dirs in (("train", train_dirs), ("val", val_dirs)):
        items = []
        for d in dirs:
            files = _class_files(d)
            if not files:
                raise ProbeDataError(f"class folder {d} has no images (extensions {', '.join(IMAGE_EXTS)})")
            items += [(f, index[d.name]) for f in files]
        if not items:
            raise ProbeDataError(f"split {root / split} is empty: no class folders with images")
        splits[split] = items
    return ImageFolder(root, classes, splits["train"], splits["val"])


# ------------------------------------------------------------------------------------------------------- features


@dataclass
class Features:
    """Frozen features of the images that decoded; ``kept`` indexes the input paths, ``skips`` counts the others."""

    pooled: torch.Tensor  # (n, d) mean over the final-LayerNorm patch tokens
    tokens: torch.Tensor | None  # (n, N, d) the tokens themselves, when asked for
    kept: list[int]
    skips: SkipStats
    skipped_files: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def load_encoder(model: str | Path | nn.Module) -> nn.Module:
    """A :class:`GenLIPVisionModel` from an encoder or captioning (pretraining) checkpoint directory, or from a
    pretraining run directory (its newest checkpoint); modules are returned as they are."""
    if isinstance(model, nn.Module):
        return model
    path = Path(model)
    if not path.exists():
        raise FileNotFoundError(f"model directory {path} does not exist")
    path = resolve_weights_dir(path) if not (path / "config.json").exists() else path
    encoder, info = GenLIPVisionModel.from_pretrained(path, output_loading_info=True)
    if info.get("missing_keys"):
        missing = sorted(info["missing_keys"])
        raise KeyError(f"{path} is not a GenLIP encoder checkpoint: missing {missing[:5]} "
                       f"({len(missing)} weights in all)")
    return encoder


def _config_of(encoder: nn.Module):
    return getattr(encoder, "config", None)


def _encode(encoder: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` -> final-LayerNorm patch tokens ``(B, N, d)``."""
    if isinstance(encoder, GenLIPForCaptioning):  # a pretraining model in memory: its ViT is the encoder
        vit = encoder.vit
        h = vit.patch_embed(pixels.to(vit.patch_embed.proj.weight.dtype))
        gh, gw = vit.patch_embed.grid(*pixels.shape[-2:])
        return vit(h, image_only_layout(pixels.shape[0], gh, gw, pixels.device))[0]
    out = encoder(pixel_values=pixels)
    if isinstance(out, torch.Tensor):
        return out
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def _load_pixels(path: Path, image_size: int, mean, std) -> torch.Tensor:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SkipSample("unreadable_file", str(e)) from e
    return fixed_resize(decode_image(data), image_size, mean, std)


def _check_image_size(encoder: nn.Module, image_size: int) -> None:
    cfg = _config_of(encoder)
    patch = getattr(cfg, "patch_size", None)
    if image_size <= 0 or (patch and image_size % patch):
        raise ValueError(f"image_size {image_size} must be a positive multiple of the patch size {patch}")


@torch.no_grad()
def extract_features(encoder: nn.Module, paths: Sequence[str | Path], image_size: int | None = None,
                     batch_size: int = 64, device: str | torch.device = "cpu", keep_tokens: bool = False,
                     num_workers: int = 0) -> Features:
    """Run the frozen ``encoder`` (eval mode, no gradients) over the images at ``paths``.

    Returns the mean-pooled final features ``(n, d)`` (linear probe) and, with ``keep_tokens``, the full patch-token
    sequence ``(n, N, d)`` (attentive probe), both float32 on the CPU and in memory. Images that cannot be read or
    decoded are skipped and counted in ``skips`` by reason; ``kept`` lists the indices of the others. The encoder is
    moved to ``device`` (and left there) and put back in its previous train/eval mode afterwards.
    ``num_workers > 0`` decodes in that many threads (the order of the results does not change).
    """
    cfg = _config_of(encoder)
    image_size = image_size or getattr(cfg, "image_size", None)
    if not image_size:
        raise ValueError("image_size is needed for an encoder without a config")
    _check_image_size(encoder, image_size)
    mean = list(getattr(cfg, "image_mean", None) or [0.5, 0.5, 0.5])
    std = list(getattr(cfg, "image_std", None) or [0.5, 0.5, 0.5])
    device = torch.device(device)
    was_training = encoder.training
    encoder.eval().to(device)
    stats = SkipStats()
    skipped: list[tuple[str, str]] = []
    pooled, tokens, kept = [], [], []

    def load(i_path):
        i, p = i_path
        try:
            return i, _load_pixels(Path(p), image_size, mean, std), None
        except SkipSample as e:
            return i, None, e

    pool = ThreadPoolExecutor(num_workers) if num_workers > 0 else None
    try:
        for start in range(0, len(paths), batch_size):
            chunk = list(enumerate(paths[start:start + batch_size], start))
            loaded = list(pool.map(load, chunk)) if pool else [load(x) for x in chunk]
            batch = []
            for i, px, err in loaded:
                stats.seen += 1
                if err is not None:
                    stats.skip(err.reason, str(paths[i]))
                    skipped.append((str(paths[i]), err.reason))
                    log.warning("skipping %s: %s", paths[i], err)
                    continue
                kept.append(i)
                batch.append(px)
            if not batch:
                continue
            hidden = _encode(encoder, torch.stack(batch).to(device)).float()
            pooled.append(hidden.mean(dim=1).cpu())
            if keep_tokens:
                tokens.append(hidden.cpu())
    finally:
        if pool:
            pool.shutdown()
        encoder.train(was_training)
    if not kept:
        d = getattr(cfg, "hidden_size", 0)
        return Features(torch.zeros(0, d), torch.zeros(0, 0, d) if keep_tokens else None, kept, stats, skipped)
    return Features(torch.cat(pooled), torch.cat(tokens) if keep_tokens else None, kept, stats, skipped)


# ---------------------------------------------------------------------------------------------------------- probes


class _Standardize(nn.Module):
    """Fixed per-dimension ``(x - mean) / std`` from training features (buffers, never updated by batches)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> None:
        flat = x.reshape(-1, x.shape[-1]).float()
        self.mean.copy_(flat.mean(0))
        self.std.copy_(flat.std(0, unbiased=False).clamp_min(1e-6) if flat.shape[0] > 1 else torch.ones_like(self.std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class LinearProbe(nn.Module):
    """Linear classifier on pooled features ``(B, d) -> (B, classes)`` (no BatchNorm, no hidden layer)."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.input_norm = _Standardize(dim)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.input_norm(x))


class AttentiveProbe(nn.Module):
    """Attention pooling over patch tokens ``(B, N, d) -> (B, classes)``: a learned query cross-attends over the
    tokens with ``num_heads`` heads, then LayerNorm and a linear classifier (V-JEPA / AIM style)."""

    def __init__(self, dim: int, num_classes: int, num_heads: int = 4) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"feature dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.input_norm = _Standardize(dim)
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.query, std=0.02)
        for lin in (self.q, self.kv, self.proj):
            nn.init.trunc_normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)
        nn.init.trunc_normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def _qkv(self, tokens: torch.Tensor):
        B, N, d = tokens.shape
        h = self.num_heads
        x = self.input_norm(tokens)
        q = self.q(self.query).reshape(1, 1, h, d // h).transpose(1, 2).expand(B, -1, -1, -1)
        k, v = self.kv(x).reshape(B, N, 2, h, d // h).permute(2, 0, 3, 1, 4)
        return q, k, v

    def attention(self, tokens: torch.Tensor) -> torch.Tensor:
        """The pooling weights ``(B, heads, N)`` (each row sums to one), for inspection."""
        q, k, _ = self._qkv(tokens)
        return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)[:, :, 0]

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, N, d)`` -> the attention-pooled ``(B, d)`` before the LayerNorm."""
        q, k, v = self._qkv(tokens)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, h, 1, d/h)
        return self.proj(out.transpose(1, 2).reshape(tokens.shape[0], -1))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.pool(tokens)))


def make_probe(kind: str, dim: int, num_classes: int, num_heads: int = 4) -> nn.Module:
    if kind == "linear":
        return LinearProbe(dim, num_classes)
    if kind == "attentive":
        return AttentiveProbe(dim, num_classes, num_heads)
    raise ValueError(f"unknown probe kind {kind!r}; choose one of {KINDS}")


def train_probe(probe: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, batch_size: int = 64,
                weight_decay: float = 0.0, seed: int = 0, device: str | torch.device = "cpu",
                standardize: bool = True) -> nn.Module:
    """AdamW with a cosine schedule (per step, down to zero) on cross-entropy; batches shuffled by ``seed``.

    With ``standardize`` the probe's fixed input standardisation is first set from ``x`` (per-dimension mean and std
    over all samples, and over all tokens for ``(n, N, d)`` inputs). Biases, norms and the query get no weight decay.
    """
    if x.shape[0] == 0:
        raise ValueError("no training features")
    device = torch.device(device)
    if standardize and isinstance(getattr(probe, "input_norm", None), _Standardize):
        probe.input_norm.fit(x)
    probe.to(device).train()
    decay = [p for n, p in probe.named_parameters() if p.ndim >= 2 and n != "query"]
    no_decay = [p for n, p in probe.named_parameters() if p.ndim < 2 or n == "query"]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    n = x.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    total = max(1, epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for s in range(steps_per_epoch):
            idx = order[s * batch_size:(s + 1) * batch_size]
            loss = F.cross_entropy(probe(x[idx].to(device)), y[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return probe.eval()


@torch.no_grad()
def predict(probe: nn.Module, x: torch.Tensor, batch_size: int = 256, device: str | torch.device = "cpu"):
    probe.eval().to(device)
    if x.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long)
    return torch.cat([probe(x[i:i + batch_size].to(device)).argmax(-1).cpu() for i in range(0, x.shape[0], batch_size)])


def accuracy(probe: nn.Module, x: torch.Tensor, y: torch.Tensor, device: str | torch.device = "cpu") -> float:
    """Top-1 accuracy in percent."""
    if y.numel() == 0:
        return float("nan")
    return 100.0 * float((predict(probe, x, device=device) == y).float().mean())


def stratified_holdout(y: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(fit, held)``: about ``fraction`` of every class with at least two samples is held out (at least
    one sample of such a class, never all of it)."""
    gen = torch.Generator().manual_seed(seed)
    fit, held = [], []
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=gen)]
        k = min(max(1, round(fraction * idx.numel())), idx.numel() - 1) if idx.numel() >= 2 else 0
        held.append(idx[:k])
        fit.append(idx[k:])
    return torch.cat(fit).sort().values, torch.cat(held).sort().values


def fit_probe(kind: str, x: torch.Tensor, y: torch.Tensor, num_classes: int, epochs: int, lrs: Sequence[float],
              batch_size: int = 64, weight_decay: float = 0.0, seed: int = 0, device: str | torch.device = "cpu",
              holdout_fraction: float = 0.1, num_heads: int = 4, standardize: bool = True):
    """Train a probe; with several learning rates choose one on a held-out part of the training features first.

    Returns ``(probe, chosen_lr, {lr: held-out top-1})`` (the dict is empty for a single learning rate).
    """
    lrs = list(lrs)
    if not lrs:
        raise ValueError("no learning rate given")

    def build_and_train(xs, ys, lr):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            probe = make_probe(kind, x.shape[-1], num_classes, num_heads)
        return train_probe(probe, xs, ys, epochs, lr, batch_size, weight_decay, seed, device, standardize)

    sweep: dict[float, float] = {}
    best = lrs[0]
    if len(lrs) > 1:
        fit_idx, held_idx = stratified_holdout(y, holdout_fraction, seed)
        if held_idx.numel() == 0:
            raise ValueError("too few training images to hold some out for the learning-rate sweep")
        for lr in lrs:
            probe = build_and_train(x[fit_idx], y[fit_idx], lr)
            sweep[lr] = accuracy(probe, x[held_idx], y[held_idx], device)
        best = max(lrs, key=lambda lr: (sweep[lr], -lrs.index(lr)))  # ties: the first listed
    return build_and_train(x, y, best), best, sweep


# ---------------------------------------------------------------------------------------------------------- runner


def _skip_report(train: Features, val: Features) -> dict:
    both = train.skips.merge(val.skips)
    files = train.skipped_files + val.skipped_files
    return {"count": both.n_skipped, "reasons": dict(both.skipped), "train": train.skips.n_skipped,
            "val": val.skips.n_skipped,
            "files": [f"{p} ({r})" for p, r in files[:MAX_LISTED_SKIPS]]}


def _default_heads(encoder: nn.Module, dim: int) -> int:
    heads = getattr(_config_of(encoder), "num_attention_heads", None) or max(1, dim // 64)
    return heads if dim % heads == 0 else 1


def run_probes(model: str | Path | nn.Module, data_root: str | Path, kinds: Sequence[str] = ("linear",), *,
               image_size: int | None = None, epochs: int | None = None, lr: float | Sequence[float] | None = None,
               batch_size: int = 64, weight_decay: float | None = None, seed: int = 0,
               device: str | torch.device = "cpu", num_workers: int = 0, extract_batch_size: int | None = None,
               holdout_fraction: float = 0.1, num_heads: int | None = None, standardize: bool = True) -> dict:
    """Extract features once and train every probe in ``kinds``; returns ``{kind: result}`` (see :func:`run_probe`).

    ``epochs``, ``lr`` and ``weight_decay`` default per kind (:data:`DEFAULTS`); ``lr`` may be a list to sweep.
    """
    kinds = list(dict.fromkeys(kinds))
    for k in kinds:
        if k not in KINDS:
            raise ValueError(f"unknown probe kind {k!r}; choose one of {KINDS}")
    data = read_image_folder(data_root)
    encoder = load_encoder(model)
    cfg = _config_of(encoder)
    image_size = image_size or getattr(cfg, "image_size", None)
    if not image_size:
        raise ValueError("image_size is needed for an encoder without a config")
    _check_image_size(encoder, image_size)
    tokens = "attentive" in kinds
    eb = extract_batch_size or batch_size
    feats = {}
    for split, items in (("train", data.train), ("val", data.val)):
        feats[split] = extract_features(encoder, [p for p, _ in items], image_size, eb, device, tokens, num_workers)
    train_y = torch.tensor([data.train[i][1] for i in feats["train"].kept], dtype=torch.long)
    val_y = torch.tensor([data.val[i][1] for i in feats["val"].kept], dtype=torch.long)
    for split, f in feats.items():
        if not f.kept:
            raise ProbeDataError(f"no usable images in {data.root / split}: all {f.skips.seen} were skipped "
                                 f"({dict(f.skips.skipped)})")
    empty = [c for i, c in enumerate(data.classes) if not bool((train_y == i).any())]
    if empty:
        raise ProbeDataError(f"classes without a usable train image (all skipped): {empty}")
    skipped = _skip_report(feats["train"], feats["val"])
    if skipped["count"]:
        log.warning("skipped %d unusable images: %s", skipped["count"], skipped["reasons"])
    dim = feats["train"].pooled.shape[-1]
    heads = num_heads or _default_heads(encoder, dim)
    results = {}
    for kind in kinds:
        d = DEFAULTS[kind]
        ep = d["epochs"] if epochs is None else epochs
        wd = d["weight_decay"] if weight_decay is None else weight_decay
        lrs = [d["lr"]] if lr is None else ([lr] if isinstance(lr, (int, float)) else list(lr))
        xtr = feats["train"].pooled if kind == "linear" else feats["train"].tokens
        xva = feats["val"].pooled if kind == "linear" else feats["val"].tokens
        probe, best_lr, sweep = fit_probe(kind, xtr, train_y, len(data.classes), ep, lrs, batch_size, wd, seed,
                                          device, holdout_fraction, heads, standardize)
        correct = (predict(probe, xva, device=device) == val_y).long()
        results[kind] = {
            "kind": kind,
            "top1": 100.0 * float(correct.float().mean()),
            "val_correct": correct.tolist(),  # per val image, in file order: for intervals and paired comparisons
            "train_top1": accuracy(probe, xtr, train_y, device),
            "num_train": int(train_y.numel()),
            "num_val": int(val_y.numel()),
            "num_classes": len(data.classes),
            "chance_top1": 100.0 / len(data.classes),
            "feature_dim": int(dim),
            "num_tokens": int(xtr.shape[1]) if kind == "attentive" else None,
            "skipped": skipped,
            "classes": list(data.classes),
            "image_size": int(image_size),
            "epochs": int(ep),
            "lr": float(best_lr),
            "lr_sweep": {str(k): v for k, v in sweep.items()},
            "weight_decay": float(wd),
            "batch_size": int(batch_size),
            "seed": int(seed),
            "model": str(model) if not isinstance(model, nn.Module) else type(model).__name__,
            "data": str(data.root),
        }
    return results


def run_probe(model_dir_or_encoder: str | Path | nn.Module, data_root: str | Path, kind: str = "linear", *,
              image_size: int | None = None, epochs: int | None = None, lr: float | Sequence[float] | None = None,
              batch_size: int = 64, seed: int = 0, **kwargs) -> dict:
    """Train one probe (``kind`` = ``linear`` or ``attentive``) on frozen features of an image-folder dataset.

    ``model_dir_or_encoder``: an encoder or pretraining checkpoint directory, a pretraining run directory, or a model
    in memory (:class:`GenLIPVisionModel`, :class:`GenLIPForCaptioning`, or any module whose output has
    ``last_hidden_state``). Returns a dict with ``top1`` (val accuracy, percent), ``train_top1``, ``num_train``,
    ``num_val``, ``num_classes``, ``skipped`` (``count``, ``reasons``, per-split counts, the first files), ``kind``,
    ``feature_dim`` and the settings used. Other keyword arguments go to :func:`run_probes`.
    """
    return run_probes(model_dir_or_encoder, data_root, (kind,), image_size=image_size, epochs=epochs, lr=lr,
                      batch_size=batch_size, seed=seed, **kwargs)[kind]
