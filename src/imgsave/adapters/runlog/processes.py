"""Who is running, precisely enough that another process on this host can tell it is gone:
host, PID namespace (containers reuse PIDs), PID and start time (so do reboots). A claim, a
ledger lease and an unsettled-run marker name their process this way, so a run on the same
host takes over at once from one that died instead of waiting for a lease to lapse."""

from __future__ import annotations

import os
import socket


def this_process() -> str:
    pid = os.getpid()
    return f"{socket.gethostname()}|{_pid_namespace()}|{pid}|{_start_time(pid)}"


def process_is_gone(process: str) -> bool:
    """True only when `process` named a process on this host, in this PID namespace, that no
    longer runs. Anything it cannot be sure of (another host, no /proc) is taken as alive."""
    try:
        host, namespace, pid, started = process.split("|")
    except ValueError:
        return False
    if host != socket.gethostname() or namespace != _pid_namespace() or not namespace:
        return False
    if not pid.isdigit() or not started:
        return False
    return _start_time(int(pid)) != started


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), or ''
    when there is no such process (or only its zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            text = stat.read().decode(errors="replace")
    except OSError:
        return ""
    # The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    fields = text[text.rfind(")") + 2 :].split()
    if len(fields) < 20 or fields[0] in ("Z", "X"):  # a zombie spends nothing either
        return ""
    return fields[19]
