"""The benchmark runner.

    .venv/bin/python -m bench [--quick] [--only insert,mixed,idle,latency,memory,peer,scale]
        [--rows N] [--repeats K] [--big]

Creates its own data (PostgreSQL databases named bench_run_*, dropped at the end, and SQLite
files in a temporary folder), runs each scenario several times, prints medians and ratios
against baselines measured in the same run on the same servers, describes the machine, and ends
each scenario by comparing both sides: a scenario whose result is wrong fails the run (exit 1).

`--quick`: every scenario tiny (2,000 rows, 3 registers, a few seconds of selling), for CI, so
the benchmarks never rot; no timing is asserted anywhere. The peer (dlt) runs only in the full
run. PostgreSQL is BENCH_PG (default postgresql://postgres@127.0.0.1:5432/postgres).
"""

from __future__ import annotations

import argparse
import importlib
import tempfile
import time
import traceback
from pathlib import Path

from bench.common import ADMIN, Cluster, Mismatch, Outcome, fmt, machine

SCENARIOS = ["insert", "mixed", "idle", "latency", "memory", "peer", "scale"]
QUICK_OFF = {"peer"}  # needs a package outside the test extra, and minutes


def arguments(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (CI)")
    p.add_argument("--only", default="", help="comma-separated scenarios: " + ",".join(SCENARIOS))
    p.add_argument("--rows", type=int, default=None, help="rows of the sync scenarios")
    p.add_argument("--idle-rows", type=int, default=None, help="rows of each idle table")
    p.add_argument("--repeats", type=int, default=None, help="runs of each measurement")
    p.add_argument("--registers", type=int, default=None, help="registers of the scale scenario")
    p.add_argument("--big", action="store_true", help="also the 10,000,000-row RSS run")
    args = p.parse_args(argv)
    args.rows = args.rows or (2_000 if args.quick else 1_000_000)
    args.idle_rows = args.idle_rows or (200 if args.quick else 1_000_000)
    args.repeats = args.repeats or 3
    args.registers = args.registers or (3 if args.quick else 500)
    return args


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    only = [s for s in args.only.split(",") if s] or [
        s for s in SCENARIOS if not (args.quick and s in QUICK_OFF)
    ]
    unknown = set(only) - set(SCENARIOS)
    if unknown:
        print(f"FAILED: unknown scenario {', '.join(sorted(unknown))}; use {', '.join(SCENARIOS)}")
        return 2
    print("replicator benchmarks" + (" (--quick)" if args.quick else ""))
    for line in machine():
        print(f"  {line}")
    print(
        f"  sizes: {args.rows:,} rows per sync scenario, {args.idle_rows:,} rows per idle "
        f"table, {args.registers} registers; {args.repeats} runs of each measurement"
    )
    failed: list[str] = []
    outcomes: list[Outcome] = []
    cluster = Cluster(ADMIN)
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench_run_") as tmp:
        for name in only:
            work = Path(tmp) / name
            work.mkdir()
            print(f"\n== {name} ==", flush=True)
            started = time.monotonic()
            try:
                module = importlib.import_module(f"bench.s_{name}")
                rows = args.idle_rows if name == "idle" else args.rows
                extra = {"args": args} if name in {"memory", "scale", "peer"} else {}
                results: list[Outcome] = module.run(
                    cluster, work, rows, args.repeats, args.quick, **extra
                )
            except Mismatch:
                failed.append(f"{name}: both sides differ")
                continue
            except (Exception, SystemExit) as exc:
                traceback.print_exc()
                failed.append(f"{name}: {type(exc).__name__}: {exc}")
                continue
            finally:
                cluster.drop()
            for out in results:
                outcomes.append(out)
                report(out)
            print(f"  ({time.monotonic() - started:.0f} s)", flush=True)
    print("\n== summary ==")
    for out in outcomes:
        if out.skipped:
            print(f"  SKIPPED {out.scenario}: {out.skipped}")
            continue
        goals = [f for f in out.figures if f.goal]
        state = ", ".join(f"{f.name}: {'met' if f.met else 'NOT MET'}" for f in goals)
        print(f"  VERIFIED {out.scenario}" + (f" — goals: {state}" if state else ""))
    for line in failed:
        print(f"  FAILED {line}")
    print(f"  total {time.monotonic() - began:.0f} s")
    return 1 if failed else 0


def report(out: Outcome) -> None:
    print(f"-- {out.scenario}")
    if out.skipped:
        print(f"  skipped: {out.skipped}")
        return
    for f in out.figures:
        print(f"  {fmt(f)}")
    for line in out.verified:
        print(f"  {line}")
    for line in out.notes:
        print(f"  note: {line}")
