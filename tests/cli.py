"""Test helper: run an installed console script, as a new process or in this one.

A command's refusals (a wrong value: one line, exit code 2, nothing made) are found before anything heavy runs, but
a new process spends ~5 s importing torch and transformers first. A family of such cases runs one case through the
installed script (``subprocess=True``) and the rest through the same entry-point function the script calls, found
the way the script finds it (the installed distribution's ``console_scripts``), in this process.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import socket
import subprocess as sp
import sys
from importlib.metadata import entry_points
from pathlib import Path

from transformers.utils import logging as hf_logging

BIN = Path(sys.executable).parent


def free_port() -> str:
    """A TCP port free on this machine now, for torchrun's ``--master_port`` (tests may run side by side)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _loggers() -> dict[str, logging.Logger]:
    return {"": logging.getLogger(), **{k: x for k, x in logging.root.manager.loggerDict.items()
                                         if isinstance(x, logging.Logger)}}


def _logger_levels() -> dict[str, int]:
    return {name: x.level for name, x in _loggers().items()}


def run_cli(prog: str, *args: str, env: dict | None = None, cwd: str | Path | None = None,
            subprocess: bool = False) -> tuple[int, str, str]:
    """``prog args`` with ``env`` (the whole environment, as for ``subprocess.run``) in ``cwd``: (exit code, stdout,
    stderr). In this process the environment, working directory, logger levels and transformers' progress bars
    are restored afterwards."""
    if subprocess:
        p = sp.run([str(BIN / prog), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)
        return p.returncode, p.stdout, p.stderr
    (ep,) = entry_points(group="console_scripts", name=prog)
    main = ep.load()
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    levels = _logger_levels()
    bars = hf_logging.is_progress_bar_enabled()
    out, err = io.StringIO(), io.StringIO()
    try:
        if env is not None:
            os.environ.clear()
            os.environ.update(env)
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as e:
                code = e.code
            if isinstance(code, str):  # sys.exit("message"): the message on stderr, exit code 1
                print(code, file=sys.stderr)
        code = 0 if code is None else code if isinstance(code, int) else 1
    finally:
        for name, x in _loggers().items():  # those made during the call go back to NOTSET (their parents decide)
            x.setLevel(levels.get(name, logging.NOTSET))
        (hf_logging.enable_progress_bar if bars else hf_logging.disable_progress_bar)()
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    return code, out.getvalue(), err.getvalue()
