"""The server's lifecycle as ``zoo-serve`` drives it, where it goes wrong: a second server on
the stream, stale and foreign pid files, workers elsewhere, a config with a typo, a killed
server, Ctrl-C, a second signal, a closed pipe."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

from helpers import cli_env, plain_config, plugin_backends, status_of, wait_for, zoo_serve
from zoo_serving import InputQueue, Server, keys, procs
from zoo_serving.broker.embedded import free_port
from zoo_serving.cli.common import write_pid


def test_start_waits_for_its_own_server_and_shows_its_own_error(
    tmp_path, onnx_model_dir, torch_model_dir, redis_url, stream, monkeypatch
) -> None:
    data = {"src": redis_url, "stream": stream}
    first = {"model": {"path": str(onnx_model_dir)}, "data": {**data, "shape": "3,32,32"}}
    with Server({**first, "log": {"dir": str(tmp_path / "first")}}) as first_server:
        # the same model from another directory joins, says so, and start returns once its
        # own worker is ready (not on the first server's readiness)
        plain_config(tmp_path / "same", {"path": str(onnx_model_dir)}, data)
        joined = zoo_serve("start", cwd=tmp_path / "same")
        try:
            assert joined.returncode == 0, joined.stdout + joined.stderr
            code, info = status_of(tmp_path / "same")
            assert code == 0 and len(info["workers"]) == 2, info  # its own one is there too
            assert "joined a server already serving stream" in joined.stdout
            assert str((tmp_path / "first").resolve()) in joined.stdout
        finally:
            assert zoo_serve("stop", cwd=tmp_path / "same").returncode == 0
        time.sleep(1.5)  # a stop request would reach the first server's worker within a beat
        assert first_server.running  # stopping the one that joined left the first serving

        # another model is refused, with this start's error, not an older line of server.out
        plain_config(tmp_path / "other", {"path": str(torch_model_dir)}, data)
        (tmp_path / "other" / ".zoo-serving").mkdir()
        (tmp_path / "other" / ".zoo-serving" / "server.out").write_text(
            "zoo-serve: an error of an earlier start\n"
        )
        refused = zoo_serve("start", cwd=tmp_path / "other")
        assert refused.returncode == 3, refused.stdout + refused.stderr
        assert "served by another server with another model" in refused.stderr
        assert "earlier start" not in refused.stderr and "Traceback" not in refused.stderr

    # a server that dies without a word: this start's output, not an earlier start's error
    plugin_backends(tmp_path, monkeypatch)
    crash = {"path": str(onnx_model_dir), "backend": "crash_backend:Boom"}
    plain_config(tmp_path / "crash", crash, data)
    (tmp_path / "crash" / ".zoo-serving").mkdir()
    (tmp_path / "crash" / ".zoo-serving" / "server.out").write_text(
        "zoo-serve: an error of an earlier start\n"
    )
    crashed = zoo_serve("start", cwd=tmp_path / "crash")
    assert crashed.returncode == 3, crashed.stdout + crashed.stderr
    assert "exited with code 7 before it was ready" in crashed.stderr
    assert "earlier start" not in crashed.stderr


def test_stop_leaves_alone_a_reused_pid_and_counts_a_zombie_as_stopped(
    tmp_path, onnx_model_dir, redis_url, stream
) -> None:
    plain_config(tmp_path, {"path": str(onnx_model_dir)}, {"src": redis_url, "stream": stream})
    work = tmp_path / ".zoo-serving"
    work.mkdir()
    other = subprocess.Popen(["sleep", "60"])  # another program now has the recorded pid
    zombie = subprocess.Popen(["true"])  # exited, never reaped by its parent (this test)
    try:
        wait_for(lambda: procs.state(zombie.pid) == "Z", 10, "the zombie")
        for pid in (other.pid, zombie.pid):
            for record in (str(pid), json.dumps({"pid": pid, "started": "1", "config": "x"})):
                (work / "zoo-serve.pid").write_text(record)  # old (bare pid) and new format
                stopped = zoo_serve("stop", "--timeout", "2", cwd=tmp_path)
                assert stopped.returncode == 0, stopped.stderr
                assert "not running" in stopped.stdout and "stopped (pid" not in stopped.stdout
                assert other.poll() is None  # never signalled
                assert not (work / "zoo-serve.pid").exists()
        write_pid(work, zombie.pid, None)  # its own start time: still a zombie, not running
        assert status_of(tmp_path)[1]["pid"] is None
        assert "not running" in zoo_serve("stop", "--timeout", "2", cwd=tmp_path).stdout
    finally:
        other.kill()
        other.wait()
        zombie.wait()


def test_stop_reaches_workers_without_a_local_server_and_reports_a_lost_request(
    tmp_path, onnx_model_dir, redis_url, stream
) -> None:
    model = {"path": str(onnx_model_dir)}
    elsewhere = {"model": model, "data": {"src": redis_url, "stream": stream, "shape": "3,32,32"}}
    with Server({**elsewhere, "log": {"dir": str(tmp_path / "elsewhere")}}) as remote:
        plain_config(tmp_path / "here", model, {"src": redis_url, "stream": stream})
        stopped = zoo_serve("stop", "--timeout", "30", cwd=tmp_path / "here")
        assert stopped.returncode == 0, stopped.stderr
        assert f"stopped 1 worker(s) of stream {stream}" in stopped.stdout
        assert remote.wait(10)  # its workers ended on the request

    plain_config(tmp_path / "lost", model, {"src": f"localhost:{free_port()}", "stream": stream})
    lost = zoo_serve("stop", cwd=tmp_path / "lost")
    assert lost.returncode == 3 and "could not be sent" in lost.stderr


def test_restart_checks_config_and_model_first_and_stop_works_with_a_typo(
    tmp_path, onnx_model_dir, redis_url, stream
) -> None:
    data = {"src": redis_url, "stream": stream}
    config = plain_config(tmp_path / "app", {"path": str(onnx_model_dir)}, data)
    started = zoo_serve("start", cwd=tmp_path / "app")
    assert started.returncode == 0, started.stdout + started.stderr
    pid = status_of(tmp_path / "app")[1]["pid"]
    try:
        # a relative model.path is relative to the config file, wherever the command runs
        (tmp_path / "app" / "empty").mkdir()
        plain_config(tmp_path / "app", {"path": "empty"}, data)
        no_model = zoo_serve("-c", str(config), "restart", cwd=tmp_path)
        assert no_model.returncode == 3 and "no model found" in no_model.stderr
        assert str(tmp_path / "app" / "empty") in no_model.stderr
        code, info = status_of(tmp_path / "app")
        assert code == 0 and info["pid"] == pid  # the old server still serves

        config.write_text(config.read_text() + "params:\n  batch_size: lots\n")
        typo = zoo_serve("restart", cwd=tmp_path / "app")
        assert typo.returncode == 2 and "params.batch_size" in typo.stderr
        assert procs.alive(pid)

        stopped = zoo_serve("stop", cwd=tmp_path / "app")  # the typo stays in config.yaml
        assert stopped.returncode == 0, stopped.stderr
        assert f"stopped (pid {pid})" in stopped.stdout and "params.batch_size" in stopped.stderr
        wait_for(lambda: not procs.alive(pid), 10, "the server to end")
    finally:
        if procs.alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_status_is_not_ready_once_the_server_is_killed(
    tmp_path, onnx_model_dir, redis_url, redis_client, stream
) -> None:
    plain_config(tmp_path, {"path": str(onnx_model_dir)}, {"src": redis_url, "stream": stream})
    started = zoo_serve("start", cwd=tmp_path)
    assert started.returncode == 0, started.stdout + started.stderr
    code, info = status_of(tmp_path)
    assert code == 0 and info["ready"]
    os.kill(info["pid"], signal.SIGKILL)
    wait_for(lambda: not procs.alive(info["pid"]), 10, "the server to die")
    assert redis_client.exists(keys.ready(stream))  # the ready key has not expired yet
    code, after = status_of(tmp_path)
    assert code == 1 and not after["ready"] and not after["workers"] and after["pid"] is None
    assert "not running" in zoo_serve("stop", cwd=tmp_path).stdout


def test_ctrl_c_during_start_stops_the_starting_server(
    tmp_path, onnx_model_dir, redis_url, redis_client, stream, monkeypatch
) -> None:
    gate = plugin_backends(tmp_path, monkeypatch)
    gated = {"path": str(onnx_model_dir), "backend": "gated_backend:GatedOnnx"}
    plain_config(tmp_path, gated, {"src": redis_url, "stream": stream})
    pid_file = tmp_path / ".zoo-serving" / "zoo-serve.pid"
    start = subprocess.Popen(
        [sys.executable, "-m", "zoo_serving", "start"],
        cwd=tmp_path,
        env=cli_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: pid_file.exists() and pid_file.read_text(), 30, "the pid file")
    server_pid = json.loads(pid_file.read_text())["pid"]
    try:  # the server has claimed the stream: its worker is loading the (gated) model
        wait_for(lambda: redis_client.hlen(keys.servers(stream)), 30, "the server's claim")
        start.send_signal(signal.SIGINT)
        gate.touch()  # lets the model's load end, so its worker can stop
        _out, err = start.communicate(timeout=60)
        assert start.returncode == 130, err
        assert "interrupted; stopping the starting server" in err and "Traceback" not in err
        assert not procs.alive(server_pid) and not pid_file.exists()
        assert not redis_client.hlen(keys.servers(stream))  # it let go of the stream
        out = (tmp_path / ".zoo-serving" / "server.out").read_text()
        assert "while starting: stopping the start" in out  # not after loading the model
    finally:
        if procs.alive(server_pid):
            os.kill(server_pid, signal.SIGKILL)


def test_ctrl_c_drains_with_the_embedded_redis_and_a_second_signal_stops_at_once(
    tmp_path, onnx_model_dir, stream, monkeypatch
) -> None:
    """A Ctrl-C in the server's terminal reaches its whole process group: the embedded
    redis-server, in a session of its own, stays up for the drain; a second signal stops the
    server at once and takes the redis-server along."""
    gate = plugin_backends(tmp_path, monkeypatch)
    port = free_port()
    slow = {"path": str(onnx_model_dir), "backend": "gated_backend:SlowOnnx"}
    plain_config(tmp_path, slow, {"embedded_port": port, "stream": stream})
    server = subprocess.Popen(
        [sys.executable, "-m", "zoo_serving", "start", "--foreground"],
        cwd=tmp_path,
        env=cli_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own terminal's process group
    )
    owner_file = tmp_path / ".zoo-serving" / "redis" / "embedded.json"
    try:
        wait_for(owner_file.exists, 30, "the embedded redis-server")
        redis_pid = json.loads(owner_file.read_text())["redis_pid"]
        with InputQueue(url=f"redis://127.0.0.1:{port}", name=stream) as client:
            assert client.wait_ready(60)
            client.enqueue("held", t=np.full((3, 32, 32), 7, np.float32))  # held in predict
            wait_for(lambda: client.db.xpending(stream, "serving")["pending"] == 1)
        os.killpg(server.pid, signal.SIGINT)  # Ctrl-C: drains, waiting for the held batch
        time.sleep(0.5)
        assert server.poll() is None and procs.alive(redis_pid)
        server.send_signal(signal.SIGTERM)  # stops at once
        assert server.wait(30) == 128 + signal.SIGTERM
        wait_for(lambda: not procs.alive(redis_pid), 10, "the embedded redis-server to end")
    finally:
        gate.touch()
        if server.poll() is None:
            server.kill()
            server.wait()


def test_output_into_a_closed_pipe_ends_quietly(tmp_path, onnx_model_dir) -> None:
    plain_config(tmp_path, {"path": str(onnx_model_dir)}, {})
    (tmp_path / ".zoo-serving").mkdir()
    (tmp_path / ".zoo-serving" / "error.log").write_text("a line of the log\n" * 100_000)
    piped = subprocess.run(
        f"{sys.executable} -m zoo_serving log -n 100000 | head -1",
        shell=True,
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert piped.stdout == "a line of the log\n"
    assert piped.stderr == "", piped.stderr
