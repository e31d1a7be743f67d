"""``genlip-eval``: evaluate MLLM checkpoints with lmms-eval.

    genlip-eval run --model runs/mllm_finetune_tiny_cpu/final --suite synth
    genlip-eval run --model runs/.../final --suite paper14 --out results/genlip-so16
    genlip-eval sweep --grid grid.yaml                 # encoders x LLMs x protocols x suites, resumable
    genlip-eval report results/a results/b --out report/ --compare a b
    genlip-eval synth-bench --out bench/              # the generated offline benchmarks as lmms-eval task files
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="genlip-eval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="one model, one suite")
    r.add_argument("--model", required=True)
    r.add_argument("--suite", default="synth")
    r.add_argument("--out", default=None)
    r.add_argument("--limit", type=int, default=None, help="at most N samples per task (a quick check)")
    r.add_argument("--max-new-tokens", type=int, default=None)
    sw = sub.add_parser("sweep", help="a grid of encoders x LLMs x protocols x suites (resumable)")
    sw.add_argument("--grid", required=True)
    rp = sub.add_parser("report", help="tables, charts and pairwise comparisons of evaluated cells")
    rp.add_argument("results", nargs="+", help="directories written by `genlip-eval run` (or their scores.json)")
    rp.add_argument("--out", required=True)
    rp.add_argument("--compare", nargs=2, metavar=("A", "B"), help="two cell names: A - B with bootstrap intervals")
    s = sub.add_parser("synth-bench", help="write the generated offline benchmarks")
    s.add_argument("--out", required=True)
    s.add_argument("--samples", type=int, default=50)
    args = ap.parse_args(argv)
    if args.cmd == "synth-bench":
        from eval.synth_bench import write_synth_benchmarks

        out = write_synth_benchmarks(args.out, args.samples)
        print(f"wrote {out}/tasks (use --include_path {out}/tasks with lmms-eval)")
        return 0
    if args.cmd == "sweep":
        from eval.sweep import sweep

        status = sweep(args.grid)
        failed = [k for k, v in status.items() if v["status"] != "done"]
        print(f"{len(status) - len(failed)} cells done, {len(failed)} failed" + (f": {failed}" if failed else ""))
        return 1 if failed else 0
    if args.cmd == "report":
        from eval.report import load_cells, write_report

        out = write_report(load_cells(args.results), args.out, tuple(args.compare) if args.compare else None)
        print((out / "report.md").read_text())
        return 0
    from pathlib import Path

    from eval.run import EvalError, run_suite

    out = args.out or str(Path("results") / Path(args.model).resolve().parent.name / args.suite)
    try:
        res = run_suite(args.model, args.suite, out, args.limit, args.max_new_tokens)
    except (EvalError, KeyError) as e:
        print(f"genlip-eval: {e}", file=sys.stderr)
        return 1
    width = max(len(k) for k in [*res["benchmarks"], *res["averages"]])
    for k, v in [*res["benchmarks"].items(), *res["averages"].items()]:
        print(f"{k:{width}s}  {v:8.2f}")
    print(f"scores: {Path(out) / 'scores.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
