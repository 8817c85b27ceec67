"""What the server shows of itself: TensorBoard event files, Prometheus /metrics, the error log."""

from __future__ import annotations

import itertools
import json
import math
import socket
import threading
import time

import numpy as np
import pytest
import redis as redis_lib
import yaml

from conftest import jpeg
from helpers import assert_observed, scrape, scrape_when, summary_scalars
from zoo_serving import InputQueue, Server, keys
from zoo_serving.broker.embedded import ManagedRedis, free_port
from zoo_serving.cli import main as zoo_serve
from zoo_serving.errors import DecodeError, ServerError, ShapeError
from zoo_serving.observe.metrics import SUMMARY_TAGS
from zoo_serving.observe.stats import STAGES

GOOD = 1200


def records() -> list[tuple[str, dict, str | None]]:
    """(uri, inputs, expected failure code): good records with bad ones spread among them."""
    out: list[tuple[str, dict, str | None]] = []
    x = np.random.default_rng(0).normal(0, 50, (3, 32, 32)).astype(np.float32)
    for i in range(GOOD):
        out.append((f"ok-{i}", {"input": jpeg(i % 5) if i % 2 else x}, None))
        if i % 150 == 3:
            out.append((f"bad-image-{i}", {"input": b"\xff\xd8 not a jpeg"}, DecodeError.code))
        if i % 200 == 11:
            out.append((f"bad-shape-{i}", {"input": np.zeros((3, 8, 8), np.float32)}, "bad_shape"))
    return out


def answered(sample: dict[str, dict[tuple, float]]) -> float:
    ok = sum(sample.get("zoo_serving_records_succeeded_total", {}).values())
    return ok + sum(sample.get("zoo_serving_records_failed_total", {}).values())


def test_summary_metrics_and_error_log_account_for_every_record(
    serve, onnx_model_dir, client, output, tmp_path
) -> None:
    sent = records()
    n = len(sent)
    bad_image = sum(code == "decode" for _, _, code in sent)
    bad_shape = sum(code == ShapeError.code for _, _, code in sent)
    assert bad_image and bad_shape and n == GOOD + bad_image + bad_shape
    port = free_port()
    server = serve(
        onnx_model_dir,
        **{"log.summary": "y", "log.metrics_port": port, "params.batch_size": 8},
    )
    url = server.metrics.metrics_url
    assert url == f"http://127.0.0.1:{port}/metrics"

    def send() -> None:  # in chunks, so the scrapes below happen under load
        for start in range(0, n, 25):
            client.enqueue_many((u, inputs) for u, inputs, _ in sent[start : start + 25])
            time.sleep(0.02)

    sender = threading.Thread(target=send)
    sender.start()
    seen, deadline = [], time.monotonic() + 30
    while not seen or seen[-1] < n:
        assert time.monotonic() < deadline, f"counted {seen[-1:]} of {n}"
        seen.append(answered(scrape(url)))
        time.sleep(0.02)
    sender.join()
    assert seen == sorted(seen) and seen[-1] == n  # counters only grow, and stop at what was sent
    assert sum(0 < s < n for s in seen) >= 3, f"too few scrapes under load: {seen}"

    results = output.query_many([u for u, _, _ in sent], timeout=30)
    for uri, _, code in sent:
        assert (code is None) == (not isinstance(results[uri], Exception)), uri
    final = scrape(url)
    assert final["zoo_serving_records_succeeded_total"][()] == GOOD
    assert final["zoo_serving_records_failed_total"] == {
        (("reason", "decode"),): bad_image,
        (("reason", "bad_shape"),): bad_shape,
    }
    for stage in STAGES:
        assert final["zoo_serving_stage_seconds_count"][(("stage", stage),)] > 0, stage
    batches = final["zoo_serving_batch_size_count"][()]
    assert GOOD / batches > 2, f"{GOOD} records in {batches} batches: not batched"
    assert final["zoo_serving_batch_size_sum"][()] == GOOD  # bad records fail before batching
    assert final["zoo_serving_workers"][()] == 1
    gauges = ("zoo_serving_stream_lag", "zoo_serving_pending", "zoo_serving_dead_letter")
    deadline = time.monotonic() + 5  # the monitor refreshes them once a second
    while any((now := scrape(url))[name][()] != 0 for name in gauges):
        assert time.monotonic() < deadline, {name: now[name] for name in gauges}
        time.sleep(0.1)

    summary_dir = server.metrics.summary_dir
    server.stop()
    assert summary_dir is not None and summary_dir.parent == tmp_path / "work" / "summary"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(summary_dir), size_guidance={"scalars": 0})
    events.Reload()
    assert set(SUMMARY_TAGS) <= set(events.Tags()["scalars"])
    total = [e.value for e in events.Scalars("Total Records Number")]
    assert total == sorted(total) and total[-1] == n
    assert {e.value for e in events.Scalars("Partition Number")} >= {1.0}
    assert all(e.value > 0 for e in events.Scalars("Throughput"))
    assert all(e.value > 0 for e in events.Scalars("Micro Batch Throughput"))

    error_log = (tmp_path / "work" / "error.log").read_text()
    for uri, _, code in sent:
        if code is not None:
            assert f"record failed uri={uri} code={code}: " in error_log, uri
    assert error_log.count("record failed") == bad_image + bad_shape


def test_worker_processes_feed_the_same_metrics_summary_and_error_log(
    serve, onnx_model_dir, client, output, tmp_path, redis_url, redis_client, stream
) -> None:
    """Workers in other processes (processes runner) count as in-process ones do: the
    unlabelled series, workers and TensorBoard scalars from their heartbeats and final counts,
    the error log from their own handlers; and per worker, from their heartbeats, records by
    outcome, failures by reason and the stage split."""
    sent = records()[:300]
    good = sum(code is None for _, _, code in sent)
    bad = {uri: code for uri, _, code in sent if code}
    failed = {code: sum(c == code for c in bad.values()) for code in bad.values()}
    port = free_port()
    server = serve(
        onnx_model_dir,
        **{
            "log.metrics_port": port,
            "log.summary": "y",
            "params.runner": "processes",
            "params.workers": 2,
            "params.batch_size": 8,
        },
    )
    client.enqueue_many((u, inputs) for u, inputs, _ in sent)
    results = output.query_many([u for u, _, _ in sent], timeout=60)
    assert len(results) == len(sent)
    now = scrape_when(server.metrics.metrics_url, good, failed, workers=2)
    per_worker = now["zoo_serving_worker_records_total"]
    ok = sum(v for k, v in per_worker.items() if ("outcome", "succeeded") in k)
    assert ok == good, per_worker
    assert len({dict(k)["worker"] for k in per_worker}) == 2  # both processes reported
    bad_count = sum(v for k, v in per_worker.items() if ("outcome", "failed") in k)
    assert bad_count == len(bad)
    reasons: dict[str, float] = {}
    for k, v in now["zoo_serving_worker_failures_total"].items():
        reasons[dict(k)["reason"]] = reasons.get(dict(k)["reason"], 0) + v
    assert reasons == failed
    assert sum(now["zoo_serving_worker_timed_records_total"].values()) == good
    for stage in STAGES:
        seconds = sum(
            v
            for k, v in now["zoo_serving_worker_stage_seconds_total"].items()
            if ("stage", stage) in k
        )
        assert seconds > 0, stage

    # stopped under load: what the workers answered after their last beat (they beat every
    # second, and not while draining) reaches the summary through their final counts
    stop_sending = threading.Event()

    def send_more() -> None:
        x = np.zeros((3, 32, 32), np.float32)
        with InputQueue(url=redis_url, name=stream) as more:
            for first in itertools.count(0, 100):
                if stop_sending.is_set():
                    return
                more.enqueue_many((f"more-{i}", {"input": x}) for i in range(first, first + 100))

    sender = threading.Thread(target=send_more)
    sender.start()
    try:
        deadline = time.monotonic() + 30
        while redis_client.llen(keys.finished(stream)) < len(sent) + 500:
            assert time.monotonic() < deadline, "the second load did not start"
            time.sleep(0.01)
        server.stop()
    finally:
        stop_sending.set()
        sender.join()
    answered = redis_client.llen(keys.finished(stream))
    work = tmp_path / "work"
    error_log = (work / "error.log").read_text()
    scalars = summary_scalars(work)
    assert_observed(now, scalars, error_log, good, bad, workers=2, answered=answered)
    assert error_log.count("worker-0[") and error_log.count("worker-1[")  # each process wrote
    assert scalars["Partition Number"][-1] == 0  # and both stopped


def test_error_log_has_the_server_events(onnx_model_dir, tmp_path) -> None:
    """Start, model loaded, a lost worker, a Redis outage and its recovery, stop."""
    port = free_port()
    redis_server = ManagedRedis(tmp_path / "redis", port).start()
    config = {
        "model": {"path": str(onnx_model_dir)},
        "data": {"src": redis_server.url, "stream": "events", "shape": "3,32,32"},
        "log": {"dir": str(tmp_path / "work")},
    }
    log_path = tmp_path / "work" / "error.log"

    def wait_for(text: str) -> None:
        deadline = time.monotonic() + 15
        while text not in log_path.read_text():
            assert time.monotonic() < deadline, f"{text!r} not in the error log"
            time.sleep(0.05)

    server = Server(config).start()
    try:
        probe = redis_lib.Redis.from_url(redis_server.url)
        ghost = {"host": "elsewhere", "pid": 4242, "ready": True, "ts": time.time() - 60}
        probe.hset(keys.workers("events"), "ghost-1", json.dumps(ghost))
        probe.close()
        wait_for("worker ghost-1 (host elsewhere pid 4242) lost: no heartbeat")
        redis_server.stop()
        wait_for("read from events failed")
        redis_server = ManagedRedis(tmp_path / "redis", port).start()
        wait_for("read from events recovered")
        with InputQueue(url=redis_server.url, name="events") as client:
            assert client.predict(np.zeros((3, 32, 32), np.float32), timeout=30)
    finally:
        server.stop()
        redis_server.stop()
    text = log_path.read_text()
    for event in ("starting 1 threads worker(s)", "ready: onnx model", "server stopped"):
        assert event in text, event
    # each line as docs/observability.md shows it, logger name first
    for line in (
        "zoo_serving.server: starting 1 threads worker(s)",
        "zoo_serving.worker: worker ",
        "zoo_serving.metrics: worker ghost-1 (host elsewhere pid 4242) lost",
        "zoo_serving.worker: read from events failed",
        "zoo_serving.worker: read from events recovered",
        "zoo_serving.server: server stopped",
    ):
        assert line in text, line


def test_a_metrics_port_in_use_is_a_clear_error(serve, onnx_model_dir) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ServerError, match=f"log.metrics_port: cannot serve .*:{port}"):
            serve(onnx_model_dir, **{"log.metrics_port": port})


def test_a_failing_heartbeat_is_a_warning_once_and_its_recovery_is_logged(
    serve, onnx_model_dir, redis_client, stream, tmp_path
) -> None:
    """The workers hash turned into a string: every beat fails with WRONGTYPE, which the error
    log says once, not every second; once it is a hash again, it says the beats recovered."""
    serve(onnx_model_dir)
    log_path = tmp_path / "work" / "error.log"
    workers = keys.workers(stream)
    failing = f"heartbeat on {workers} failed: ResponseError: WRONGTYPE"

    def wait_for(text: str) -> None:
        deadline = time.monotonic() + 15
        while text not in log_path.read_text():
            assert time.monotonic() < deadline, f"{text!r} not in the error log"
            time.sleep(0.05)

    redis_client.set(workers, "not a hash")
    wait_for(failing)
    time.sleep(3.5)  # three more beats fail
    redis_client.delete(workers)
    wait_for("heartbeat recovered")
    text = log_path.read_text()
    assert text.count(failing) == 1, text
    assert "WARNING zoo_serving.worker: worker " in text.split(failing)[0].splitlines()[-1]
    assert text.count("heartbeat recovered") == 1


def test_stream_counts_redis_refuses_are_shown_not_zeros(
    serve, onnx_model_dir, redis_url, redis_client, stream, tmp_path, capsys
) -> None:
    """The dead-letter key taken by a string (WRONGTYPE) and a user that may not run XINFO
    (NOPERM): status shows Redis' error where the counts go, in text and JSON, and the
    Prometheus stream gauges say NaN, not 0, with one warning in the error log."""
    port = free_port()
    server = serve(onnx_model_dir, **{"log.metrics_port": port})
    dead = keys.dead_letter(stream)
    redis_client.set(dead, "not a stream")
    raw = {
        "model": {"path": str(onnx_model_dir)},
        "data": {"src": redis_url, "stream": stream, "shape": "3,32,32"},
        "log": {"dir": str(tmp_path / "work")},
    }
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(raw))

    def status(*extra: str) -> tuple[int, str]:
        capsys.readouterr()
        code = zoo_serve(["status", *extra, "-c", str(config_path)])
        return code, capsys.readouterr().out

    code, out = status("--json")
    answer = json.loads(out)
    assert code == 0 and answer["ready"]  # the workers serve; only a count is refused
    assert f"XLEN {dead}: WRONGTYPE" in answer["stream_error"], answer
    assert "dead_letter" not in answer and "queued" not in answer
    code, out = status()
    assert f"stream counts: counting stream {stream} failed: XLEN {dead}: WRONGTYPE" in out
    assert "dead letters: 0" not in out

    deadline = time.monotonic() + 10  # the monitor refreshes the gauges once a second
    while not math.isnan(scrape(server.metrics.metrics_url)["zoo_serving_dead_letter"][()]):
        assert time.monotonic() < deadline, "the dead-letter gauge never said NaN"
        time.sleep(0.1)
    time.sleep(2.5)  # more refreshes, still refused
    redis_client.delete(dead)
    while scrape(server.metrics.metrics_url)["zoo_serving_dead_letter"][()] != 0:
        assert time.monotonic() < deadline + 10, "the dead-letter gauge did not come back"
        time.sleep(0.1)
    error_log = (tmp_path / "work" / "error.log").read_text()
    assert error_log.count(f"WARNING zoo_serving.metrics: counting stream {stream} failed") == 1
    assert f"counting stream {stream} recovered" in error_log

    user = f"no-xinfo-{stream}"
    redis_client.acl_setuser(
        user, enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-xinfo"]
    )
    try:
        raw["data"].update({"username": user, "password": "pw"})
        config_path.write_text(yaml.safe_dump(raw))
        code, out = status("--json")
    finally:
        redis_client.acl_deluser(user)
    error = json.loads(out)["stream_error"]
    assert f"XINFO GROUPS {stream}: NOPERM" in error and "ACL SETUSER" in error, error
