"""Helpers the tests share: the frameworks' own answers, and how to compare with them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from zoo_serving import keys
from zoo_serving.backends.base import TensorSpec
from zoo_serving.serving.preprocess import Preprocessor
from zoo_serving.wire.native import RawInput, decode_full

SRC = Path(__file__).resolve().parents[1] / "src"


def cli_env() -> dict[str, str]:
    """The environment of a ``zoo-serve`` child: this checkout's package first on the path,
    whatever PYTHONPATH the test set (a relative one, or a plug-in directory)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    return env


def zoo_serve(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``zoo-serve ARGS`` in ``cwd`` as a user would; its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "zoo_serving", *args],
        cwd=cwd,
        text=True,
        capture_output=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env=cli_env(),
    )


def plain_config(where: Path, model: dict, data: dict, **sections: dict) -> Path:
    """``where/config.yaml`` written directly (one process less than `zoo-serve init`)."""
    import yaml

    raw = {"model": model, "data": {"shape": "3,32,32", **data}, **sections}
    where.mkdir(parents=True, exist_ok=True)
    (where / "config.yaml").write_text(yaml.safe_dump(raw))
    return where / "config.yaml"


def wait_for(check: object, timeout_s: float = 30.0, what: str = "") -> None:
    """Poll ``check()`` every 50 ms until it is true; fail after ``timeout_s``."""
    import time

    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what or check}"
        time.sleep(0.05)


def status_of(where: Path) -> tuple[int, dict]:
    """``zoo-serve status --json`` in ``where``: exit code and the parsed answer."""
    import json

    result = zoo_serve("status", "--json", cwd=where)
    return result.returncode, json.loads(result.stdout)


PLUGIN_BACKENDS = '''
import os
import time
from pathlib import Path
from typing import Any

from zoo_serving.backends.onnx_runtime import OnnxModel


def _wait_for_gate():
    deadline = time.monotonic() + 60
    while not Path(os.environ["ZS_TEST_GATE"]).exists() and time.monotonic() < deadline:
        time.sleep(0.05)


class GatedOnnx(OnnxModel):
    """An ONNX model whose load waits for a file: holds a server in its not-ready window."""

    def _load(self):
        _wait_for_gate()
        super()._load()


class SlowOnnx(OnnxModel):
    """An ONNX model whose batches holding a 7 wait for the file: holds a server mid-drain."""

    def _predict(self, batch):
        if any((x == 7).any() for x in batch.values()):
            _wait_for_gate()
        return super()._predict(batch)
'''


def plugin_backends(where: Path, monkeypatch: object) -> Path:
    """Backends ``gated_backend:GatedOnnx`` and ``gated_backend:SlowOnnx`` importable by
    ``zoo-serve`` children, both waiting for the file ``where/gate`` (returned); and
    ``crash_backend``, whose import ends the process with code 7 and not a word."""
    (where / "plugins").mkdir(parents=True, exist_ok=True)
    (where / "plugins" / "gated_backend.py").write_text(PLUGIN_BACKENDS)
    (where / "plugins" / "crash_backend.py").write_text("import os\n\nos._exit(7)\n")
    monkeypatch.setenv("PYTHONPATH", str(where / "plugins"))  # type: ignore[attr-defined]
    monkeypatch.setenv("ZS_TEST_GATE", str(where / "gate"))  # type: ignore[attr-defined]
    return where / "gate"


def onnx_direct(model_dir: Path, batch: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(
        str(next(model_dir.glob("*.onnx"))), providers=["CPUExecutionProvider"]
    )
    return sess.run(None, {"input": batch})[0]


def torch_direct(model_dir: Path, batch: np.ndarray) -> np.ndarray:
    import torch

    module = torch.jit.load(str(next(model_dir.glob("*.pt")))).eval()
    with torch.inference_mode():
        return module(torch.from_numpy(batch)).numpy()


DIRECT = {"onnx": onnx_direct, "torch": torch_direct}


def decoded_image(data: bytes) -> np.ndarray:
    """The image as the server decodes it (OpenCV, BGR, float32, CHW 3x32x32)."""
    spec = TensorSpec("input", np.dtype(np.float32), (None, 3, 32, 32))
    return Preprocessor([spec], (3, 32, 32)).decode(RawInput("input", "image", data), spec)


def assert_top_n(served: list, scores: np.ndarray, n: int) -> None:
    order = np.argsort(-scores, kind="stable")[:n]
    assert [i for i, _ in served] == order.tolist()
    np.testing.assert_allclose([p for _, p in served], scores[order], rtol=0, atol=1e-5)


# ------------------------------------------------------------------ models that misbehave

HANG = -555.0  # a record whose first value is this makes the sentinel model loop hang_iters
CRASH = -777.0  # ... and this makes it kill its process (SIGFPE in an integer division)


def build_sentinel_model(path: Path, *, slow_iters: int = 0, hang_iters: int = 0) -> Path:
    """A TorchScript classifier (softmax of a linear layer over the channel means, 5 classes)
    that spins ``slow_iters`` loop steps on every batch, ``hang_iters`` more on a batch holding
    a :data:`HANG` record, and dies of SIGFPE (``torch.div`` of INT64_MIN by -1, which the CPU
    traps) on a batch holding a :data:`CRASH` record. A real model, run by PyTorch: the
    misbehaviour is the framework's own."""
    import torch

    torch.manual_seed(0)
    module = torch.jit.script(_Sentinel(slow_iters, hang_iters).eval())
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(module, str(path))
    return path


def loop_steps_per_s() -> float:
    """How many sentinel-model loop steps this machine runs per second now (one thread)."""
    import time

    import torch

    module = torch.jit.script(_Sentinel(0, 20_000).eval())
    x = np.zeros((1, 3, 4, 4), np.float32)
    x[0, 0, 0, 0] = HANG
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        module(torch.from_numpy(x))  # compiled on the first call
        started = time.perf_counter()
        module(torch.from_numpy(x))
        return 20_000 / (time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)


def sentinel_direct(model_dir: Path, batch: np.ndarray) -> np.ndarray:
    """What PyTorch itself answers for ``batch`` (no sentinel records in it)."""
    return torch_direct(model_dir, batch)


def _sentinel_class() -> type:
    import torch
    from torch import nn

    class Sentinel(nn.Module):
        def __init__(self, slow_iters: int, hang_iters: int) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 5)
            self.slow_iters = slow_iters
            self.hang_iters = hang_iters

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            first = x.reshape(x.shape[0], -1)[:, 0]
            steps = self.slow_iters
            if bool((first == -555.0).any()):
                steps = steps + self.hang_iters
            acc = torch.zeros(1)
            for _ in range(steps):
                acc = acc * 0.5 + 1.0
            if bool((first == -777.0).any()):
                ones = torch.ones_like(first, dtype=torch.long)
                int64_min = torch.full_like(first, -(2.0**63), dtype=torch.long)
                big = torch.where(first == -777.0, int64_min, ones)
                acc = acc + torch.div(big, -ones, rounding_mode="trunc").sum().to(acc.dtype)
            return torch.softmax(self.fc(x.mean(dim=(2, 3))), dim=1) + 0.0 * acc

    return Sentinel


def _Sentinel(slow_iters: int, hang_iters: int) -> object:  # noqa: N802 - a class, built lazily
    return _sentinel_class()(slow_iters, hang_iters)


# ------------------------------------------------------------------ model repositories


def scale_model(path: Path, factor: float) -> Path:
    """A real ONNX model: ``y = x * factor`` on ``x`` of shape [N, 4]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    k = numpy_helper.from_array(np.full((4,), factor, np.float32), "k")
    graph = helper.make_graph([helper.make_node("Mul", ["x", "k"], ["y"])], "s", [x], [y], [k])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def scale_direct(path: Path, x: np.ndarray) -> np.ndarray:
    """What ONNX Runtime itself computes for ``x``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x[None]})[0][0]


def answer_of(db: Any, stream: str, uri: str, timeout_s: float = 30) -> Any:
    """The result of ``uri`` on ``stream`` (native), with the model and version that gave it."""

    reply = db.blpop([keys.result(stream, uri)], timeout=timeout_s)
    assert reply is not None, f"no result for {uri} on {stream}"
    return decode_full(reply[1])


class SwapUnderLoad:
    """A hot swap of model ``m`` (version 1, ``x * 2``, to version 2, ``x * 3``) under a steady
    load, as the repository tests of every runner run it: start the load, copy version 2 into
    the repository (``repository.control: poll``), optionally kill a worker meanwhile, wait
    until every live worker serves version 2, stop the load, and check every record got
    exactly one answer, from either version, with nothing pending or dead-lettered."""

    def __init__(self, root: Path, redis_url: str, stream: str) -> None:
        import threading

        self.root = root
        self.redis_url = redis_url
        self.stream = stream
        self.sent: list[tuple[str, np.ndarray]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._send, daemon=True)
        scale_model(root / "m" / "1" / "m.onnx", 2.0)

    def config(self, work: Path, runner: str, **params: Any) -> dict[str, Any]:
        return {
            "model": {"repository": str(self.root)},
            "data": {"src": self.redis_url, "stream": self.stream, "shape": "4"},
            "params": {
                "top_n": 0,
                "batch_size": 4,
                "runner": runner,
                "workers": 2,
                "claim_idle_ms": 1000,
                **params,
            },  # fmt: skip
            "repository": {"control": "poll", "poll_s": 0.2},
            "log": {"dir": str(work)},
        }

    def _send(self) -> None:
        import time

        from zoo_serving import InputQueue

        rng = np.random.default_rng(3)
        with InputQueue(url=self.redis_url, name=self.stream, model="m") as queue:
            while not self._stop.is_set():
                x = rng.normal(size=4).astype(np.float32)
                uri = f"r{len(self.sent)}"
                queue.enqueue(uri, t=x)
                self.sent.append((uri, x))
                time.sleep(0.003)

    def run(self, server: Any, kill: Any = None, timeout_s: float = 90) -> None:
        """The swap, with ``kill()`` called once version 2 is on its way."""
        import shutil
        import time

        self._thread.start()
        time.sleep(1.0)
        staging = scale_model(self.root.parent / "staging" / "m.onnx", 3.0)
        (self.root / "m" / "2").mkdir()
        shutil.copy(staging, self.root / "m" / "2")
        if kill is not None:
            time.sleep(0.3)
            kill()
        deadline = time.monotonic() + timeout_s
        while True:
            workers = server.models.get("m").workers
            if workers and all(w.get("current") == 2 for w in workers.values()):
                break
            assert time.monotonic() < deadline, f"not every worker swapped: {workers}"
            time.sleep(0.1)
        time.sleep(1.0)
        self._stop.set()
        self._thread.join()
        # every record answered before the server stops (a stop leaves unread records queued,
        # and a killed worker's are taken over only after claim_idle_ms)
        import redis

        db = redis.Redis.from_url(self.redis_url)
        try:
            while db.llen(keys.finished(self.stream)) < len(self.sent):
                assert time.monotonic() < deadline + 60, (
                    f"{len(self.sent) - db.llen(keys.finished(self.stream))} records unanswered"
                )
                time.sleep(0.05)
        finally:
            db.close()

    def check(self, redis_client: Any) -> None:
        versions = []
        for uri, x in self.sent:
            got = answer_of(redis_client, self.stream, uri, timeout_s=60)
            assert got.model == "m", (uri, got.value)
            np.testing.assert_allclose(got.value, x * {1: 2.0, 2: 3.0}[got.version], rtol=1e-6)
            versions.append(got.version)
        assert {1, 2} <= set(versions)
        assert redis_client.xpending(self.stream, "serving")["pending"] == 0
        assert redis_client.xlen(keys.dead_letter(self.stream)) == 0
        assert redis_client.xlen(self.stream) == 0


# ------------------------------------------------------------------ what a server shows of itself

NOT_A_JPEG = b"\xff\xd8 not a jpeg"  # a record that fails decoding (code "decode")


def scrape(url: str) -> dict[str, dict[tuple, float]]:
    """/metrics as {sample name: {sorted label items: value}}."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url, timeout=5).text
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def scrape_when(
    url: str, succeeded: int, failed: dict[str, int], workers: int, timeout_s: float = 20.0
) -> dict[str, dict[tuple, float]]:
    """/metrics once its unlabelled series count ``succeeded`` records, ``failed`` by reason
    and ``workers`` serving (workers in other processes tell with their next heartbeat)."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        now = scrape(url)
        seen = (
            now.get("zoo_serving_records_succeeded_total", {}).get(()),
            {
                dict(k)["reason"]: v
                for k, v in now.get("zoo_serving_records_failed_total", {}).items()
            },
            now.get("zoo_serving_workers", {}).get(()),
        )
        if seen == (succeeded, failed, workers):
            return now
        assert time.monotonic() < deadline, (
            f"/metrics shows {seen}, not {(succeeded, failed, workers)}"
        )
        time.sleep(0.2)


def summary_scalars(work_dir: Path) -> dict[str, list[float]]:
    """The scalars of the one TensorBoard run under ``work_dir/summary``, read by TensorBoard's
    own EventAccumulator: tag -> values in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = sorted((work_dir / "summary").iterdir())
    assert len(runs) == 1, runs
    events = EventAccumulator(str(runs[0]), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def assert_observed(
    sample: dict[str, dict[tuple, float]],
    scalars: dict[str, list[float]],
    error_log: str,
    good: int,
    bad: dict[str, str],
    workers: int,
    answered: int | None = None,
) -> None:
    """The three outputs of a server whose ``workers`` answered ``good`` records and the
    ``bad`` ones (uri -> error code): /metrics (``sample``, scraped while serving), the
    TensorBoard scalars and the error log, whatever runner ran the workers. ``answered``:
    the records answered by the time the server stopped, if more were sent after the scrape
    (default: the good and bad ones)."""
    from zoo_serving.observe.metrics import SUMMARY_TAGS
    from zoo_serving.observe.stats import STAGES

    assert sample["zoo_serving_records_succeeded_total"][()] == good
    failed: dict[str, int] = {}
    for code in bad.values():
        failed[code] = failed.get(code, 0) + 1
    reasons = sample["zoo_serving_records_failed_total"]
    assert {dict(k)["reason"]: v for k, v in reasons.items()} == failed
    assert sample["zoo_serving_workers"][()] == workers
    assert sample["zoo_serving_batch_size_sum"][()] == good  # bad records fail before batching
    batches = sample["zoo_serving_batch_size_count"][()]
    assert good / batches > 2, f"{good} records in {batches} batches: not batched"
    for stage in STAGES:
        assert sample["zoo_serving_stage_seconds_count"][(("stage", stage),)] > 0, stage

    assert set(SUMMARY_TAGS) <= set(scalars), scalars.keys()
    total = scalars["Total Records Number"]
    answered = good + len(bad) if answered is None else answered
    assert total == sorted(total) and total[-1] == answered, (total[-5:], answered)
    assert max(scalars["Partition Number"]) == workers, scalars["Partition Number"]
    for tag in ("Throughput", "Micro Batch Throughput"):
        assert scalars[tag] and all(v > 0 for v in scalars[tag]), tag

    for uri, code in bad.items():
        assert f"record failed uri={uri} code={code}: " in error_log, uri
    assert error_log.count("record failed") == len(bad)
