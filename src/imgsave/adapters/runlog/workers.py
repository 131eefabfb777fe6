"""The audit's workers: one process per core, so that a month of logs is read, and its projects
diffed against their documents, by every core rather than one.

A worker is `python -m imgsave.adapters.runlog.worker_main`, started by the audit, fed messages
over its stdin and answering each over its stdout (pickle frames: its only peer is the process
that started it). `Local` answers the same messages in the calling process, for small audits.
The messages:

- ("parse", Setup, index, [Task]) -> [TaskResult]: read a group of the logs' tasks
  (`bulk_reader`);
- ("build", spill files, {raw project: key}, run gap) -> the partition's projects, sorted:
  its log history, kept for the diffs that follow (`log_history.build`);
- ("diff", projects, {project: document}, Shape) -> Diff: those projects' logged URLs against
  their documents (`log_diff.diff_project`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pickle
import signal
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast

from imgsave.adapters.runlog.bulk_reader import Setup, Task, run_tasks
from imgsave.core.documents import SceneRef, Shape
from imgsave.core.log_diff import Diff, diff_project
from imgsave.core.log_history import SceneHistory, build, load_tuples
from imgsave.errors import CannotWork


class Worker(Protocol):
    async def ask(self, message: tuple[Any, ...]) -> Any: ...


class _Handler:
    """Answers messages; holds the log history of the partition being diffed."""

    def __init__(self) -> None:
        self.logged: dict[str, dict[SceneRef, SceneHistory]] = {}

    def handle(self, message: tuple[Any, ...]) -> Any:
        kind, *args = message
        if kind == "parse":
            setup, index, tasks = args
            return run_tasks(cast(Setup, setup), index, cast(list[Task], tasks))
        if kind == "build":
            paths, keys, run_gap = args
            self.logged = {}  # the last partition's, freed before this one is built
            self.logged = build(renamed(paths, keys), run_gap)
            return sorted(self.logged)
        if kind == "diff":
            projects, documents, shape = args
            diff = Diff()
            for project in projects:
                diff_project(project, documents, self.logged[project], cast(Shape, shape), diff)
            return diff
        raise ValueError(f"unknown message {kind!r}")


def renamed(paths: Sequence[Path], keys: dict[str, str]) -> Iterator[tuple[Any, ...]]:
    """A partition's sightings in file order, each project spelled as its key column does."""
    for path in paths:
        for chunk in load_tuples(path):
            if keys:
                chunk = [(keys[t[0]], *t[1:]) if t[0] in keys else t for t in chunk]
            yield from chunk


class Local:
    """The messages answered here, in this process."""

    def __init__(self) -> None:
        self._handler = _Handler()

    async def ask(self, message: tuple[Any, ...]) -> Any:
        return self._handler.handle(message)


class _Process:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc
        self._lock = asyncio.Lock()

    async def ask(self, message: tuple[Any, ...]) -> Any:
        stdin = cast(asyncio.StreamWriter, self._proc.stdin)
        stdout = cast(asyncio.StreamReader, self._proc.stdout)
        async with self._lock:
            data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
            stdin.write(len(data).to_bytes(8, "little") + data)
            await stdin.drain()
            try:
                size = int.from_bytes(await stdout.readexactly(8), "little")
                ok, answer = pickle.loads(await stdout.readexactly(size))
            except (asyncio.IncompleteReadError, ConnectionError):
                ok, answer = False, f"exited ({self._proc.returncode})"
        if not ok:
            raise CannotWork(f"an audit worker process failed: {answer}")
        return answer

    async def stop(self, *, now: bool) -> None:
        """Close its stdin (it exits when done with what it has); `now`: kill it, as when the
        audit failed or was interrupted and nothing it would answer is wanted."""
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        if self._proc.returncode is None and now:
            self._proc.kill()
        try:
            await asyncio.wait_for(self._proc.wait(), 10)
        except TimeoutError:
            self._proc.kill()
            await self._proc.wait()


@asynccontextmanager
async def workers(count: int) -> AsyncIterator[list[Worker]]:
    """`count` worker processes (one: this process, no other started)."""
    if count <= 1:
        yield [Local()]
        return
    started: list[_Process] = []
    failed = True
    try:
        for _ in range(count):
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "imgsave.adapters.runlog.worker_main",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            _wide_pipe(proc.stdin)
            started.append(_Process(proc))
        yield list(started)
        failed = False
    finally:
        await asyncio.gather(*(worker.stop(now=failed) for worker in started))


def _wide_pipe(stream: asyncio.StreamWriter | None) -> None:
    """A pipe of a megabyte where Linux allows it (64 kB otherwise): a batch of documents
    then goes to its worker in a write or two, not a loop wakeup per 64 kB."""
    pipe_size = getattr(fcntl, "F_SETPIPE_SZ", None)
    fileno = stream.get_extra_info("pipe").fileno() if stream is not None else None
    if pipe_size is None or fileno is None:
        return
    with contextlib.suppress(OSError):
        fcntl.fcntl(fileno, pipe_size, 1 << 20)


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def serve(stdin: BinaryIO, stdout: BinaryIO) -> None:
    """A worker's life: answer messages until its parent closes stdin."""
    # Ctrl-C reaches the whole process group: the parent stops the audit and closes this
    # worker's stdin; the worker itself has nothing to say about it (no traceback).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    handler = _Handler()
    while len(head := stdin.read(8)) == 8:
        message = pickle.loads(stdin.read(int.from_bytes(head, "little")))
        try:
            answer: tuple[bool, Any] = (True, handler.handle(message))
        except Exception as exc:  # the parent reports it; a worker has no one else to tell
            answer = (False, f"{type(exc).__name__}: {exc}")
        data = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
        stdout.write(len(data).to_bytes(8, "little") + data)
        stdout.flush()
