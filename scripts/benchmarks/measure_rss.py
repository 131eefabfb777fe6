"""Run a command with stdout to a file and print its peak RSS in KiB.

    python measure_rss.py OUT_FILE COMMAND...

A process of its own, small, because a child's high-water mark (ru_maxrss) starts from
whatever its parent had mapped when it forked.
"""

from __future__ import annotations

import os
import subprocess
import sys


def main() -> int:
    with open(sys.argv[1], "wb") as out:
        proc = subprocess.Popen(sys.argv[2:], stdout=out)
        _, status, usage = os.wait4(proc.pid, 0)
    print(usage.ru_maxrss)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main())
