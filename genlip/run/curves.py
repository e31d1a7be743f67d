"""Training curves as a PNG at the end of a run: the loss and the learning rate against the optimizer step, for
pretraining (``metrics.jsonl``) and the MLLM stages (the Trainer's log history)."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def plot_curves(rows: list[dict], out: str | Path, title: str, loss_key: str = "loss",
                lr_key: str = "lr") -> Path | None:
    """Write ``out`` (a PNG) from logged rows (``{"step", loss_key, lr_key, ...}``); a step logged twice (redone
    after a resume) counts once, its last row. Returns ``out``, or None when matplotlib is not installed or nothing
    was logged."""
    by_step: dict[int, dict] = {}
    for r in rows:
        if "step" in r and (loss_key in r or lr_key in r):
            by_step[int(r["step"])] = {**by_step.get(int(r["step"]), {}), **r}
    if not by_step:
        return None
    try:
        import matplotlib  # optional: the tools/eval extras

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # optional: after the Agg backend is chosen
    except ImportError:
        log.info("matplotlib is not installed: no %s", out)
        return None
    steps = sorted(by_step)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, key, label in ((axes[0], loss_key, "loss"), (axes[1], lr_key, "learning rate")):
        xs = [s for s in steps if isinstance(by_step[s].get(key), (int, float))]
        ax.plot(xs, [by_step[s][key] for s in xs], lw=1.2)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
