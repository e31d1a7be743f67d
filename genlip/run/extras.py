"""The optional parts of the toolkit (``pyproject.toml``'s extras) and a one-line refusal when a command's part is not
installed: ``pip install genlip-toolkit`` alone gives the encoder commands; ``genlip-mllm`` needs the ``mllm`` extra
and ``genlip-eval`` the ``mllm`` and ``eval`` ones (``make setup`` installs them all). Only whether a module can be
found is asked, nothing is imported."""

from __future__ import annotations

import importlib.util
import os
import sys

# extra -> {module: the package that provides it}; what the commands import, not every package of the extra
EXTRAS = {
    "mllm": {"peft": "peft", "accelerate": "accelerate"},
    "eval": {"lmms_eval": "lmms-eval", "datasets": "datasets", "pandas": "pandas", "matplotlib": "matplotlib",
             "tabulate": "tabulate", "pycocoevalcap": "pycocoevalcap"},
    "tools": {"timm": "timm"},  # genlip-export timm (matplotlib, the extra's other package, only draws charts)
}


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def missing(*extras: str) -> list[str]:
    """The packages of ``extras`` that are not installed."""
    return [pkg for extra in extras for mod, pkg in EXTRAS[extra].items() if not installed(mod)]


def why_missing(*extras: str) -> str | None:
    """What to install when a package of ``extras`` is missing (None when all are installed)."""
    gone = missing(*extras)
    if not gone:
        return None
    names = ",".join(extras)
    return (f"needs the {' and '.join(extras)} extra{'s' if len(extras) > 1 else ''}, not installed here (missing: "
            f"{', '.join(gone)}): pip install 'genlip-toolkit[{names}]' (in a checkout: pip install -e '.[{names}]', "
            "or `make setup`)")


def require(prog: str, module_name: str, *extras: str) -> None:
    """For a command module, before it imports ``extras``: run as the program ``prog`` (its console script, or
    ``python -m``: ``module_name`` is then ``__main__``), exit with one line (code 2) naming what to install; imported
    by other code, raise :class:`ImportError` with that line, as the missing import itself would have."""
    why = why_missing(*extras)
    if why is None:
        return
    if module_name == "__main__" or os.path.basename(sys.argv[0] if sys.argv else "") == prog.split()[0]:
        print(f"{prog}: {why}", file=sys.stderr)
        raise SystemExit(2)
    raise ImportError(f"{prog} {why}")
