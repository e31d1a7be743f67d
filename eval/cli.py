"""``genlip-eval``: evaluate MLLM checkpoints with lmms-eval.

    genlip-eval run --model runs/mllm_finetune_tiny_cpu/final --suite synth
    genlip-eval run --model runs/.../final --suite paper14 --out results/genlip-so16
    genlip-eval sweep --grid grid.yaml                 # encoders x LLMs x protocols x suites, resumable
    genlip-eval report results/a results/b --out report/ --compare a b
    genlip-eval synth-bench --out bench/              # the generated offline benchmarks as lmms-eval task files
    genlip-eval local-tasks --exports /data/lmms --suite paper14 --out tasks/   # task files for local exports
    genlip-eval run --model runs/.../final --suite paper14 --tasks-dir tasks/
    genlip-eval pipeline                               # corpus -> encoders -> MLLMs -> eval -> report (CPU)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from genlip.run.extras import require

require("genlip-eval", __name__, "mllm", "eval")  # before the imports that need them: one line, not a traceback

from eval.local_tasks import write_local_tasks
from eval.pipeline import run_pipeline
from eval.report import load_cells, write_report
from eval.run import EvalError, OtherResults, run_suite
from eval.suites import SUITES
from eval.sweep import __doc__ as sweep_doc
from eval.sweep import sweep
from eval.synth_bench import write_synth_benchmarks
from genlip.run.config import RecipeError
from genlip.run.parser import Parser
from genlip.run.resources import ResourceNotFound, resolve


def main(argv: list[str] | None = None) -> int:
    ap = Parser(prog="genlip-eval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="one model, one suite")
    r.add_argument("--model", required=True, help="a trained MLLM directory (genlip-mllm's final/)")
    r.add_argument("--suite", default="synth", choices=sorted(SUITES),
                   help="benchmark suite (default: %(default)s, the generated offline benchmarks)")
    r.add_argument("--out", default=None, help="result directory (default: results/<model's run>/<suite> for a "
                   "run's final/, results/<run>-<checkpoint>/<suite> for one of its checkpoints)")
    r.add_argument("--limit", type=int, default=None, help="at most N samples per task (a quick check)")
    r.add_argument("--max-new-tokens", type=int, default=None,
                   help="answer length limit (default: each task's own generation settings)")
    r.add_argument("--tasks-dir", default=None, help="task files from `genlip-eval local-tasks` (local exports)")
    r.add_argument("--force", action="store_true", help="run lmms-eval again even if --out already holds these scores")
    r.add_argument("--batch-size", type=int, default=1, help="questions answered together (left-padded; answers "
                   "equal batch size 1's; 16 or more on a GPU)")
    sw = sub.add_parser("sweep", help="a grid of encoders x LLMs x protocols x suites (resumable)",
                        description=sweep_doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    sw.add_argument("--grid", required=True, help="a grid YAML (the format above), checked before anything runs")
    rp = sub.add_parser("report", help="tables, charts and pairwise comparisons of evaluated cells")
    rp.add_argument("results", nargs="+", help="directories written by `genlip-eval run` (or their scores.json)")
    rp.add_argument("--out", required=True, help="report directory (report.md, report.csv, charts)")
    rp.add_argument("--compare", nargs=2, metavar=("A", "B"), help="two cell names: A - B with bootstrap intervals")
    s = sub.add_parser("synth-bench", help="write the generated offline benchmarks")
    s.add_argument("--out", required=True, help="directory for the task files and their parquet data")
    s.add_argument("--samples", type=int, default=50, help="questions per benchmark (default: %(default)s)")
    lt = sub.add_parser("local-tasks", help="lmms-eval task files for local exports of the benchmark datasets")
    lt.add_argument("--exports", required=True, help="directory of exports (see eval/local_tasks.py for layouts)")
    lt.add_argument("--out", required=True, help="directory for the generated task files")
    g = lt.add_mutually_exclusive_group(required=True)
    g.add_argument("--suite", action="append", help="every task of these suites (repeatable)")
    g.add_argument("--tasks", help="comma-separated lmms-eval task or group names")
    pp = sub.add_parser("pipeline", help="the whole chain on generated data, GenLIP vs contrastive vs random")
    pp.add_argument("--config", default=None, help="a config file, or a bundled one (default: cpu_compare)")
    pp.add_argument("--out", default=None, help="default: the config's out")
    args = ap.parse_args(argv)
    try:
        return _dispatch(args)
    except (RecipeError, ResourceNotFound) as e:  # a config file or value a user wrote: one line, before anything runs
        print(f"genlip-eval: {e}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    if args.cmd == "pipeline":
        try:
            report = run_pipeline(resolve(args.config or "cpu_compare", "pipeline"), args.out)
        except (RecipeError, ResourceNotFound):
            raise
        except (RuntimeError, ValueError, FileNotFoundError) as e:
            print(f"genlip-eval: {e}", file=sys.stderr)
            return 1
        print((report / "report.md").read_text())
        print(f"report: {report / 'report.md'} and {report / 'scores.png'}")
        return 0
    if args.cmd == "local-tasks":
        unknown = [s for s in args.suite or [] if s not in SUITES]
        if unknown:
            print(f"genlip-eval: unknown suite {unknown}; choose from {sorted(SUITES)}", file=sys.stderr)
            return 2
        tasks = args.tasks.split(",") if args.tasks else [b.task for s in args.suite for b in SUITES[s]]
        try:
            m = write_local_tasks(args.exports, args.out, tasks)
        except FileNotFoundError as e:  # --exports is not there: the input's mistake
            print(f"genlip-eval: {e}", file=sys.stderr)
            return 2
        for t, local in m["tasks"].items():
            print(f"  {t:24s} -> {local}  ({m['sources'][t]['format'] if t in m['sources'] else 'group'})")
        for t, why in m["missing"].items():
            print(f"  {t:24s} MISSING: {why}")
        print(f"{len(m['tasks'])} local tasks in {args.out}; {len(m['missing'])} missing")
        return 1 if m["missing"] else 0
    if args.cmd == "synth-bench":
        out = write_synth_benchmarks(args.out, args.samples)
        print(f"wrote {out}/tasks (use --include_path {out}/tasks with lmms-eval)")
        return 0
    if args.cmd == "sweep":
        status = sweep(args.grid)
        failed = [k for k, v in status.items() if v["status"] != "done"]
        print(f"{len(status) - len(failed)} cells done, {len(failed)} failed" + (f": {failed}" if failed else ""))
        return 1 if failed else 0
    if args.cmd == "report":
        try:
            out = write_report(load_cells(args.results), args.out, tuple(args.compare) if args.compare else None)
        except (ValueError, KeyError, FileNotFoundError) as e:
            print(f"genlip-eval: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
            return 2
        print((out / "report.md").read_text())
        return 0
    if not Path(args.model).is_dir():
        print(f"genlip-eval: --model {args.model}: no such directory (give genlip-mllm's output_dir/final)",
              file=sys.stderr)
        return 2
    if not (Path(args.model) / "genlip_mllm_image.json").is_file():  # before lmms-eval's half-minute start-up
        print(f"genlip-eval: {args.model} is not an MLLM directory of this toolkit (no genlip_mllm_image.json; "
              "give genlip-mllm's final/)", file=sys.stderr)
        return 2
    if args.limit is not None and args.limit < 1:
        print(f"genlip-eval: --limit must be at least 1, got {args.limit}", file=sys.stderr)
        return 2
    if args.batch_size < 1:
        print(f"genlip-eval: --batch-size must be at least 1, got {args.batch_size}", file=sys.stderr)
        return 2
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        print(f"genlip-eval: --max-new-tokens must be at least 1, got {args.max_new_tokens}", file=sys.stderr)
        return 2
    if args.tasks_dir is not None and not Path(args.tasks_dir).is_dir():
        print(f"genlip-eval: --tasks-dir {args.tasks_dir}: no such directory (write it with `genlip-eval "
              "local-tasks`)", file=sys.stderr)
        return 2
    model = Path(args.model).resolve()
    run = model.parent.name if model.name == "final" else f"{model.parent.name}-{model.name}"
    out = args.out or str(Path("results") / run / args.suite)
    try:
        res = run_suite(args.model, args.suite, out, args.limit, args.max_new_tokens, tasks_dir=args.tasks_dir,
                        reuse=not args.force, batch_size=args.batch_size)
    except OtherResults as e:
        print(f"genlip-eval: {e}", file=sys.stderr)
        return 2
    except (EvalError, KeyError, FileNotFoundError) as e:
        print(f"genlip-eval: {e}", file=sys.stderr)
        return 1
    if res.get("reused"):
        print(f"already evaluated: {Path(out) / 'scores.json'} holds these scores (--force runs lmms-eval again)")
    width = max(len(k) for k in [*res["benchmarks"], *res["averages"]])
    for k, v in [*res["benchmarks"].items(), *res["averages"].items()]:
        print(f"{k:{width}s}  {v:8.2f}")
    for task, (empty, n) in res.get("empty_answers", {}).items():
        if empty:
            print(f"note: {empty} of {n} answers to {task} are empty (the model ended at once, as a barely trained "
                  "one does)")
    print(f"scores: {Path(out) / 'scores.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
