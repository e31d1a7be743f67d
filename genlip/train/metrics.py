"""Run logging on rank 0: a progress bar, a JSONL metrics file, TensorBoard when installed, wandb when configured."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from tqdm import tqdm

from genlip.run import dist as D
from genlip.run.config import RecipeError, to_dict
from genlip.run.extras import installed
from genlip.train.recipe import Recipe

log = logging.getLogger(__name__)


def _drop_rows_after(path: Path, step: int) -> None:
    """Keep the rows of ``path`` up to ``step`` (the checkpoint a run resumes from); rewritten atomically."""
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    keep = [x for x in lines if x.strip() and json.loads(x).get("step", 0) <= step]
    if len(keep) != len(lines):
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(x + "\n" for x in keep))
        os.replace(tmp, path)


def check_logging(recipe: Recipe) -> None:
    """Before anything is built: ``log.wandb_project`` is an explicit request, so a missing wandb is a one-line
    :class:`RecipeError` (TensorBoard, on by default, is only said to be missing when the run starts)."""
    if recipe.log.wandb_project and not installed("wandb"):
        raise RecipeError(f"log.wandb_project={recipe.log.wandb_project}: wandb is not installed (pip install wandb)")


class RunLogger:
    def __init__(self, run_dir: Path, recipe: Recipe, total_steps: int, start_step: int) -> None:
        self.enabled = D.is_main()
        self.bar = self.tb = self.wandb = None
        self.file = None
        if not self.enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / "metrics.jsonl"
        _drop_rows_after(self.path, start_step)  # steps redone after a resume are logged once, by the new run
        self.file = open(self.path, "a")  # noqa: SIM115 (open for the whole run, closed in close())
        cfg = recipe.log
        if cfg.tensorboard:  # before the progress bar: a line printed after it would break the bar
            try:
                from torch.utils.tensorboard import SummaryWriter  # optional: needs the tensorboard package

                self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step + 1 if start_step else None)
            except ImportError as e:  # on by default: said once, not an error
                why = "is not installed" if not installed("tensorboard") else f"does not import ({e})"
                print(f"log.tensorboard: tensorboard {why}, so no TensorBoard events; the metrics are in {self.path} "
                      "(pip install tensorboard, or log.tensorboard=false)")
        if cfg.progress:
            self.bar = tqdm(total=total_steps, initial=start_step, desc=recipe.name, dynamic_ncols=True)
        if cfg.wandb_project:
            import wandb  # optional: check_logging made sure it is installed

            self.wandb = wandb.init(project=cfg.wandb_project, name=recipe.name, config=to_dict(recipe),
                                    dir=str(run_dir), resume="allow")
        self.t0 = time.time()

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        row = {"step": step, "time": round(time.time() - self.t0, 3), **metrics}
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix({k: _fmt(metrics[k]) for k in ("loss", "lr", "tok/s", "samples/s", "skipped")
                                  if k in metrics}, refresh=False)
            self.bar.refresh()

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
        self.file.close()


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e-2 or abs(v) >= 1e4 else f"{v:.4f}"
    return v
