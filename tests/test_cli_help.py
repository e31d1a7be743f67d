"""Every console script explains itself: each option of each (sub)command has help text, and the training commands'
``--help`` lists the bundled recipes and every recipe key with its default."""

import argparse
import sys
from pathlib import Path

import pytest

import eval.cli
import genlip.data.cli
import genlip.tools.analyze
import genlip.tools.caption
import genlip.tools.export
import genlip.train.cli
import mllm.cli
from tests.cli import run_cli

BIN = Path(sys.executable).parent
COMMANDS = {"genlip-pretrain": genlip.train.cli.main, "genlip-data": genlip.data.cli.main, "genlip-mllm": mllm.cli.main,
            "genlip-eval": eval.cli.main, "genlip-caption": genlip.tools.caption.main,
            "genlip-analyze": genlip.tools.analyze.main, "genlip-export": genlip.tools.export.main}


class _Parser(Exception):
    pass


def _parser_of(main, monkeypatch) -> argparse.ArgumentParser:
    """The parser ``main`` builds, caught when it would parse."""
    def grab(self, *a, **k):
        raise _Parser(self)

    for name in ("parse_args", "parse_known_args", "parse_intermixed_args"):
        monkeypatch.setattr(argparse.ArgumentParser, name, grab)
    with pytest.raises(_Parser) as e:
        main([])
    return e.value.args[0]


def _undocumented(parser: argparse.ArgumentParser, prefix: str) -> list[str]:
    bad = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                bad += _undocumented(sub, f"{prefix} {name}")
        elif not isinstance(action, argparse._HelpAction) and action.help != argparse.SUPPRESS and not action.help:
            bad.append(f"{prefix} {'/'.join(action.option_strings) or action.dest}")
    return bad


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_has_help(name, monkeypatch):
    assert not _undocumented(_parser_of(COMMANDS[name], monkeypatch), name)


def test_the_checker_sees_an_undocumented_option():
    p = argparse.ArgumentParser()
    p.add_argument("--quiet-one")
    assert _undocumented(p, "x") == ["x --quiet-one"]


@pytest.mark.parametrize("args,recipes,keys", [
    (["genlip-pretrain", "--help"], ["stage1_So16", "stage2_tiny_cpu"], ["train.precision"]),
    (["genlip-mllm", "finetune", "--help"], ["finetune_tiny_cpu", "pretrain_qwen2.5-1.5b"], ["lr: projector=",
                                                                                             "deepspeed=None"]),
])
def test_training_help_lists_recipes_and_keys(args, recipes, keys):
    code, out, err = run_cli(*args, subprocess=args[0] == "genlip-pretrain")
    assert code == 0, err
    flat = " ".join(out.split())
    assert all(r in flat for r in recipes), out
    for k in keys:
        section, _, key = k.partition(".")
        assert (f"{section}: " in out and f"{key}=" in out) if key else k in flat, (k, out)
    assert "precision={auto|fp32|bf16}" in out  # choices are listed


def test_both_trainers_take_resume_as_a_flag(capsys):
    """``--resume`` works on genlip-mllm as on genlip-pretrain (= train.resume / checkpoint.resume), and wins over
    an override given beside it."""
    assert mllm.cli.main(["finetune", "--print-recipe", "train.resume=auto", "--resume", "none"]) == 0
    assert "  resume: none" in capsys.readouterr().out
    assert genlip.train.cli.main(["--print-recipe", "--resume", "none"]) == 0
    assert "  resume: none" in capsys.readouterr().out


def test_in_process_runs_leave_no_logging_state_behind(tmp_path):
    """tests.cli restores what a command's main() sets for its process (here genlip-pretrain quiets genlip.data and
    transformers' progress bars before it refuses the recipe), so the tests after it see the logging they expect."""
    import logging

    from transformers.utils import logging as hf_logging

    before, bars = logging.getLogger("genlip.data").level, hf_logging.is_progress_bar_enabled()
    code, _, err = run_cli("genlip-pretrain", "train.steps=0", cwd=tmp_path)
    assert code == 2 and "train.steps: 0 is out of range" in err, err
    assert logging.getLogger("genlip.data").level == before and hf_logging.is_progress_bar_enabled() == bars


def test_a_missing_subcommand_lists_the_commands():
    code, _, err = run_cli("genlip-export")
    assert code == 2 and err.strip() == ("genlip-export: give a command: hf, random, timm (--help lists the "
                                         "options)"), err
