"""An audit worker process (workers.py): `python -m imgsave.adapters.runlog.worker_main`.

A module of its own so that what the worker pickles names `workers`, not `__main__`."""

import sys

from imgsave.adapters.runlog.workers import serve

serve(sys.stdin.buffer, sys.stdout.buffer)
