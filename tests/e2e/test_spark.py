"""The spark runner and the DataFrame API on real Spark, loopback only.

One local[2] SparkSession serves the module (the runner finds it active and uses it); the last
test stops it and serves through a standalone master and worker started here with pyspark's
own ``spark-class`` on 127.0.0.1, on a session the runner builds from the ``spark.*`` keys.
Answers are compared with ONNX Runtime's own output for the same input.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import jpeg
from helpers import (
    HANG,
    NOT_A_JPEG,
    assert_observed,
    assert_top_n,
    build_sentinel_model,
    decoded_image,
    onnx_direct,
    scrape_when,
    sentinel_direct,
    summary_scalars,
)
from zoo_serving import InputQueue, OutputQueue, keys, load_config
from zoo_serving.broker.embedded import free_port
from zoo_serving.errors import BatchTimeoutError, ConfigError, DecodeError, ModelNotFoundError
from zoo_serving.runners.spark import SparkRunner, serve_on
from zoo_serving.spark.dataframe import predict_df
from zoo_serving.spark.session import spark_session

pytestmark = [
    pytest.mark.timeout(300),
    # PySpark 4.3 warns about pandas 3 on every pandas conversion
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
]

N = 2000
DISTINCT = 40  # distinct tensors, cycled through the records
TOP_N = 3
LOOPBACK = "127.0.0.1"


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    """The module's local[2] SparkSession: driver and Python workers on loopback, no UI."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPARK_LOCAL_IP", LOOPBACK)  # read once, by the JVM this starts
        config = load_config({"model": {"path": "unused"}, "spark": {"master": "local[2]"}})
        session = spark_session(config, {"spark.ui.enabled": "false"})
        yield session
        session.stop()


@pytest.fixture(scope="module")
def xs() -> np.ndarray:
    return np.random.default_rng(17).normal(0, 50, (DISTINCT, 3, 32, 32)).astype(np.float32)


@pytest.fixture(scope="module")
def direct(onnx_model_dir: Path, xs: np.ndarray) -> np.ndarray:
    return onnx_direct(onnx_model_dir, xs)


def raw_config(model_dir: Path, redis_url: str, stream: str, **sections: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "model": {"path": str(model_dir)},
        "data": {"src": redis_url, "stream": stream, "shape": "3,32,32"},
        "params": {"batch_size": 8, "top_n": TOP_N, "claim_idle_ms": 1000},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return raw


def send_and_check(
    redis_url: str,
    redis_client: Any,
    stream: str,
    n: int,
    xs: np.ndarray,
    direct: np.ndarray,
    bad: int = 0,
) -> None:
    """Enqueue ``n`` records, wait for all; one result each, equal to ONNX Runtime's. Then
    ``bad`` records bad-0... that fail decoding, each answered with a DecodeError."""
    with InputQueue(url=redis_url, name=stream) as client:
        client.enqueue_many((f"r{i}", {"t": xs[i % DISTINCT]}) for i in range(n))
        with OutputQueue(url=redis_url, name=stream) as output:
            results = output.query_many([f"r{i}" for i in range(n)], timeout=120)
            assert_answered_once(redis_client, stream, results, n, direct)
            client.enqueue_many((f"bad-{i}", {"t": NOT_A_JPEG}) for i in range(bad))
            failed = output.query_many([f"bad-{i}" for i in range(bad)], timeout=60)
    assert all(isinstance(failed[f"bad-{i}"], DecodeError) for i in range(bad)), failed


def keep_sending(redis_url: str, stream: str, xs: np.ndarray, done: threading.Event) -> None:
    """Enqueue records more-0... in hundreds until ``done`` is set."""
    with InputQueue(url=redis_url, name=stream) as client:
        for first in itertools.count(0, 100):
            if done.is_set():
                return
            client.enqueue_many(
                (f"more-{i}", {"t": xs[i % DISTINCT]}) for i in range(first, first + 100)
            )


def assert_answered_once(
    redis_client: Any, stream: str, results: dict[str, Any], n: int, direct: np.ndarray
) -> None:
    assert len(results) == n  # none lost
    finished = Counter(redis_client.lrange(keys.finished(stream), 0, -1))
    assert len(finished) == n and set(finished.values()) == {1}  # one result each, never two
    for i in range(n):
        assert_top_n(results[f"r{i}"], direct[i % DISTINCT], TOP_N)
    assert redis_client.xlen(stream) == 0
    assert redis_client.xpending(stream, "serving")["pending"] == 0


def beats(redis_client: Any, stream: str) -> dict[str, dict[str, Any]]:
    raw = redis_client.hgetall(keys.workers(stream))
    return {name.decode(): json.loads(beat) for name, beat in raw.items()}


# ------------------------------------------------------------------ runner on local[2]


def test_local_runner_serves_each_record_once(
    spark, serve, onnx_model_dir, redis_url, redis_client, stream, xs, direct, tmp_path
) -> None:
    """... and its workers feed the server's /metrics (unlabelled series, workers), the
    TensorBoard scalars and the error log, as in-process workers do."""
    port = free_port()
    server = serve(
        onnx_model_dir,
        **{
            "params.runner": "spark",
            "spark.master": "local[2]",
            "params.batch_size": 8,
            "log.metrics_port": port,
            "log.summary": "y",
        },
    )
    runner = server.runner
    assert isinstance(runner, SparkRunner) and runner.workers == 2
    live = beats(redis_client, stream)
    assert len(live) == 2 and {b["runner"] for b in live.values()} == {"spark"}
    pids = {b["pid"] for b in live.values()}
    assert len(pids) == 2 and os.getpid() not in pids  # Spark's Python workers, not this one

    send_and_check(redis_url, redis_client, stream, N, xs, direct, bad=3)
    bad = {f"bad-{i}": DecodeError.code for i in range(3)}
    sample = scrape_when(server.metrics.metrics_url, N, {DecodeError.code: len(bad)}, workers=2)

    # stopped under load: what the tasks drained after their last beat reaches the summary
    # through the counts they return
    sending = threading.Event()
    sender = threading.Thread(target=keep_sending, args=(redis_url, stream, xs, sending))
    sender.start()
    try:
        deadline = time.monotonic() + 60
        while redis_client.llen(keys.finished(stream)) < N + len(bad) + 300:
            assert time.monotonic() < deadline, "the second load did not start"
            time.sleep(0.01)
        server.stop()
    finally:
        sending.set()
        sender.join()
    answered = redis_client.llen(keys.finished(stream))
    assert not runner.alive  # the stop request ended the tasks, and so the job
    assert sum(r["succeeded"] for r in runner.results) == answered - len(bad)
    assert beats(redis_client, stream) == {}
    assert spark.range(3).count() == 3  # the session the runner found keeps running
    work = tmp_path / "work"
    error_log = (work / "error.log").read_text()
    scalars = summary_scalars(work)
    assert_observed(sample, scalars, error_log, N, bad, workers=2, answered=answered)
    for pid in pids:  # each task's Python worker wrote its own lines
        assert f"[{pid}] zoo_serving." in error_log, pid


def test_tasks_serve_a_redis_cluster_with_3_partitions(
    spark, onnx_model_dir, redis_cluster, stream, xs, direct
) -> None:
    """The Spark runner's tasks on a Redis Cluster, the stream split in 3 partitions: every
    record answered once with ONNX Runtime's answer, spread over the partitions."""
    from zoo_serving.broker.connection import connect
    from zoo_serving.config import DataConfig

    data = {"src": redis_cluster.url, "partitions": 3}
    n = 600
    runner = serve_on(spark, raw_config(onnx_model_dir, redis_cluster.url, stream, data=data))
    db = connect(DataConfig(src=redis_cluster.url))
    try:
        with InputQueue(config={"data": data}, name=stream) as client:
            client.enqueue_many((f"r{i}", {"t": xs[i % DISTINCT]}) for i in range(n))
        with OutputQueue(config={"data": data}, name=stream) as output:
            results = output.query_many([f"r{i}" for i in range(n)], timeout=120)
        assert len(results) == n  # none lost
        parts = keys.partition_streams(stream, 3)
        finished = Counter(u for p in parts for u in db.lrange(keys.finished(p), 0, -1))
        assert len(finished) == n and set(finished.values()) == {1}  # one result each
        assert all(db.llen(keys.finished(p)) > n / 3 / 2 for p in parts)  # spread over all
        for i in range(n):
            assert_top_n(results[f"r{i}"], direct[i % DISTINCT], TOP_N)
        assert sum(db.xpending(p, "serving")["pending"] for p in parts) == 0
    finally:
        runner.stop()
        db.close()


def test_killed_worker_task_loses_nothing(
    spark, onnx_model_dir, redis_url, redis_client, stream, xs, direct
) -> None:
    n = 10_000
    runner = serve_on(spark, raw_config(onnx_model_dir, redis_url, stream))
    try:
        assert runner.workers == 2
        with InputQueue(url=redis_url, name=stream) as client:
            client.enqueue_many((f"r{i}", {"t": xs[i % DISTINCT]}) for i in range(n))
        deadline = time.monotonic() + 60
        while redis_client.llen(keys.finished(stream)) < n // 5:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        name, victim = sorted(beats(redis_client, stream).items())[0]
        os.kill(victim["pid"], signal.SIGKILL)  # the Python worker running that Spark task
        killed_at = redis_client.llen(keys.finished(stream))
        assert killed_at < n, "the load finished before the kill; make it longer"
        with OutputQueue(url=redis_url, name=stream) as output:
            results = output.query_many([f"r{i}" for i in range(n)], timeout=120)
        assert_answered_once(redis_client, stream, results, n, direct)

        # Spark retried the task: its partition serves again, from another process
        partition = name.rsplit("-", 1)[1]
        deadline = time.monotonic() + 60
        while not any(
            other.endswith(f"-{partition}") and beat["pid"] != victim["pid"] and beat["ready"]
            for other, beat in beats(redis_client, stream).items()
        ):
            assert time.monotonic() < deadline, "the killed task was not retried"
            time.sleep(0.1)
    finally:
        runner.stop()
    assert not runner.alive and len(runner.results) == 2
    assert beats(redis_client, stream) == {}  # the dead worker's beat too


def test_a_task_stuck_on_a_hanging_record_is_retried_and_the_record_isolated(
    spark, tmp_path, redis_url, redis_client, stream
) -> None:
    # a real TorchScript model that spins for good on a HANG record: only ending its Python
    # worker stops it
    model_dir = build_sentinel_model(tmp_path / "hang" / "m.pt", hang_iters=2**62).parent
    xs = np.random.default_rng(51).normal(0, 50, (4, 3, 32, 32)).astype(np.float32)
    xs[2, 0, 0, 0] = HANG
    params = {"batch_timeout_s": 1.0, "claim_idle_ms": 500, "batch_size": 4, "threads": 1}
    runner = serve_on(spark, raw_config(model_dir, redis_url, stream, params=params))
    try:
        pids = {b["pid"] for b in beats(redis_client, stream).values()}
        with InputQueue(url=redis_url, name=stream) as client:
            client.enqueue_many((f"h{i}", {"t": xs[i]}) for i in range(4))
        with OutputQueue(url=redis_url, name=stream) as output:
            results = output.query_many([f"h{i}" for i in range(4)], timeout=180)
        assert isinstance(results.pop("h2"), BatchTimeoutError)
        direct = sentinel_direct(model_dir, np.delete(xs, 2, axis=0))
        for j, i in enumerate((0, 1, 3)):
            assert_top_n(results[f"h{i}"], direct[j], TOP_N)
        # the stuck task failed and Spark retried it: two ready workers, one in a new process
        deadline = time.monotonic() + 120
        while True:
            live = [b for b in beats(redis_client, stream).values() if b["ready"]]
            if len(live) == 2 and {b["pid"] for b in live} != pids:
                break
            assert time.monotonic() < deadline, "the stuck task was not retried"
            time.sleep(0.2)
    finally:
        runner.stop()
    assert not runner.alive


def test_start_errors_reach_the_caller(
    spark, onnx_model_dir, redis_url, redis_client, stream, tmp_path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelNotFoundError, match="no model found"):  # raised in the tasks
        serve_on(spark, raw_config(empty, redis_url, stream), timeout_s=120)
    assert beats(redis_client, stream) == {}
    too_many = raw_config(onnx_model_dir, redis_url, stream, params={"workers": 3})
    with pytest.raises(ConfigError, match=r"params\.workers: 3 workers need 3 task slots"):
        serve_on(spark, too_many)
    assert spark.range(3).count() == 3  # the session is still there for the next one


# ------------------------------------------------------------------ DataFrame API


def tensor_rows(spark: Any, n: int) -> Any:
    """``n`` rows (id, x array<float> of 3*32*32), built by Spark itself on the executors with
    arithmetic that numpy repeats exactly (:func:`tensor_values`)."""
    from pyspark.sql import functions as F

    def value(k: Any) -> Any:
        mixed = F.col("id") * 7919 + k * 104729 + F.col("id") * k * 31
        return (mixed % 4001 - 2000) / 40.0

    size = 3 * 32 * 32
    return (
        spark.range(0, n, 1, 2)
        .select(
            "id", F.transform(F.sequence(F.lit(0), F.lit(size - 1)), value).cast("array<float>")
        )
        .toDF("id", "x")
    )


def tensor_values(ids: np.ndarray) -> np.ndarray:
    k = np.arange(3 * 32 * 32, dtype=np.int64)[None, :]
    i = ids.astype(np.int64)[:, None]
    mixed = i * 7919 + k * 104729 + i * k * 31
    return ((mixed % 4001 - 2000) / 40.0).astype(np.float32).reshape(-1, 3, 32, 32)


def test_dataframe_of_10000_tensor_rows_matches_onnx(spark, onnx_model_dir) -> None:
    n = 10_000
    config = {"model": {"path": str(onnx_model_dir)}, "params": {"batch_size": 16, "top_n": 5}}
    scored = predict_df(tensor_rows(spark, n), "x", config, keep_input=False)
    assert scored.columns == ["id", "prediction", "error"]
    rows = scored.collect()
    assert sorted(r.id for r in rows) == list(range(n))
    direct = onnx_direct(onnx_model_dir, tensor_values(np.arange(n)))
    for row in rows:
        assert row.error is None
        assert_top_n(json.loads(row.prediction), direct[row.id], 5)


def test_dataframe_images_bad_rows_and_tensors(spark, onnx_model_dir, xs, direct) -> None:
    images = [jpeg(seed) for seed in range(6)]
    data: list[tuple[int, Any]] = [(i, bytearray(b)) for i, b in enumerate(images)]
    data += [(6, bytearray(b"no image")), (7, None)]
    df = spark.createDataFrame(data, "id long, img binary")
    config = {"model": {"path": str(onnx_model_dir)}, "params": {"top_n": 3}}
    rows = {r.id: r for r in predict_df(df, "img", config, output_col="top").collect()}
    direct_img = onnx_direct(onnx_model_dir, np.stack([decoded_image(b) for b in images]))
    for i in range(6):
        assert rows[i].error is None
        assert_top_n(json.loads(rows[i].top), direct_img[i], 3)
    assert rows[6].top is None and rows[6].error.startswith("decode: ")
    assert rows[7].top is None and rows[7].error.startswith("missing_input: ")

    # top_n 0: the output tensor; a row of the wrong size fails alone
    data = [(i, xs[i].ravel().tolist()) for i in range(5)] + [(5, [1.0, 2.0])]
    df = spark.createDataFrame(data, "id long, x array<double>")
    tensor_config = {**config, "params": {"top_n": 0}}
    rows = {r.id: r for r in predict_df(df, "x", tensor_config).collect()}
    for i in range(5):
        assert rows[i].error is None
        np.testing.assert_allclose(rows[i].prediction, direct[i], rtol=0, atol=1e-5)
    assert rows[5].prediction is None and rows[5].error.startswith("bad_shape: ")


# ------------------------------------------------------------------ standalone cluster


@pytest.fixture
def standalone(tmp_path: Path, spark: Any) -> Iterator[tuple[str, Path]]:
    """A standalone master and one worker (2 cores) on 127.0.0.1, started with pyspark's own
    ``spark-class``: (master URL, the worker's work dir). Stops the module's local session
    first: a process has one SparkContext at a time."""
    import pyspark

    spark.stop()
    home = Path(pyspark.__file__).parent
    spark_class = str(home / "bin" / "spark-class")
    env = dict(os.environ, SPARK_HOME=str(home), SPARK_LOCAL_IP=LOOPBACK)
    port = free_port()
    url = f"spark://{LOOPBACK}:{port}"
    work = tmp_path / "spark-work"
    commands = {
        "master": [
            spark_class,
            "org.apache.spark.deploy.master.Master",
            *("--host", LOOPBACK, "--port", str(port), "--webui-port", str(free_port())),
        ],
        "worker": [
            spark_class,
            "org.apache.spark.deploy.worker.Worker",
            url,
            *("--host", LOOPBACK, "--cores", "2", "--memory", "2g"),
            *("--webui-port", str(free_port()), "--work-dir", str(work)),
        ],
    }
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name, command in commands.items():
            with open(tmp_path / f"{name}.log", "wb") as out:
                procs.append(
                    subprocess.Popen(
                        command,
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        deadline = time.monotonic() + 90
        while b"Successfully registered with master" not in (tmp_path / "worker.log").read_bytes():
            assert all(p.poll() is None for p in procs), "a spark-class process exited"
            assert time.monotonic() < deadline, "the standalone worker did not register"
            time.sleep(0.2)
        yield url, work
    finally:
        for proc in reversed(procs):  # the worker first: it ends its executors
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def test_standalone_cluster_serves_each_record_once(
    standalone, serve, onnx_model_dir, redis_url, redis_client, stream, xs, direct
) -> None:
    url, work = standalone
    server = serve(
        onnx_model_dir,
        **{
            "params.runner": "spark",
            "params.batch_size": 8,
            "spark.master": url,
            "spark.executor_cores": 2,
            "spark.total_executor_cores": 2,
            "spark.executor_memory": "1g",
        },
    )
    runner = server.runner
    assert isinstance(runner, SparkRunner) and runner.workers == 2
    send_and_check(redis_url, redis_client, stream, N, xs, direct)
    server.stop()
    assert not runner.alive and sum(r["succeeded"] for r in runner.results) == N
    # the executors loaded the model shipped with the job, not the driver's directory
    logs = "".join(p.read_text(errors="replace") for p in work.rglob("stderr"))
    assert "zs-model-" in logs and "ready: onnx model" in logs


def test_a_swap_under_load_with_a_task_killed_loses_nothing(
    spark, tmp_path, redis_url, redis_client, stream
) -> None:
    import os
    import signal

    from helpers import SwapUnderLoad
    from zoo_serving import Server

    swap = SwapUnderLoad(tmp_path / "models", redis_url, stream)
    raw = swap.config(tmp_path / "work", "spark")

    def kill() -> None:  # the Python worker of one task: Spark retries the task
        pid = next(iter(beats(redis_client, stream).values()))["pid"]
        os.kill(pid, signal.SIGKILL)

    with Server(raw) as server:  # on the module's SparkSession, the active one
        swap.run(server, kill, timeout_s=120)
    swap.check(redis_client)
