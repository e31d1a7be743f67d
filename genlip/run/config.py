"""Configs: typed dataclasses are the schema, YAML files hold values, ``a.b=value`` overrides on the command line.

One loader for every file a user writes: the pretraining and MLLM recipes, sweep grids and pipeline configs.
Unknown keys are errors (with a suggestion), values are type-checked, ``Literal`` choice fields name the allowed
values, a recipe may be its differences from a ``base:``, and the fully resolved config is written next to every
output. Choosing this small loader over draccus/jsonargparse/OmegaConf structured configs: it is ~250 lines with
PyYAML as its only dependency, it already gave exactly these errors, and the others would add a dependency each
for a subset we use (dotted overrides, dataclass schemas) while changing the error texts users and tests rely on.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from genlip.run.resources import ResourceNotFound, resolve


class RecipeError(ValueError):
    pass


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value in allowed and type(value) in {type(a) for a in allowed}:
            return value
        close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
        # YAML reads yes/no/on/off/true/false as booleans: say so rather than show a True the user never typed
        shown = (f"{value!r} (YAML reads yes/no/on/off/true/false as a boolean)"
                 if isinstance(value, bool) and not any(isinstance(a, bool) for a in allowed) else repr(value))
        raise RecipeError(f"{where}: {shown} is not one of {', '.join(repr(a) for a in allowed)}"
                          + (f"; did you mean {close[0]!r}?" if close else ""))
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except RecipeError as e:
                errors.append(str(e))
        raise RecipeError(errors[0] if errors else f"{where}: bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: expected a mapping, got {value!r}")
        return build(tp, value, where)
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, list):
            raise RecipeError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, inner, f"{where}.{i}") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: expected a mapping, got {value!r}")
        args = typing.get_args(tp)
        if len(args) == 2:  # dict[str, X]: every value is an X
            return {k: _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}
        return dict(value)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise RecipeError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {value!r}")
    return value


_BOUNDS = {"ge": (">=", lambda v, b: v >= b), "gt": (">", lambda v, b: v > b), "le": ("<=", lambda v, b: v <= b),
           "lt": ("<", lambda v, b: v < b)}


def bounded(default: Any, **bounds: float) -> Any:
    """A numeric dataclass field with its valid range (``ge``, ``gt``, ``le``, ``lt``), checked at load::

        steps: int = bounded(100, ge=1)
    """
    unknown = set(bounds) - set(_BOUNDS)
    if unknown:
        raise TypeError(f"unknown bounds {sorted(unknown)}")
    return dataclasses.field(default=default, metadata={"bounds": bounds})


def _check_bounds(f: dataclasses.Field, value: Any, path: str) -> None:
    if f.metadata.get("bounds") and isinstance(value, float) and math.isinf(value):
        raise RecipeError(f"{path}: {value!r} is out of range (must be a finite number)")
    for op, bound in f.metadata.get("bounds", {}).items():
        sym, ok = _BOUNDS[op]
        if value is not None and not ok(value, bound):
            raise RecipeError(f"{path}: {value!r} is out of range (must be {sym} {bound})")


def build(cls: type, values: dict, where: str = "") -> Any:
    """Instantiate dataclass ``cls`` from a nested dict; unknown keys, wrong types, choices and ranges are errors."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = set(fields)
    kwargs = {}
    for key, value in values.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {where + '.' if where else ''}{close[0]}?" if close else ""
            raise RecipeError(f"unknown key {path!r}{hint} (known: {sorted(names)})")
        kwargs[key] = _coerce(value, hints[key], path)
        _check_bounds(fields[key], kwargs[key], path)
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required key is missing
        raise RecipeError(f"{where or 'recipe'}: {e}") from e
    except ValueError as e:  # a schema's own check: its message names the keys, or is said to be about ``where``
        raise RecipeError(str(e) if not where or where in str(e) else f"{where}: {e}") from e


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def apply_override(d: dict, dotted: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML; list items by index: ``data.sources.0.weight=2``)."""
    if "=" not in dotted:
        raise RecipeError(f"override {dotted!r} must look like key.sub=value")
    key, raw = dotted.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as e:
        raise RecipeError(f"override {dotted!r}: the value is not valid YAML ({_yaml_problem(e)})") from None
    parts = key.split(".")
    cur: Any = d
    for i, p in enumerate(parts[:-1]):
        if isinstance(cur, list):
            if not p.isdigit() or int(p) >= len(cur):
                where = ".".join(parts[:i])
                hint = f" (it has {len(cur)}; give the list itself: {where}='[...]'" + (
                    ", e.g. data.sources='[{type: wds, path: \"shards/*.tar\"}]')" if where == "data.sources" else ")")
                raise RecipeError(f"override {key!r}: {where} has no item {p}{hint}")
            cur = cur[int(p)]
        else:
            if p not in cur or cur[p] is None:
                cur[p] = {}
            cur = cur[p]
    last = parts[-1]
    if isinstance(cur, list):
        if not last.isdigit() or int(last) >= len(cur):
            raise RecipeError(f"override {key!r}: no list item {last}")
        cur[int(last)] = value
    else:
        cur[last] = value


def _yaml_problem(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + str(getattr(e, "problem", None) or e).splitlines()[0]


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (YAML would keep the last one silently: a
    second ``lr:`` further down a recipe would quietly win)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: merged keys may be overridden here
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                twice = key in seen
            except TypeError:  # a list or mapping as a key
                raise yaml.constructor.ConstructorError(None, None, f"a {type(key).__name__} cannot be a key",
                                                        key_node.start_mark) from None
            if twice:
                raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_mapping(path: str | Path) -> dict:
    """A YAML file that must hold a mapping (safe loading; a key given twice is an error); a missing file or broken
    YAML is one line."""
    try:
        values = yaml.load(Path(path).read_text(), Loader=_UniqueKeyLoader) or {}  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML ({_yaml_problem(e)})") from None
    except OSError as e:
        raise RecipeError(f"{path}: {e.strerror}") from None
    if not isinstance(values, dict):
        raise RecipeError(f"{path}: expected a mapping at the top level")
    return values


def read_values(path: str | Path, kind: str = "genlip", _depth: int = 0) -> dict:
    """The values of a recipe file with its ``base:`` merged under them (one level). ``base`` names a file beside
    this one or a bundled recipe of the same ``kind``; the file's own values win, mappings merge key by key (except
    ``model.overrides`` and ``data.synth``, which are replaced whole, like lists)."""
    values = read_mapping(path)
    base = values.pop("base", None)
    if base is None:
        return values
    if _depth:
        raise RecipeError(f"{path}: a base recipe cannot have a base of its own (one level only)")
    beside = Path(path).parent / (base if str(base).endswith(".yaml") else f"{base}.yaml")
    try:
        base_path = beside if beside.is_file() else resolve(str(base), kind)
    except ResourceNotFound as e:
        raise RecipeError(f"{path}: base: {e}") from None
    return _deep_merge(read_values(base_path, kind, _depth + 1), values)


def load_config(path: str | Path, cls: type) -> Any:
    """A user's YAML file (a sweep grid, a pipeline config) through the same strict loader as recipes: unknown keys
    with a suggestion, types and choices checked, every default filled in."""
    values = read_mapping(path)
    try:
        return build(cls, values)
    except RecipeError as e:
        raise RecipeError(f"{path}: {e}") from None


def load_recipe(path: str | Path | None, overrides: list[str], cls: type) -> Any:
    """Read a YAML recipe (``yaml.safe_load``; its ``base:`` first), apply dotted overrides, validate into the schema
    ``cls`` (a dataclass; its ``recipe_kind`` attribute names where bundled bases live)."""
    values = read_values(path, getattr(cls, "recipe_kind", "genlip")) if path is not None else {}
    base = to_dict(cls())
    merged = _deep_merge(base, values)
    if "data" in merged and isinstance(merged["data"], dict) and "sources" in merged["data"]:
        merged["data"]["sources"] = values.get("data", {}).get("sources", [])
    for o in overrides:
        apply_override(merged, o)
    _reject_unknown(values, base, "")
    return build(cls, merged)


def _reject_unknown(values: dict, base: dict, where: str) -> None:
    for k, v in values.items():
        path = f"{where}.{k}" if where else k
        if k not in base:
            close = difflib.get_close_matches(k, list(base), n=1)
            raise RecipeError(f"unknown recipe key {path!r}" + (f"; did you mean {close[0]!r}?" if close else ""))
        if isinstance(v, dict) and isinstance(base[k], dict) and k not in ("overrides", "synth"):
            _reject_unknown(v, base[k], path)


def _deep_merge(base: dict, new: dict) -> dict:
    out = dict(base)
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in ("overrides", "synth"):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def save_recipe(recipe: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(recipe), sort_keys=False))


def recipe_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two recipes (dataclasses or dicts), e.g. to warn on resume."""
    a, b = to_dict(old), to_dict(new)
    out = []
    for k in sorted(set(a) | set(b)):
        path = f"{prefix}{k}"
        if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
            out += recipe_diff(a[k], b[k], path + ".")
        elif a.get(k) != b.get(k):
            out.append(f"{path}: {a.get(k)!r} -> {b.get(k)!r}")
    return out



def changed_since(saved: str | Path, recipe: Any, ignore: tuple[str, ...] = ()) -> list[str]:
    """:func:`recipe_diff` between the recipe a run saved (``saved``: its ``recipe.yaml``) and ``recipe``, leaving out
    the keys under ``ignore`` (dotted keys or sections: how a run executes, not what it trains) and keys only one of
    them has (added to or dropped from the schema between the toolkit's versions)."""
    old, new = yaml.safe_load(Path(saved).read_text()) or {}, to_dict(recipe)

    def has(tree: Any, key: str) -> bool:
        for part in key.split("."):
            if not isinstance(tree, dict) or part not in tree:
                return False
            tree = tree[part]
        return True

    def kept(key: str) -> bool:
        return not any(key == p or key.startswith(p + ".") for p in ignore) and has(old, key) and has(new, key)
    return [d for d in recipe_diff(old, new) if kept(d.split(": ", 1)[0])]


def refuse_other_recipe(saved: str | Path, recipe: Any, ignore: tuple[str, ...], finished: str, again: str) -> None:
    """A finished run given again with a different recipe would report the old result as the new one: a
    :class:`RecipeError` naming each key that differs (``finished``: where the result is; ``again``: the override
    that trains it again)."""
    changed = changed_since(saved, recipe, ignore) if Path(saved).is_file() else []
    if changed:
        raise RecipeError(f"{finished} is a finished run of another recipe ({'; '.join(changed)}): give another "
                          f"train.output_dir, or {again} to train it again there")
