"""Processes of this machine, as the server's lifecycle needs to know them: is a pid alive (a
zombie is not), is it still the process we started (its start time), what runs there, and a
child that dies with its parent.

Linux answers from ``/proc``; elsewhere ``ps`` answers what it can.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

_PROC = Path("/proc")
_PR_SET_PDEATHSIG = 1  # prctl option: signal the child gets when its parent thread dies


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` from the state on (the name may hold spaces)."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def _ps(pid: int, field: str) -> str | None:
    try:
        out = subprocess.run(
            ["ps", "-o", f"{field}=", "-p", str(pid)],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def state(pid: int) -> str | None:
    """The process state letter (``R``, ``S``, ``Z`` ...), or None when there is no such pid."""
    if pid <= 0:
        return None
    if _PROC.is_dir():
        fields = _stat_fields(pid)
        return fields[0] if fields else None
    found = _ps(pid, "state")
    return found[0] if found else None


def alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (exited, not yet reaped) is not alive."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: it exists
    return state(pid) not in (None, "Z")


def start_time(pid: int) -> str | None:
    """A token of when ``pid`` started (clock ticks since boot on Linux): a pid reused by a
    later process has another one. None when there is no such process."""
    if _PROC.is_dir():
        fields = _stat_fields(pid)
        return fields[19] if fields and len(fields) > 19 else None
    return _ps(pid, "lstart")


def cmdline(pid: int) -> str:
    """The command line of ``pid``, arguments joined by spaces ("" when unknown)."""
    if _PROC.is_dir():
        try:
            raw = (_PROC / str(pid) / "cmdline").read_bytes()
        except OSError:
            return ""
        return raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()
    return _ps(pid, "command") or ""


def cwd(pid: int) -> Path | None:
    """The working directory of ``pid`` (Linux only; None elsewhere or when hidden)."""
    try:
        return Path(os.readlink(_PROC / str(pid) / "cwd"))
    except OSError:
        return None


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the child get ``sig`` when the thread that started it dies
    (``prctl(PR_SET_PDEATHSIG)``), so a ``kill -9`` of the parent leaves no orphan; None where
    the kernel has no such thing. Start the child from a thread that lives as long as it
    should (the signal follows the thread, not the process)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), sig)

    return preexec


def stop_child(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """SIGTERM a child this process started, wait up to ``timeout_s`` for it, then SIGKILL it;
    reaped either way (nothing when it had ended already)."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def terminate(pid: int, timeout_s: float, *, is_ours: Callable[[], bool]) -> bool:
    """SIGTERM ``pid``, wait up to ``timeout_s`` for it to end, then SIGKILL it; each signal
    only while ``is_ours()`` still holds. True when it is gone."""
    import time

    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        if not alive(pid) or not is_ours():
            return True  # gone, or the pid is another process's now
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while alive(pid) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reaps it when it is our child
            time.sleep(0.05)
    return not alive(pid)
