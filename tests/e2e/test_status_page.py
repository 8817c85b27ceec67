"""The live status page, in Debian's headless Chromium: the page at ``/`` of the HTTP door
fetches ``/status.json`` and shows the stream's figures; every figure shown is checked
against ``zoo-serve status --json`` and Prometheus's ``/metrics``. And ``zoo-serve dashboard``
serves the same page without the inference routes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from helpers import cli_env, plain_config, status_of
from zoo_serving import InputQueue, keys
from zoo_serving.broker.embedded import free_port
from zoo_serving.errors import ShapeError
from zoo_serving.observe.stats import LATENCY_BUCKETS_MS, bucket_quantile

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (make chromium)"
)


def chromium(url: str, tmp_path: Path, *extra: str) -> str:
    """The page's DOM after its scripts ran for a few (virtual) seconds, as Chromium saw it."""
    assert CHROMIUM is not None
    args = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chrome'}",
        "--virtual-time-budget=4000",
        "--window-size=1200,900",
        *extra,
        url,
    ]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


def shown(dom: str, element: str) -> str:
    found = re.search(rf'id="{element}"[^>]*>([^<]*)<', dom)
    assert found, f"{element} not on the page"
    return found.group(1)


def table(dom: str, body: str) -> list[list[str]]:
    part = re.search(rf'<tbody id="{body}">(.*?)</tbody>', dom, re.DOTALL)
    assert part, f"table {body} not on the page"
    return [re.findall(r"<td>([^<]*)</td>", row) for row in re.findall(r"<tr.*?</tr>", part[1])]


def metrics(url: str) -> tuple[dict[str, int], list[int]]:
    """Failures by code and the latency counts per bucket, summed over workers."""
    from prometheus_client.parser import text_string_to_metric_families

    failures: dict[str, int] = {}
    cumulative: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(url, timeout=10).text):
        for sample in family.samples:
            if sample.name == "zoo_serving_worker_failures_total":
                code = sample.labels["reason"]
                failures[code] = failures.get(code, 0) + int(sample.value)
            if sample.name == "zoo_serving_worker_latency_seconds_bucket":
                le = sample.labels["le"]
                cumulative[le] = cumulative.get(le, 0) + sample.value
    bounds = [f"{b / 1000:g}" for b in LATENCY_BUCKETS_MS] + ["+Inf"]
    running = [int(cumulative.get(b, 0)) for b in bounds]
    return failures, [n - (running[i - 1] if i else 0) for i, n in enumerate(running)]


def test_the_page_shows_what_status_and_prometheus_say(
    serve: Any, onnx_model_dir: Path, redis_url: str, redis_client: Any, stream: str, tmp_path: Path
) -> None:
    http_port, metrics_port = free_port(), free_port()
    server = serve(
        onnx_model_dir,
        **{"http.port": http_port, "http.model_name": "cnn", "log.metrics_port": metrics_port},
    )
    plain_config(
        tmp_path / "cli", {"path": str(onnx_model_dir)}, {"src": redis_url, "stream": stream}
    )
    xs = np.random.default_rng(5).normal(0, 50, (40, 3, 32, 32)).astype(np.float32)
    with InputQueue(url=redis_url, name=stream) as q:
        q.predict(list(xs), timeout=30)
        for _ in range(3):
            with pytest.raises(ShapeError):
                q.predict(np.zeros((3, 16, 16), np.float32), timeout=30)
    redis_client.xadd(keys.dead_letter(stream), {"zs_reason": "seeded by the test"})
    time.sleep(2.5)  # the workers beat, the page's board samples

    dom = chromium(f"{server.http.url}/", tmp_path, "--dump-dom")
    code, status = status_of(tmp_path / "cli")
    failures, latency = metrics(f"http://127.0.0.1:{metrics_port}/metrics")

    assert shown(dom, "ready") == "ready" and status["ready"]
    assert shown(dom, "model") == "cnn" and shown(dom, "stream") == stream
    assert int(shown(dom, "fig-served")) == status["served"] == 43
    assert int(shown(dom, "fig-queued")) == status["queued"] == 0
    assert int(shown(dom, "fig-lag")) == status["lag"]
    assert int(shown(dom, "fig-pending")) == status["pending"]
    assert int(shown(dom, "fig-dead")) == status["dead_letter"] == 1
    # records/s over the last minute, as status computes it, at the moment the page sampled
    sampled = float(re.search(r'<body data-sampled="([0-9.]+)"', dom)[1])  # type: ignore[index]
    at_sample = sum(
        w["served_1m"] / min(60.0, max(1.0, sampled - w["started"])) for w in status["workers"]
    )
    assert float(shown(dom, "fig-rate-1m")) == pytest.approx(at_sample, abs=0.01)
    workers = table(dom, "workers")
    assert int(shown(dom, "fig-workers")) == len(workers) == len(status["workers"])
    expected = sorted(
        [w["name"], w["host"], str(w["pid"]), w["runner"], str(w["succeeded"]), str(w["failed"])]
        for w in status["workers"]
    )
    assert sorted([*row[:4], *row[5:]] for row in workers) == expected
    assert {code: int(n) for code, n in table(dom, "failures")} == failures == {"bad_shape": 3}
    # every record answered was counted in the same buckets Prometheus shows: the page's
    # p50 / p99 are the same quantiles of the same counts
    assert sum(latency) == 43
    assert float(shown(dom, "fig-p50")) == pytest.approx(bucket_quantile(0.5, latency), abs=0.006)
    assert float(shown(dom, "fig-p99")) == pytest.approx(bucket_quantile(0.99, latency), abs=0.006)
    assert re.search(r'<svg id="plot-rate"[^>]*>.*?<polyline', dom, re.DOTALL)

    shot = tmp_path / "status.png"
    chromium(f"{server.http.url}/", tmp_path, f"--screenshot={shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    assert code == 0


def test_dashboard_serves_the_page_alone(
    serve: Any, onnx_model_dir: Path, redis_url: str, stream: str, tmp_path: Path
) -> None:
    serve(onnx_model_dir)
    config = plain_config(
        tmp_path, {"path": str(onnx_model_dir)}, {"src": redis_url, "stream": stream}
    )
    port = free_port()
    out = (tmp_path / "dashboard.out").open("w")
    board = subprocess.Popen(
        [sys.executable, "-m", "zoo_serving", "dashboard", "-c", str(config), "--port", str(port)],
        cwd=tmp_path,
        env=cli_env(),
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                figures = httpx.get(f"{url}/status.json", timeout=5).json()
                if figures.get("workers"):
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and board.poll() is None, "dashboard never up"
            time.sleep(0.2)
        assert figures["ready"] and figures["stream"] == stream
        assert len(figures["workers"]) == 1
        assert httpx.get(f"{url}/v2/health/live", timeout=5).status_code == 404  # no inference
        dom = chromium(f"{url}/", tmp_path, "--dump-dom")
        assert shown(dom, "ready") == "ready"
        assert json.loads(json.dumps(figures))["model"] == shown(dom, "model")
    finally:
        board.terminate()
        board.wait(10)
        out.close()
    assert "status of stream" in (tmp_path / "dashboard.out").read_text()
