"""Many models, one server: each model on its stream, versions, hot swaps, control, budget.

The models are real ONNX graphs (``y = x * factor``), so every answer is checked against what
ONNX Runtime computes for the same input, and says which model and version gave it.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helpers import answer_of as answer
from helpers import scale_direct as direct
from helpers import scale_model
from zoo_serving import InputQueue, Server, keys
from zoo_serving.broker.control import ModelControl
from zoo_serving.errors import (
    ConfigError,
    ModelError,
    ModelUnloadedError,
    VersionUnavailableError,
)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    scale_model(root / "double" / "1" / "m.onnx", 2.0)
    scale_model(root / "neg" / "1" / "m.onnx", -1.0)
    scale_model(root / "neg" / "2" / "m.onnx", -2.0)
    (root / "neg" / "model.yaml").write_text("versions: all\nbatch_size: 2\n")
    return root


def config(repo: Path, redis_url: str, stream: str, tmp_path: Path, **extra: Any) -> dict:
    raw: dict[str, dict[str, Any]] = {
        "model": {"repository": str(repo)},
        "data": {"src": redis_url, "stream": stream, "shape": "4"},
        "params": {"top_n": 0, "batch_size": 4, "slots": 2, "claim_idle_ms": 2000},
        "repository": {"default": "double"},
        "log": {"dir": str(tmp_path / "work")},
    }
    for key, value in extra.items():
        section, _, name = key.partition(".")
        raw.setdefault(section, {})[name] = value
    return raw


def test_each_model_serves_its_stream_and_names_model_and_version(
    repo: Path, redis_url: str, redis_client: Any, stream: str, tmp_path: Path
) -> None:
    x = np.arange(4, dtype=np.float32)
    with Server(config(repo, redis_url, stream, tmp_path)):
        index = ModelControl(redis_client, stream).index()
        assert index["double"]["stream"] == stream  # the default model keeps data.stream
        assert index["neg"]["stream"] == keys.model_stream(stream, "neg")
        with InputQueue(url=redis_url, name=stream) as default:
            np.testing.assert_allclose(default.predict(x), direct(repo / "double/1/m.onnx", x))
        with InputQueue(url=redis_url, name=stream, model="neg") as neg:
            np.testing.assert_allclose(neg.predict(x), direct(repo / "neg/2/m.onnx", x))
            neg.enqueue("n-newest", t=x)
            got = answer(redis_client, index["neg"]["stream"], "n-newest")
            assert (got.model, got.version) == ("neg", 2)
        with InputQueue(url=redis_url, name=stream, model="neg", version=1) as old:
            np.testing.assert_allclose(old.predict(x), direct(repo / "neg/1/m.onnx", x))
            old.enqueue("n-old", t=x)
            got = answer(redis_client, index["neg"]["stream"], "n-old")
            assert (got.model, got.version) == ("neg", 1)
        with (
            InputQueue(url=redis_url, name=stream, model="neg", version=7) as missing,
            pytest.raises(VersionUnavailableError, match="version 7"),
        ):
            missing.predict(x)
        with InputQueue(url=redis_url, name=stream, model="double") as named:
            named.enqueue("d", t=x)
            got = answer(redis_client, stream, "d")
            assert (got.model, got.version) == ("double", 1)
            np.testing.assert_allclose(got.value, direct(repo / "double/1/m.onnx", x))


class Load:
    """Records sent to a model's stream the whole time, each checked on its way back."""

    def __init__(self, redis_url: str, base: str, model: str, pause_s: float = 0.002) -> None:
        self.queue = InputQueue(url=redis_url, name=base, model=model)
        self.sent: list[tuple[str, np.ndarray]] = []
        self.pause_s = pause_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._send, daemon=True)

    def _send(self) -> None:
        rng = np.random.default_rng(0)
        while not self._stop.is_set():
            x = rng.normal(size=4).astype(np.float32)
            uri = f"r{len(self.sent)}"
            self.queue.enqueue(uri, t=x)
            self.sent.append((uri, x))
            time.sleep(self.pause_s)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.queue.close()


def test_a_new_version_is_swapped_in_under_load_and_no_record_is_lost(
    tmp_path: Path, redis_url: str, redis_client: Any, stream: str
) -> None:
    root = tmp_path / "models"
    scale_model(root / "double" / "1" / "m.onnx", 2.0)
    cfg = config(root, redis_url, stream, tmp_path, **{"repository.control": "poll"})
    cfg["repository"]["poll_s"] = 0.2
    with Server(cfg) as server, Load(redis_url, stream, "double") as load:
        time.sleep(0.5)
        # a version copied in the way tools do it: written under another name first
        staging = tmp_path / "staging" / "m.onnx"
        scale_model(staging, 3.0)
        (root / "double" / "2").mkdir()
        shutil.copy(staging, root / "double" / "2" / "m.onnx")
        server.models.get("double")
        deadline = time.monotonic() + 30
        while server.models.get("double").workers:
            states = list(server.models.get("double").workers.values())
            if states and states[0].get("current") == 2:
                break
            assert time.monotonic() < deadline, f"version 2 never served: {states}"
            time.sleep(0.1)
        time.sleep(0.5)
    factors = {1: 2.0, 2: 3.0}
    seen = []
    for uri, x in load.sent:
        got = answer(redis_client, stream, uri, timeout_s=10)
        assert got.model == "double", (uri, got)
        np.testing.assert_allclose(got.value, x * factors[got.version], rtol=1e-6)
        seen.append(got.version)
    assert 1 in seen and 2 in seen, "the load never spanned the swap"
    assert seen == sorted(seen), "a record after the switch ran on the old version"
    assert redis_client.xpending(stream, "serving")["pending"] == 0
    assert redis_client.xlen(keys.dead_letter(stream)) == 0


def test_explicit_load_and_unload_keep_queued_records_and_lose_none(
    repo: Path, redis_url: str, redis_client: Any, stream: str, tmp_path: Path
) -> None:
    cfg = config(repo, redis_url, stream, tmp_path, **{"repository.control": "explicit"})
    cfg["repository"]["load"] = ["double"]
    neg_stream = keys.model_stream(stream, "neg")
    xs = np.random.default_rng(1).normal(size=(6, 4)).astype(np.float32)
    with Server(cfg) as server:
        assert server.models.get("neg").state == "unloaded"
        with InputQueue(url=redis_url, name=stream, model="neg") as neg:
            for i, x in enumerate(xs[:3]):
                neg.enqueue(f"q{i}", t=x)
            time.sleep(0.5)
            assert redis_client.xlen(neg_stream) == 3  # queued, waiting for a load
            assert not redis_client.exists(keys.result(neg_stream, "q0"))
            info = server.models.load("neg", [1], wait_s=60)
            assert info.state == "ready" and info.wanted_versions == [1]
            for i, x in enumerate(xs[:3]):
                got = answer(redis_client, neg_stream, f"q{i}")
                assert (got.model, got.version) == ("neg", 1)
                np.testing.assert_allclose(got.value, direct(repo / "neg/1/m.onnx", x))
            server.models.unload("neg", wait_s=60)
            for i, x in enumerate(xs[3:], start=3):
                neg.enqueue(f"q{i}", t=x)
            time.sleep(0.5)
            assert redis_client.xlen(neg_stream) == 3  # unloaded: they wait, none lost
            server.models.load("neg", wait_s=60)  # its policy: every version, newest serves
            for i, x in enumerate(xs[3:], start=3):
                got = answer(redis_client, neg_stream, f"q{i}")
                assert (got.model, got.version) == ("neg", 2)
                np.testing.assert_allclose(got.value, direct(repo / "neg/2/m.onnx", x))
        with pytest.raises(ModelError, match="no version 9"):
            server.models.load("neg", [9])
        with pytest.raises(ModelError, match="no model 'nope'"):
            server.models.load("nope")
    assert redis_client.xpending(neg_stream, "serving")["pending"] == 0


def test_a_load_and_an_unload_are_published_as_they_happen(
    repo: Path, redis_url: str, stream: str, tmp_path: Path, monkeypatch: Any
) -> None:
    """A caller waiting on a load sees it done when it is, not at the next periodic publish
    of the workers' model states (here never: an hour away)."""
    from zoo_serving.serving import host

    monkeypatch.setattr(host, "PUBLISH_S", 3600.0)
    cfg = config(repo, redis_url, stream, tmp_path, **{"repository.control": "explicit"})
    cfg["repository"]["load"] = ["double"]
    with Server(cfg) as server:
        assert server.models.load("neg", [1], wait_s=20).state == "ready"
        with InputQueue(url=redis_url, name=stream, model="neg") as neg:
            got = neg.predict(np.ones(4, np.float32), timeout=20)
        np.testing.assert_allclose(got, direct(repo / "neg/1/m.onnx", np.ones(4, np.float32)))
        assert server.models.unload("neg", wait_s=20).state == "unloaded"


def test_load_and_unload_need_explicit_control(
    repo: Path, redis_url: str, stream: str, tmp_path: Path
) -> None:
    with Server(config(repo, redis_url, stream, tmp_path)) as server:
        with pytest.raises(ConfigError, match="repository.control") as err:
            server.models.unload("neg")
        assert err.value.details["key"] == "repository.control"
        assert server.models.get("neg").state == "ready"  # nothing changed


def test_a_memory_budget_evicts_idle_models_and_loads_them_again_on_demand(
    tmp_path: Path, redis_url: str, redis_client: Any, stream: str
) -> None:
    root = tmp_path / "models"
    factors = {"a": 2.0, "b": 3.0, "c": 5.0, "d": 7.0}
    for name, factor in factors.items():
        scale_model(root / name / "1" / "m.onnx", factor)
        (root / name / "model.yaml").write_text("memory: 100m\n")  # counted at least this
    (root / "d" / "model.yaml").write_text("memory: 100m\npinned: y\n")
    cfg = config(root, redis_url, stream, tmp_path, **{"params.memory_budget": "250m"})
    cfg["repository"]["default"] = "a"
    rng = np.random.default_rng(2)
    sent: list[tuple[str, str, np.ndarray]] = []
    with Server(cfg) as server:
        # four models of 100m, a budget of 250m: at start two fit (one of them pinned)
        loaded = [m.name for m in server.models.describe() if m.state == "ready"]
        assert len(loaded) == 2 and "d" in loaded, loaded
        queues = {n: InputQueue(url=redis_url, name=stream, model=n) for n in factors}
        try:
            for step in range(40):  # random traffic over every model
                name = str(rng.choice(list(factors)))
                x = rng.normal(size=4).astype(np.float32)
                uri = f"{name}-{step}"
                queues[name].enqueue(uri, t=x)
                sent.append((name, uri, x))
                if step % 5 == 4:
                    time.sleep(0.3)
            index = ModelControl(redis_client, stream).index()
            for name, uri, x in sent:
                got = answer(redis_client, index[name]["stream"], uri)
                assert got.model == name
                np.testing.assert_allclose(got.value, x * factors[name], rtol=1e-6)
        finally:
            for q in queues.values():
                q.close()
        workers = {m.name: next(iter(m.workers.values()), {}) for m in server.models.describe()}
    assert workers["d"].get("evictions", 0) == 0, "a pinned model was evicted"
    assert sum(w.get("evictions", 0) for w in workers.values()) >= 2, workers
    assert sum(w.get("loads", 0) for w in workers.values()) >= 4, workers


def test_the_http_door_routes_by_model_and_version_and_manages_the_repository(
    repo: Path, redis_url: str, stream: str, tmp_path: Path
) -> None:
    import httpx

    from zoo_serving.broker.embedded import free_port

    port = free_port()
    cfg = config(repo, redis_url, stream, tmp_path, **{"repository.control": "explicit"})
    cfg["repository"]["load"] = ["double"]
    cfg["http"] = {"port": port}
    x = np.random.default_rng(4).normal(size=4).astype(np.float32)

    def v2(tensor: np.ndarray) -> dict:
        body = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": tensor.tolist()}
        return {"inputs": [body]}

    def states(client: httpx.Client) -> dict:
        index = client.post("/v2/repository/index").json()
        return {(m["name"], m["version"]): m["state"] for m in index}

    with Server(cfg), httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        assert "model_repository" in client.get("/v2").json()["extensions"]
        assert states(client) == {
            ("double", "1"): "READY",
            ("neg", "1"): "UNAVAILABLE",
            ("neg", "2"): "UNAVAILABLE",
        }
        assert client.post("/v2/models/neg/infer", json=v2(x)).status_code == 503
        assert client.post("/v2/repository/models/neg/load").status_code == 200
        assert states(client)[("neg", "2")] == "READY"
        newest = client.post("/v2/models/neg/infer", json=v2(x)).json()
        assert newest["model_name"] == "neg"
        np.testing.assert_allclose(
            newest["outputs"][0]["data"], direct(repo / "neg/2/m.onnx", x), rtol=1e-6
        )
        old = client.post("/v2/models/neg/versions/1/infer", json=v2(x)).json()
        np.testing.assert_allclose(
            old["outputs"][0]["data"], direct(repo / "neg/1/m.onnx", x), rtol=1e-6
        )
        meta = client.get("/v2/models/neg").json()
        assert meta["name"] == "neg" and meta["versions"] == ["1", "2"]

        def predicted(body: dict) -> np.ndarray:
            answer = client.post("/predict", json=body).json()["predictions"][0]
            return np.asarray(json.loads(json.loads(answer)["value"])["data"])

        instances = [{"x": x.tolist()}]
        np.testing.assert_allclose(
            predicted({"model": "neg", "instances": instances}),
            direct(repo / "neg/2/m.onnx", x),
            rtol=1e-6,
        )
        np.testing.assert_allclose(
            predicted({"instances": instances}), direct(repo / "double/1/m.onnx", x), rtol=1e-6
        )
        missing = client.post("/v2/repository/models/nope/load")
        assert (missing.status_code, missing.json()["code"]) == (404, "no_model")
        bad_version = client.post(
            "/v2/repository/models/neg/load", json={"parameters": {"versions": [9]}}
        )
        assert bad_version.status_code == 400 and "no version 9" in bad_version.json()["error"]
        assert client.post("/v2/repository/models/neg/unload").status_code == 200
        assert states(client)[("neg", "2")] == "UNAVAILABLE"
        ready_only = client.post("/v2/repository/index", json={"ready": True}).json()
        assert [m["name"] for m in ready_only] == ["double"]


def test_zoo_serve_models_and_status_per_model(
    repo: Path, redis_url: str, stream: str, tmp_path: Path, capsys: Any
) -> None:
    import yaml

    from zoo_serving.cli import main as zoo_serve

    cfg = config(repo, redis_url, stream, tmp_path, **{"repository.control": "explicit"})
    cfg["repository"]["load"] = ["double"]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with Server(cfg):
        capsys.readouterr()
        assert zoo_serve(["models", "list", "--json", "-c", str(path)]) == 0
        listed = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
        assert listed["double"]["state"] == "ready" and listed["neg"]["state"] == "unloaded"
        assert zoo_serve(["models", "load", "neg", "--versions", "1", "-c", str(path)]) == 0
        assert "model neg: ready" in capsys.readouterr().out
        assert zoo_serve(["status", "--json", "-c", str(path)]) == 0
        models = {m["name"]: m for m in json.loads(capsys.readouterr().out)["models"]}
        assert models["neg"]["serving"] == [1] and models["neg"]["ready"]
        assert models["double"]["default"] and models["double"]["stream"] == stream
        bench = ["bench", "--model", "neg", "--clients", "2", "--duration", "1", "--warmup", "0.2"]
        assert zoo_serve([*bench, "--json", str(tmp_path / "b.json"), "-c", str(path)]) == 0
        report = json.loads((tmp_path / "b.json").read_text())
        assert report["model_name"] == "neg" and report["points"][0]["answered"] > 0
        assert zoo_serve(["models", "unload", "neg", "-c", str(path)]) == 0
        assert zoo_serve(["models", "list", "-c", str(path)]) == 0
        text = capsys.readouterr().out
        assert "neg: unloaded, not wanted" in text and "double (default): ready" in text
        assert zoo_serve(["models", "load", "nope", "-c", str(path)]) == 3
        assert "no model 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("partitions", [1, 3])
def test_on_unload_fail_answers_an_unloaded_models_records_with_an_error(
    repo: Path, redis_url: str, redis_client: Any, stream: str, tmp_path: Path, partitions: int
) -> None:
    cfg = config(repo, redis_url, stream, tmp_path, **{"repository.control": "explicit"})
    cfg["repository"].update(load=["double", "neg"], on_unload="fail")
    cfg["data"]["partitions"] = partitions
    x = np.ones(4, np.float32)
    with Server(cfg) as server, InputQueue(url=redis_url, name=stream, model="neg") as neg:
        assert neg.partitions == partitions
        np.testing.assert_allclose(neg.predict(x, timeout=30), direct(repo / "neg/2/m.onnx", x))
        server.models.unload("neg", wait_s=60)
        with pytest.raises(ModelUnloadedError, match="model 'neg' is unloaded"):
            neg.predict(x, timeout=30)
        # records of every partition are answered, not only the stream's own
        answers = neg.predict_many([x] * 12, timeout=30, return_exceptions=True)
        assert all(isinstance(a, ModelUnloadedError) for a in answers), answers
        server.models.load("neg", wait_s=60)
        np.testing.assert_allclose(neg.predict(x, timeout=30), direct(repo / "neg/2/m.onnx", x))
