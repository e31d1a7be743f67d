"""Files that ship inside the package: recipes, DeepSpeed configs and pipeline configs (the ``recipes`` package).

A command accepts either a path (absolute, or relative to the working directory) or the name of a bundled file, so
``genlip-pretrain --recipe stage1_So16`` and ``train.deepspeed=zero3`` work from any directory and from a regular
(non-editable) install. A name that is neither gives one line that lists what is bundled.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

KINDS = ("genlip", "mllm", "mllm/deepspeed", "pipeline")


class ResourceNotFound(ValueError):
    """A recipe/config name that is neither an existing path nor a bundled file."""


def bundled_dir(kind: str) -> Path:
    """The directory of bundled files of one kind (``genlip``, ``mllm``, ``mllm/deepspeed``, ``pipeline``)."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; one of {KINDS}")
    root = resources.files("recipes")
    for part in kind.split("/"):
        root = root / part
    # the package is installed as files on disk (wheel or editable), so this is a real directory
    return Path(str(root))


def bundled_names(kind: str, suffix: str = ".yaml") -> list[str]:
    d = bundled_dir(kind)
    return sorted(p.stem for p in d.glob(f"*{suffix}")) if d.is_dir() else []


def resolve(name: str, kind: str, suffix: str = ".yaml") -> Path:
    """An existing path wins; else the bundled ``<kind>/<name>`` (with or without ``suffix``)."""
    p = Path(name).expanduser()
    if p.is_file():
        return p.resolve()
    d = bundled_dir(kind)
    stem = name[: -len(suffix)] if name.endswith(suffix) else name
    if p.parent.as_posix().endswith(f"recipes/{kind}"):  # the repository path the docs show, from elsewhere
        stem = p.stem
    if "/" not in stem and (d / f"{stem}{suffix}").is_file():
        return d / f"{stem}{suffix}"
    what = "a DeepSpeed config" if kind == "mllm/deepspeed" else f"a {kind} recipe" if kind != "pipeline" \
        else "a pipeline config"
    raise ResourceNotFound(f"{name!r} is neither a file (from {Path.cwd()}) nor {what} bundled with the package: "
                           f"{', '.join(bundled_names(kind, suffix)) or 'none'}")


def resolve_recipe(name: str, kind: str = "genlip") -> Path:
    """A recipe path or bundled name (``stage1_tiny_cpu``, ``finetune_tiny_cpu``)."""
    return resolve(name, kind)


def resolve_deepspeed(name: str) -> Path:
    """``zero2`` / ``zero3`` (bundled) or a path to a DeepSpeed JSON config."""
    return resolve(name, "mllm/deepspeed", ".json")
