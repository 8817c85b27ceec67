"""TensorBoard: the event files of ``log.summary`` and the TensorBoard of ``start --tensorboard``.

Scalars are written through TensorBoard's own ``tensorboard.summary.Writer``; nothing here
imports TensorFlow or torch, and TensorBoard itself is imported only when a writer is made.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import MissingDependencyError

log = logging.getLogger(__name__)


def summary_writer(logdir: Path) -> Any:
    """A ``tensorboard.summary.Writer`` over an event file of ours (see :func:`_event_output`)."""
    try:
        from tensorboard.summary import Writer
    except ImportError:
        raise MissingDependencyError(
            "log.summary needs tensorboard: pip install 'zoo-serving[tensorboard]'"
        ) from None
    return Writer(_event_output(logdir))


def _event_output(logdir: Path) -> Any:
    """An event file Output for TensorBoard's Writer.

    Its own ``DirectoryOutput`` goes through ``tensorboard.compat.tf``, which imports the whole
    of TensorFlow when it is installed; this one writes the same TFRecord event file with plain
    file I/O. Scalars go in the classic ``simple_value`` form, which TensorBoard and both of its
    ``EventAccumulator`` classes read as scalars.
    """
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary import Output
    from tensorboard.summary.writer.record_writer import RecordWriter

    class EventFileOutput(Output):
        def __init__(self, path: Path) -> None:
            path.mkdir(parents=True, exist_ok=True)
            name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}"
            self._file = open(path / f"{name}.{os.getpid()}.0", "wb")  # noqa: SIM115
            self._records = RecordWriter(self._file)
            self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))
            self.flush()

        def _write(self, event: Any) -> None:
            self._records.write(event.SerializeToString())

        def emit_scalar(
            self,
            *,
            plugin_name: str,
            tag: str,
            data: Any,
            step: Any,
            wall_time: float,
            tag_metadata: Any = None,
            description: str | None = None,
        ) -> None:
            event = event_pb2.Event(wall_time=wall_time, step=int(step))
            event.summary.value.add(
                tag=tag,
                simple_value=float(data),
                metadata=summary_pb2.SummaryMetadata(summary_description=description or ""),
            )
            self._write(event)

        def flush(self) -> None:
            self._records.flush()

        def close(self) -> None:
            self._records.close()

    return EventFileOutput(logdir)


def start_tensorboard(logdir: Path, log_file: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``tensorboard --logdir logdir`` on 127.0.0.1 and a free port, its output going to
    ``log_file``; returns the process and its address. The caller terminates it."""
    import importlib.util

    from ..broker.embedded import free_port

    if importlib.util.find_spec("tensorboard") is None:
        raise MissingDependencyError(
            "--tensorboard needs tensorboard: pip install 'zoo-serving[tensorboard]'"
        )
    port = free_port()
    logdir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir)]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}/"
    log.info("TensorBoard (pid %d) on %s for %s", proc.pid, url, logdir)
    return proc, url
