"""The evaluation's progress line: a benchmark's rate counts from when it started, not from its first answer;
the line quoted from a failed lmms-eval run is plain text."""

import io
import os
import sys

import pytest

pytest.importorskip("lmms_eval")

from eval import lmms_model  # noqa: E402
from eval.run import _run_streaming  # noqa: E402


def test_the_first_progress_line_has_a_real_rate(monkeypatch):
    clock = iter([100.0, 102.0, 104.0, 105.0, 109.0])  # created; answers at 102, 104 (task a done), 105, 109
    monkeypatch.setattr(lmms_model.time, "monotonic", lambda: next(clock))
    out = io.StringIO()
    p = lmms_model.Progress(["a", "a", "b", "b"], every=0.0, stream=out)
    for task in ["a", "a", "b", "b"]:
        p.step(task)
    lines = out.getvalue().splitlines()
    # a: 1 answer in the 2 s since the start, then 2 in 4 s; b starts when a finished (104): 1 in 1 s, 2 in 5 s
    assert [line.split(", ")[1] for line in lines] == ["0.50/s", "0.50/s", "1.00/s", "0.40/s"], lines
    assert lines[0].endswith("ETA 0m02s") and lines[1].endswith("done")


def test_the_last_line_quoted_from_lmms_eval_has_no_colour_codes(tmp_path):
    """A failed run's one-line error quotes lmms-eval's last line: without the terminal colour codes of its log."""
    code = "print('some output'); print('\\x1b[31mERROR\\x1b[0m dataset \\x1b[1mdocvqa\\x1b[0m not found')"
    rc, last = _run_streaming([sys.executable, "-c", code], dict(os.environ), tmp_path, tmp_path / "log", None)
    assert rc == 0 and last == "ERROR dataset docvqa not found"
    assert "\x1b[31m" in (tmp_path / "log").read_text()  # the log keeps what lmms-eval wrote
