"""Spark set up for zoo_serving: the session the ``spark.*`` keys describe, the Python the
executors run, and the model directory on the executors.

Shared by the spark runner (:mod:`zoo_serving.runners.spark`) and the DataFrame API
(:mod:`zoo_serving.spark.dataframe`). PySpark is imported only inside these functions.

The seed's keys map to Spark settings one to one:

=========================  =============================
``spark.master``           ``spark.master`` (see below)
``spark.driver_memory``    ``spark.driver.memory``
``spark.executor_memory``  ``spark.executor.memory``
``spark.num_executors``    ``spark.executor.instances``
``spark.executor_cores``   ``spark.executor.cores``
``spark.total_executor_cores``  ``spark.cores.max``
=========================  =============================

Spark runs a ``local``, ``local[N]`` or ``local[*]`` master without retrying failed tasks; a
serving worker killed under it would end the whole job. Those masters are therefore run as
``local[N,4]`` (4 attempts per task, Spark's own ``spark.task.maxFailures`` default for
clusters); ``local[N,F]`` is kept as written.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import MissingDependencyError

log = logging.getLogger(__name__)

TASK_MAX_FAILURES = 4  # attempts per task, local masters included
_LOCAL_RE = re.compile(r"^local(?:\[\s*(\d+|\*)\s*(?:,\s*(\d+)\s*)?\])?$")
_LOCAL_CLUSTER_RE = re.compile(r"^local-cluster\[\s*(\d+)\s*,\s*(\d+)\s*,\s*\d+\s*\]$")


def require_pyspark() -> Any:
    """The ``pyspark`` module, or :class:`MissingDependencyError` saying how to install it."""
    try:
        import pyspark
    except ImportError:
        raise MissingDependencyError(
            "the spark runner and the DataFrame API need pyspark: pip install 'zoo-serving[spark]'"
        ) from None
    return pyspark


# ---------------------------------------------------------------- masters and settings


def is_local(master: str) -> bool:
    """A master whose executors share this machine's filesystem (``local``, ``local[...]``,
    ``local-cluster[...]``)."""
    return master.strip().startswith("local")


def local_threads(master: str) -> int | None:
    """Task slots of a ``local`` / ``local[N]`` / ``local[*]`` / ``local[N,F]`` master; None for
    other masters."""
    match = _LOCAL_RE.match(master.strip())
    if match is None:
        return None
    threads = match.group(1)
    if threads is None:
        return 1
    return (os.cpu_count() or 1) if threads == "*" else int(threads)


def with_task_retries(master: str) -> str:
    """``local[N]`` -> ``local[N,4]`` so a failed serving task is retried; others unchanged."""
    text = master.strip()
    match = _LOCAL_RE.match(text)
    if match is None or match.group(2) is not None:
        return text
    return f"local[{match.group(1) or 1},{TASK_MAX_FAILURES}]"


def task_slots(config: Config, master: str | None = None) -> int:
    """Tasks Spark can run at once with the ``spark.*`` keys (one CPU per task).

    ``local[N]`` -> N (``local[*]``: this machine's cores); ``local-cluster[N,C,M]`` -> N x C;
    ``yarn`` and ``k8s://`` -> ``num_executors`` x ``executor_cores``; a standalone
    ``spark://`` master and any other -> ``total_executor_cores`` (``spark.cores.max``).
    """
    spark = config.spark
    master = (master or spark.master).strip()
    threads = local_threads(master)
    if threads is not None:
        return threads
    cluster = _LOCAL_CLUSTER_RE.match(master)
    if cluster is not None:
        return int(cluster.group(1)) * int(cluster.group(2))
    if master == "yarn" or master.startswith("k8s://"):
        return spark.num_executors * spark.executor_cores
    return spark.total_executor_cores


def spark_conf(config: Config) -> dict[str, str]:
    """Spark settings for the ``spark.*`` keys of ``config`` (see the module docstring)."""
    spark = config.spark
    return {
        "spark.master": with_task_retries(spark.master),
        "spark.app.name": f"zoo-serving {config.data.stream}",
        "spark.driver.memory": spark.driver_memory,
        "spark.executor.memory": spark.executor_memory,
        "spark.executor.instances": str(spark.num_executors),
        "spark.executor.cores": str(spark.executor_cores),
        "spark.cores.max": str(spark.total_executor_cores),
        "spark.task.cpus": "1",  # one task slot per core: one worker per core
        "spark.task.maxFailures": str(TASK_MAX_FAILURES),
        "spark.ui.showConsoleProgress": "false",  # a serving stage never ends: no bar
    }


def use_this_python() -> str:
    """Point ``PYSPARK_PYTHON`` / ``PYSPARK_DRIVER_PYTHON`` at the running interpreter unless
    they are set; returns the Python the executors will run.

    A value already set is kept: on a cluster it names the interpreter of the executors'
    machines (which must have zoo_serving installed).
    """
    for var in ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON"):
        current = os.environ.get(var)
        if not current:
            os.environ[var] = sys.executable
        elif current != sys.executable:
            log.info("%s=%s kept (this interpreter is %s)", var, current, sys.executable)
    return os.environ["PYSPARK_PYTHON"]


def spark_session(config: Config, extra_conf: dict[str, str] | None = None) -> Any:
    """The SparkSession the ``spark.*`` keys of ``config`` describe (``getOrCreate``: an
    active session is returned as it is, only runtime SQL settings apply to it).

    Args:
        config: the serving config.
        extra_conf: more Spark settings, e.g. ``{"spark.ui.enabled": "false"}``.

    Example::

        spark = spark_session(load_config("config.yaml"))
    """
    require_pyspark()
    from pyspark.sql import SparkSession

    use_this_python()
    builder = SparkSession.builder
    for key, value in {**spark_conf(config), **(extra_conf or {})}.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    log.info("spark session on %s", session.sparkContext.master)
    return session


def active_session() -> Any:
    """The SparkSession this process already runs (whichever thread made it), or None."""
    require_pyspark()
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    session = SparkSession.getActiveSession()  # this thread's
    if session is None and SparkContext._active_spark_context is not None:
        session = SparkSession.builder.getOrCreate()  # the running context's default session
    return session


# ---------------------------------------------------------------- the model on executors


@dataclass(frozen=True)
class ModelLocation:
    """Where executors find the model: ``path`` as it is (a local master, or a path the
    driver cannot read, taken to be shared), or inside the archive shipped with the job."""

    path: str
    archive: str | None = None  # file name given to SparkContext.addArchive
    inner: str = ""  # the model's path inside the unpacked archive

    def resolve(self) -> str:
        """The model path on this executor (call it inside a task)."""
        if self.archive is None:
            return self.path
        from pyspark import SparkFiles

        return os.path.join(SparkFiles.get(self.archive), self.inner)


_shipped: dict[tuple[str, str, int], ModelLocation] = {}
_ship_lock = threading.Lock()
_ship_dir: Path | None = None


def model_location(sc: Any, path: str) -> ModelLocation:
    """Make ``path`` (a model directory or file) reachable from the executors of ``sc``.

    Local masters read it where it is. Other masters get it shipped: zipped once per
    application and model version, added with ``SparkContext.addArchive`` and unpacked by
    Spark on every executor. A path the driver cannot read is taken to be a shared path
    (NFS, a mounted bucket) that the executors read themselves.
    """
    if is_local(sc.master) or not os.path.exists(path):
        return ModelLocation(path)
    source = Path(path).resolve()
    key = (sc.applicationId, str(source), _mtime_ns(source))
    with _ship_lock:
        location = _shipped.get(key)
        if location is None:
            archive = _zip_model(source)
            sc.addArchive(str(archive))
            inner = "" if source.is_dir() else source.name
            location = ModelLocation(path, archive.name, inner)
            _shipped[key] = location
            log.info("model %s shipped to the executors as %s", source, archive.name)
    return location


def _mtime_ns(source: Path) -> int:
    files = [source] if source.is_file() else [p for p in source.rglob("*") if p.is_file()]
    return max((p.stat().st_mtime_ns for p in files), default=0)


def _zip_model(source: Path) -> Path:
    global _ship_dir
    if _ship_dir is None:
        _ship_dir = Path(tempfile.mkdtemp(prefix="zoo-serving-models-"))
        atexit.register(shutil.rmtree, _ship_dir, True)
    archive = _ship_dir / f"zs-model-{uuid.uuid4().hex[:12]}.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        if source.is_file():
            zf.write(source, source.name)
        else:
            for file in sorted(source.rglob("*")):
                if file.is_file():
                    zf.write(file, file.relative_to(source).as_posix())
    return archive
