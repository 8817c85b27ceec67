"""``zoo-serve bench`` and its Python API against a real redis-server and a real ONNX model."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from conftest import env_without_coverage, jpeg
from helpers import assert_top_n, onnx_direct
from zoo_serving import cli
from zoo_serving.bench import LoadPoint, closed_loop, open_loop
from zoo_serving.bench.inputs import image_inputs, npy_inputs, random_inputs
from zoo_serving.bench.server import STAGES, stage_split
from zoo_serving.broker.embedded import free_port
from zoo_serving.errors import ConfigError, ServerError

SHAPE = (3, 32, 32)


def records(count: int, seed: int = 7) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"input": rng.random(SHAPE, dtype=np.float32) * 255} for _ in range(count)]


def check_point(point: LoadPoint) -> None:
    """Counts add up, percentiles are ordered, the server's split is there."""
    assert point.sent > 0 and point.answered == point.sent
    assert point.failed == 0 and point.missing == 0 and point.errors == {}
    assert point.throughput > 0
    lat = point.latency_ms
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert set(point.server_ms) == set(STAGES)
    assert all(v >= 0 for v in point.server_ms.values())
    assert point.server_ms["inference"] > 0
    assert point.mean_batch is not None and point.mean_batch >= 1


# ------------------------------------------------------------------ the Python API


def test_closed_loop_measures_and_answers_like_onnxruntime(
    serve, onnx_model_dir, redis_url, stream
) -> None:
    serve(onnx_model_dir)  # batch 4, top 3
    inputs = records(5)
    point = closed_loop(redis_url, stream, inputs, clients=4, duration_s=1.0, warmup_s=0.3, keep=12)
    check_point(point)
    assert point.mode == "closed" and point.clients == 4 and point.rate is None
    assert point.duration_s == 1.0 and not point.fell_behind
    assert len(point.samples) == 12
    scores = onnx_direct(onnx_model_dir, np.stack([r["input"] for r in inputs]))
    for index, served in point.samples:
        assert_top_n(served, scores[index], 3)
    body = json.loads(json.dumps(point.to_dict()))
    assert "samples" not in body and body["load"] == 4 and body["fell_behind"] is False


def test_closed_loop_by_record_count(serve, onnx_model_dir, redis_url, stream) -> None:
    serve(onnx_model_dir)
    point = closed_loop(
        redis_url, stream, records(3), clients=3, records=40, warmup_s=0.0, server_split=False
    )
    assert point.sent == point.answered == 40 and point.failed == 0
    assert point.server_ms == {} and point.duration_s > 0
    assert point.throughput == pytest.approx(40 / point.duration_s, rel=1e-3)


def test_open_loop_keeps_its_rate_and_returns_tensors(
    serve, onnx_model_dir, redis_url, stream
) -> None:
    serve(onnx_model_dir, **{"params.top_n": 0})
    inputs = records(4, seed=3)
    point = open_loop(redis_url, stream, inputs, rate=200, duration_s=1.0, warmup_s=0.3, keep=6)
    check_point(point)
    assert point.mode == "open" and point.rate == 200 and point.clients is None
    assert 199 <= point.sent <= 201  # every record due in the one-second window
    assert point.send_rate == pytest.approx(200, rel=0.1)
    direct = onnx_direct(onnx_model_dir, np.stack([r["input"] for r in inputs]))
    assert len(point.samples) == 6
    for index, served in point.samples:
        np.testing.assert_allclose(served, direct[index], rtol=0, atol=1e-5)


def test_open_loop_sends_on_schedule_while_no_answer_comes(redis_url, redis_client, stream) -> None:
    """Records due while others are out go out when due. (Redis ends a blocking read's
    timeout only at its next hz tick, 100 ms by default: a loop that waited for answers with
    a "until the next record is due" timeout sent in bursts, one every 100 ms.)"""
    from zoo_serving.bench.driver import Driver, Job
    from zoo_serving.config import DataConfig

    job = Job(
        data=DataConfig(src=redis_url, stream=stream),
        url=redis_url,
        stream=stream,
        inputs=({"x": np.zeros(4, np.float32)},),
        mode="open",
        rate=100.0,
        duration_s=1.0,
        timeout_s=0.2,
    )
    driver = Driver(job).prepare()  # nothing serves the stream: every record stays out
    try:
        out = driver.run(time.time())
    finally:
        driver.close()
    assert 99 <= out.sent <= 101 and out.answered == 0  # every record due in the window
    sent_ms = [int(eid.split(b"-")[0]) for eid, _ in redis_client.xrange(stream)]
    assert len(sent_ms) == out.sent
    gaps = np.diff(sent_ms)
    assert 5 <= np.median(gaps) <= 20, f"sent in bursts: gaps {sorted(gaps)[-10:]} ms"
    assert np.count_nonzero(gaps > 60) < 10, f"sent in bursts: gaps {sorted(gaps)[-10:]} ms"


def test_both_loops_load_every_partition_on_every_plane(
    serve_on, plane, onnx_model_dir, stream
) -> None:
    """On one Redis and on a Redis Cluster with 1 and 3 partitions, the closed and the open
    loop send each record to the partition clients pick for its uri and take every answer
    back (an open loop listens on an inbox per partition); answers are ONNX Runtime's."""
    serve_on(onnx_model_dir)  # batch 4, top 3
    inputs = records(4, seed=5)
    common = dict(warmup_s=0.0, keep=8, server_split=False)
    closed = closed_loop(plane.url, stream, inputs, clients=4, records=60, **common)
    opened = open_loop(plane.url, stream, inputs, rate=100, duration_s=0.6, **common)
    scores = onnx_direct(onnx_model_dir, np.stack([r["input"] for r in inputs]))
    for point in (closed, opened):
        assert point.sent == point.answered > 0 and point.failed == 0 and point.missing == 0
        assert len(point.samples) == 8
        for index, served in point.samples:
            assert_top_n(served, scores[index], 3)
    added = [plane.db.xinfo_stream(part)["entries-added"] for part in plane.parts(stream)]
    assert sum(added) >= closed.sent + opened.sent
    assert all(added), f"a partition got no records: {added}"


def test_load_split_over_spawned_processes(serve, onnx_model_dir, redis_url, stream) -> None:
    serve(onnx_model_dir)
    point = closed_loop(
        redis_url,
        stream,
        records(4),
        clients=4,
        records=60,
        warmup_s=0.0,
        processes=2,
        keep=4,
        server_split=False,
    )
    assert point.processes == 2
    assert point.sent == point.answered == 60 and point.failed == 0
    assert len(point.samples) == 4 and point.latency_ms["p99"] > 0


def test_nothing_serving_is_a_clear_error(redis_url, stream) -> None:
    with pytest.raises(ServerError, match=rf"nothing is serving stream '{stream}'"):
        closed_loop(redis_url, stream, records(1), clients=1, duration_s=0.5)


# ------------------------------------------------------------------ pieces


def test_stage_split_diffs_workers_that_come_restart_and_go() -> None:
    def beat(records: int, batches: int, seconds: float) -> dict[str, Any]:
        stages = dict.fromkeys(STAGES, seconds)
        return {"batches": batches, "stages": {"records": records, **stages}}

    before = {"a": beat(100, 50, 1.0), "b": beat(500, 100, 9.0), "gone": beat(10, 5, 1.0)}
    after = {
        "a": beat(300, 100, 3.0),  # 200 records, 2 s per stage more
        "b": beat(100, 20, 1.0),  # restarted under the same name: counts from zero
        "new": beat(100, 30, 2.0),  # appeared since
    }
    split, batch = stage_split(before, after)
    assert split == dict.fromkeys(STAGES, pytest.approx(5.0 * 1000 / 400))
    assert batch == pytest.approx(400 / 100)
    assert stage_split({}, {"idle": {"ts": 1}}) == ({}, None)


def test_inputs_from_the_model_description_images_and_arrays(tmp_path: Path) -> None:
    info = {"inputs": [{"name": "x", "dtype": "<f4", "shape": [-1, 3, -1, -1]}]}
    made = random_inputs(info, (3, 16, 8), count=2)
    assert len(made) == 2 and made[0]["x"].shape == (3, 16, 8)
    assert made[0]["x"].dtype == np.float32
    with pytest.raises(ConfigError, match=r"input 'x' .* free dimensions.*--npy"):
        random_inputs(info, (3, 16))
    ints = random_inputs({"inputs": [{"name": "ids", "dtype": "<i8", "shape": [-1, 5]}]})
    assert ints[0]["ids"].dtype == np.int64

    (tmp_path / "a.jpg").write_bytes(jpeg(1))
    (tmp_path / "b.png").write_bytes(b"not really")
    (tmp_path / "notes.txt").write_text("skip me")
    assert [list(r) for r in image_inputs([str(tmp_path)], info)] == [["x"], ["x"]]
    with pytest.raises(ConfigError, match="--image nope.jpg: no such file"):
        image_inputs(["nope.jpg"], info)

    np.save(tmp_path / "stack.npy", np.zeros((4, 3, 16, 8), np.float32))
    stacked = npy_inputs([str(tmp_path / "stack.npy")], info)
    assert len(stacked) == 4 and stacked[0]["x"].shape == (3, 16, 8)
    np.savez(tmp_path / "two.npz", y=np.zeros(3))
    with pytest.raises(ConfigError, match=r"--npy .*two.npz: holds arrays \['y'\]"):
        npy_inputs([str(tmp_path / "two.npz")], info)


# ------------------------------------------------------------------ the CLI


def write_config(tmp_path: Path, model_dir: Path, src: str, stream: str) -> Path:
    path = tmp_path / "config.yaml"
    raw = {
        "model": {"path": str(model_dir)},
        "data": {"src": src, "stream": stream, "shape": "3,32,32"},
        "params": {"batch_size": 4, "top_n": 3},
        "log": {"dir": str(tmp_path / "work")},
    }
    path.write_text(yaml.safe_dump(raw))
    return path


def test_cli_end_to_end_with_json_and_plot(
    serve, onnx_model_dir, redis_url, stream, tmp_path
) -> None:
    serve(onnx_model_dir)
    config = write_config(tmp_path, onnx_model_dir, redis_url, stream)
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    cmd = [sys.executable, "-m", "zoo_serving", "bench", "-c", str(config)]
    cmd += ["--clients", "1,4", "--rate", "100", "--duration", "0.6", "--warmup", "0.2"]
    cmd += ["--json", str(out_json), "--plot", str(out_png)]
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=60, env=env_without_coverage()
    )
    assert done.returncode == 0, done.stdout + done.stderr
    table = done.stdout.splitlines()
    assert table[0].split()[:6] == ["mode", "load", "rec/s", "p50", "ms", "p90"]
    assert [line.split()[0] for line in table[2:5]] == ["closed", "closed", "open"]
    assert "closed loop, 4 clients" in done.stderr  # the progress bar's summary line

    body = json.loads(out_json.read_text())
    assert body["stream"] == stream and body["url"] == redis_url
    assert body["model"]["inputs"][0]["shape"] == [-1, 3, 32, 32]
    assert body["config"]["batch_size"] == 4 and body["settings"]["inputs"] == "random"
    assert {"time", "host", "zoo_serving"} <= set(body)
    loads = [(p["mode"], p["load"]) for p in body["points"]]
    assert loads == [("closed", 1), ("closed", 4), ("open", 100)]
    for point in body["points"]:
        assert point["answered"] == point["sent"] > 0 and point["failed"] == 0
        assert set(point["latency_ms"]) == {"p50", "p90", "p99", "max", "mean"}
        assert set(point["server_ms"]) == set(STAGES)

    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    assert matplotlib.image.imread(out_png).shape[2] in (3, 4)


def test_cli_errors_name_what_is_wrong(onnx_model_dir, redis_url, stream, tmp_path, capsys) -> None:
    config = write_config(tmp_path, onnx_model_dir, redis_url, stream)
    assert cli.main(["bench", "-c", str(config), "--duration", "0.5"]) == 3  # no server
    err = capsys.readouterr().err
    assert f"nothing is serving stream '{stream}'" in err and "zoo-serve start" in err

    assert cli.main(["bench", "-c", str(config), "--clients", "1,x"]) == 2
    assert "--clients: expected comma-separated whole numbers" in capsys.readouterr().err

    nowhere = write_config(tmp_path, onnx_model_dir, f"localhost:{free_port()}", stream)
    assert cli.main(["bench", "-c", str(nowhere)]) == 3  # no Redis
    assert "does not answer" in capsys.readouterr().err


def test_cli_bench_with_images(serve, onnx_model_dir, redis_url, stream, tmp_path, capsys) -> None:
    serve(onnx_model_dir)
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        (images / f"{i}.jpg").write_bytes(jpeg(i))
    config = write_config(tmp_path, onnx_model_dir, redis_url, stream)
    args = ["bench", "-c", str(config), "--clients", "2", "--duration", "0.5"]
    assert cli.main([*args, "--warmup", "0", "--image", str(images)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[2].split()[:3] == ["closed", "2", "clients"]
