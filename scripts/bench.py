"""imgsave's benchmarks, each against a baseline measured in the same run on the same machine.

    python scripts/bench.py [hot-row] [route-fn] [e2e] [fleet] [store] [audit] [startup]
                            [batches] [kinds] [history]
                                                    # default: all
    python scripts/bench.py --readme          # the table in docs/performance.md, from the JSON

Needs a PostgreSQL server and pgbench: IMGSAVE_BENCH_DATABASE_URL (default
postgresql://postgres@127.0.0.1:5432/postgres). Creates and drops a database `imgsave_bench`
(IMGSAVE_BENCH_DB names another, for checkouts that share a server).
Results go to scripts/bench-results.json; `--readme` rewrites the table between the markers in
docs/performance.md from it, so the table always shows one run's numbers, as measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from benchmarks import (
    audit_applog,
    audit_scale,
    batches,
    e2e,
    fleet,
    history_scale,
    hot_row,
    kinds,
    route_fn,
    startup,
    store_e2e,
)
from benchmarks.common import BenchmarkFailed, Result, bench_database, server_version

BENCHES: dict[str, Callable[[], list[Result]]] = {
    "hot-row": hot_row.run,
    "route-fn": route_fn.run,
    "e2e": e2e.run,
    "fleet": fleet.run,
    "store": store_e2e.run,
    # imgsave's own history, and an app's console logs (issue 29)
    "audit": lambda: audit_scale.run() + audit_applog.run(),
    "startup": startup.run,
    "batches": batches.run,
    "kinds": kinds.run,
    "history": history_scale.run,
}
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "scripts" / "bench-results.json"
TABLE_PAGE = ROOT / "docs" / "performance.md"
START, END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"


def run(names: list[str]) -> dict[str, object]:
    results: list[Result] = []
    with bench_database():
        for name in names:
            print(f"running {name}…", flush=True)
            results.extend(BENCHES[name]())
    return {
        "date": datetime.now(UTC).date().isoformat(),
        "machine": f"{os.cpu_count()} cores, Python {platform.python_version()}, "
        f"PostgreSQL {server_version()}",
        "results": [asdict(r) for r in results],
    }


def table(run: dict[str, object]) -> str:
    rows = [
        f"Measured {run['date']} on {run['machine']}.",
        "",
        "| benchmark | imgsave | baseline (same run) | ratio | goal |",
        "|---|---|---|---|---|",
    ]
    results = run["results"]
    if not isinstance(results, list):
        raise ValueError("results JSON has no list of results")
    rows += [
        f"| {r['benchmark']} | {r['imgsave']} | {r['baseline']} | {r['ratio']:.2f} | {r['goal']} |"
        for r in results
    ]
    return "\n".join(rows)


def write_readme(run: dict[str, object]) -> None:
    text = TABLE_PAGE.read_text()
    head, start, rest = text.partition(START)
    _, end, tail = rest.partition(END)
    if not (start and end):
        raise SystemExit(f"docs/performance.md has no {START} … {END} markers")
    TABLE_PAGE.write_text(f"{head}{START}\n{table(run)}\n{END}{tail}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", choices=[[], *BENCHES], metavar="NAME")
    parser.add_argument(
        "--readme", action="store_true", help="only rewrite the table in docs/performance.md"
    )
    args = parser.parse_args()
    if args.readme:
        write_readme(json.loads(RESULTS.read_text()))
        return 0
    try:
        measured = run(args.names or list(BENCHES))
    except BenchmarkFailed as exc:
        print(f"benchmark failed its own check: {exc}", file=sys.stderr)
        return 1
    if not args.names:  # only a complete run replaces the published numbers
        RESULTS.write_text(json.dumps(measured, indent=2, ensure_ascii=False) + "\n")
        write_readme(measured)
    print(table(measured))
    return 0


if __name__ == "__main__":
    sys.exit(main())
