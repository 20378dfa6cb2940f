"""Which process a claim stored in the database names, and whether it still runs.

A claim row names its process by its machine (the kernel's boot id and pid namespace,
which two machines or two containers never share, whatever their hostnames), its pid and
its start time, so that a pid reused after a crash is not taken for the claimer. Each is
read from ``/proc`` (Linux); elsewhere it cannot be told, and callers decide what that
means for their claims.
"""

from __future__ import annotations

import functools
import os

__all__ = ["boot_id", "pid_namespace", "process_alive", "process_stat", "this_machine"]


@functools.cache
def boot_id() -> str | None:
    """The kernel's id of this boot of this machine (Linux), random at each boot."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot:
            return boot.read().strip() or None
    except OSError:
        return None


@functools.cache
def pid_namespace() -> str | None:
    """This process's pid namespace (Linux): processes of another one are not seen here."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def this_machine() -> str | None:
    """This machine's boot and pid namespace, where the platform tells them (Linux);
    ``None`` elsewhere."""
    boot = boot_id()
    namespace = pid_namespace()
    if boot is None or namespace is None:
        return None
    return f"{boot} {namespace}"


def process_stat(pid: int) -> tuple[str, str] | None:
    """Process ``pid``'s state and start time (clock ticks since boot) from
    ``/proc/<pid>/stat``, or ``None`` where that cannot be read (not Linux, gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()  # after the command's name
        return fields[0].decode(), fields[19].decode()
    except (OSError, IndexError):
        return None


def process_alive(machine: object, pid: object, started: object) -> bool | None:
    """Whether the process named by ``machine`` (:func:`this_machine`), ``pid`` and
    ``started`` runs (or is stopped): not once its pid is gone, a zombie, or another
    process's (another start time). ``None`` where that cannot be told: another
    machine's process, or a platform without ``/proc``."""
    here = this_machine()
    if os.name != "posix" or here is None or machine != here:
        return None
    if type(pid) is not int or pid < 1:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it is there
        pass
    stat = process_stat(pid)
    if stat is None:
        return None
    state, start = stat
    return state != "Z" and started in (None, start)
