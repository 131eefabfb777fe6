"""Run a command with stdout to a file and print its peak RSS in KiB.

    python measure_rss.py [--tree] OUT_FILE COMMAND...

A process of its own, small, because a child's high-water mark (ru_maxrss) starts from
whatever its parent had mapped when it forked. ru_maxrss is the largest single process (the
command or a child it waited for); with --tree a second number follows: the peak of the memory
the command and all its descendants held at once (their proportional set sizes added up, so
that a library they share counts once), sampled every 20 ms.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path


def _tree_pss(root: int) -> int:
    """KiB of memory `root` and every process below it hold: their proportional set sizes
    (a page two of them share, such as a library's, counted half in each), from /proc."""
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            for task in Path(f"/proc/{pid}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue  # it ended meanwhile
        for line in rollup.splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1])
    return total


def main() -> int:
    args = sys.argv[1:]
    tree = args[:1] == ["--tree"]
    if tree:
        args = args[1:]
    peak = [0]
    with open(args[0], "wb") as out:
        proc = subprocess.Popen(args[1:], stdout=out)
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.02):
                peak[0] = max(peak[0], _tree_pss(proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        if tree:
            sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        done.set()
        if tree:
            sampler.join()
    print(usage.ru_maxrss, *([peak[0]] if tree else []))
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main())
