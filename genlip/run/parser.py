"""The console scripts' argument parser: a mistake on the command line is one line and exit code 2, like every other
input mistake of the toolkit, instead of argparse's usage block followed by the error."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors (an unknown option, a bad value or choice, a missing argument) print
    ``<prog>: <message> (--help lists the options)`` and exit with code 2. Its subcommands' parsers are of this class
    too (argparse makes them with the parent's class)."""

    def error(self, message: str) -> NoReturn:
        for action in self._actions:  # a missing subcommand: name the commands, not the parser's internal name
            if isinstance(action, argparse._SubParsersAction) and message.endswith(f"required: {action.dest}"):
                message = f"give a command: {', '.join(action.choices)}"
        print(f"{self.prog}: {message} (--help lists the options)", file=sys.stderr)
        raise SystemExit(2)
