"""The dependency rule, read from the source (every import, at module level or inside a function):
``eval -> mllm -> genlip``; inside ``genlip`` the model code imports nothing of training, data or the run layer;
the run layer (``genlip.run``) imports no package that uses it; nothing outside pretraining imports its internals
(``genlip.train``)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("genlip", "mllm", "eval")
MODEL = {"genlip.config", "genlip.modeling", "genlip.layers", "genlip.attention", "genlip.rope", "genlip.positions",
         "genlip.masks", "genlip.loss", "genlip.generation", "genlip.image", "genlip.contrastive", "genlip.release"}
# importer (a module or a package prefix) -> what it must not import
RULES = {
    "genlip": ("mllm", "eval"),
    "mllm": ("eval", "genlip.train"),
    "eval": ("genlip.train",),
    "genlip.run": ("genlip.train", "genlip.tools", "genlip.probe", "genlip.export_hf", "genlip.export_timm"),
    "genlip.data": ("genlip.train", "genlip.tools"),
    "genlip.tools": ("genlip.train",),
    "genlip.probe": ("genlip.train",),
    "genlip.export_hf": ("genlip.train",),
    "genlip.export_timm": ("genlip.train",),
    **{m: ("genlip.train", "genlip.run", "genlip.data", "genlip.tools") for m in MODEL},
}


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def module_imports() -> dict[str, set[str]]:
    """Module name -> the project modules it imports (``from genlip.run import dist`` counts as genlip.run.dist)."""
    out = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            mod = ".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            names = set()
            for node in ast.walk(ast.parse(f.read_text())):
                if isinstance(node, ast.Import):
                    names |= {a.name for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names.add(node.module)
                    names |= {f"{node.module}.{a.name}" for a in node.names}
            out[mod] = {n for n in names if n.split(".")[0] in PACKAGES}
    return out


def violations(imports: dict[str, set[str]]) -> list[str]:
    bad = []
    for mod, names in sorted(imports.items()):
        for importer, banned in RULES.items():
            if _within(mod, importer):
                bad += [f"{mod} imports {n}" for n in sorted(names) if any(_within(n, b) for b in banned)]
    return sorted(set(bad))


def test_imports_go_one_way():
    imports = module_imports()
    assert len(imports) > 60 and "genlip.run.config" in imports
    assert not violations(imports), "\n".join(violations(imports))


# imported where they are used: heavy or not installed by every extra
OPTIONAL = {"peft", "deepspeed", "lmms_eval", "timm", "matplotlib", "open_clip", "tensorboard", "wandb", "scipy",
            "sklearn", "datasets", "pandas", "tabulate"}


def function_local_imports() -> list[str]:
    """``path:line module`` of every import inside a function body that is not an optional dependency."""
    out = []
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            for fn in ast.walk(ast.parse(f.read_text())):
                if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                for node in ast.walk(fn):
                    if isinstance(node, ast.Import):
                        mods = [a.name for a in node.names]
                    elif isinstance(node, ast.ImportFrom):
                        mods = [node.module or "."]
                    else:
                        continue
                    out += [f"{f.relative_to(ROOT)}:{node.lineno} {m}" for m in mods
                            if m.split(".")[0] not in OPTIONAL and m != "torch.utils.tensorboard"]
    return out


def test_imports_sit_at_the_top_of_modules_except_optional_dependencies():
    local = function_local_imports()
    assert not local, "\n".join(local)


def test_the_rule_catches_a_breach():
    # the checker itself: a model module importing the trainer, or the harness importing eval, is reported
    fake = {"genlip.modeling": {"genlip.train.loop"}, "mllm.train": {"eval.run"}, "eval.run": {"mllm.build"},
            "genlip.run.config": {"genlip.train.recipe"}}
    assert violations(fake) == ["genlip.modeling imports genlip.train.loop", "genlip.run.config imports "
                                "genlip.train.recipe", "mllm.train imports eval.run"]
