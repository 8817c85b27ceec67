"""Machinery of ``test_models.py``: a repository of MLPs of chosen cost, and load drivers: an
open or closed loop of :mod:`zoo_serving.bench` per model on the model's own stream, all in one
process (a thread each) unless asked apart, and repeated interleaved runs."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

IN = 256  # inputs of every MLP


def mlp(path: Path, hidden: int, seed: int = 0) -> Path:
    """An ONNX MLP ``[N, 256] -> hidden -> hidden -> 10`` with a softmax; its cost grows with
    ``hidden`` squared."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    dims = [IN, hidden, hidden, 10]
    nodes, inits, last = [], [], "x"
    for i, (a, b) in enumerate(zip(dims, dims[1:])):
        w = numpy_helper.from_array(
            (rng.normal(size=(a, b)) / np.sqrt(a)).astype(np.float32), f"w{i}"
        )
        inits.append(w)
        nodes.append(helper.make_node("MatMul", [last, f"w{i}"], [f"h{i}"]))
        last = f"h{i}"
        if i < len(dims) - 2:
            nodes.append(helper.make_node("Relu", [last], [f"r{i}"]))
            last = f"r{i}"
    nodes.append(helper.make_node("Softmax", [last], ["prob"], axis=1))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", IN])
    y = helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 10])
    graph = helper.make_graph(nodes, "mlp", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def repository(root: Path, hidden: Mapping[str, int], **model_yaml: str) -> Path:
    """``root/<name>/1/m.onnx`` for each name; ``model_yaml`` text per name, if given."""
    for i, (name, size) in enumerate(hidden.items()):
        mlp(root / name / "1" / "m.onnx", size, seed=i)
        if name in model_yaml:
            (root / name / "model.yaml").write_text(model_yaml[name])
    return root


def inputs(count: int = 16, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(size=IN).astype(np.float32)} for _ in range(count)]


@dataclass(frozen=True)
class Load:
    """One model's load: an open loop at ``rate`` records/s, or a closed loop of ``clients``."""

    stream: str
    rate: float = 0.0
    clients: int = 0


def _one(url: str, load: Load, duration_s: float, warmup_s: float) -> Any:
    from zoo_serving.bench import closed_loop, open_loop

    common = dict(duration_s=duration_s, warmup_s=warmup_s, server_split=False)
    if load.clients:
        return closed_loop(url, load.stream, inputs(), clients=load.clients, **common)
    return open_loop(url, load.stream, inputs(), rate=load.rate, **common)


def _child(
    conn: Any, url: str, loads: Mapping[str, Load], duration_s: float, warmup_s: float
) -> None:
    """Every load of ``loads`` at once, a thread each; their points (or the first error)."""
    import threading

    out: dict[str, Any] = {}

    def run(name: str, load: Load) -> None:
        try:
            out[name] = _one(url, load, duration_s, warmup_s)
        except BaseException as exc:  # the parent raises it
            out[name] = exc

    try:
        threads = [threading.Thread(target=run, args=item) for item in loads.items()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        errors = [f"{n}: {v!r}" for n, v in out.items() if isinstance(v, BaseException)]
        conn.send(("error", "; ".join(errors)) if errors else ("ok", out))
    finally:
        conn.close()


def drive(
    url: str,
    loads: Mapping[str, Load],
    duration_s: float,
    warmup_s: float = 1.0,
    apart: Sequence[str] = (),
) -> dict[str, Any]:
    """Run every load at once: those named in ``apart`` in a process each, the others in one
    process together, a thread each (so that "one model alone" and "four together" are driven
    by as many processes, and the comparison measures the server, not its load generators
    fighting over two cores); their :class:`LoadPoint` by name."""
    ctx = multiprocessing.get_context("spawn")
    groups = [{n: loads[n]} for n in apart]
    shared = {n: load for n, load in loads.items() if n not in apart}
    if shared:
        groups.append(shared)
    running = []
    for group in groups:
        reader, writer = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_child, args=(writer, url, group, duration_s, warmup_s))
        proc.start()
        writer.close()
        running.append((proc, reader))
    out: dict[str, Any] = {}
    for proc, reader in running:
        kind, value = reader.recv()
        proc.join(60)
        if kind != "ok":
            raise RuntimeError(f"load failed: {value}")
        out.update(value)
    return out


def rounds(
    runs: Mapping[str, Callable[[], Mapping[str, Any]]], times: int
) -> dict[str, list[Mapping[str, Any]]]:
    """Each of ``runs`` ``times`` times, interleaved (``a b c a b c ...``), so that a slow
    patch of a shared machine falls on every condition alike; each run's results in order,
    with ``"_busy"``: the share of the machine's CPU in use during the run (every process,
    the hypervisor's steal included)."""
    out: dict[str, list[Mapping[str, Any]]] = {name: [] for name in runs}
    for _ in range(times):
        for name, run in runs.items():
            since = _cpu()
            got = dict(run())
            now = _cpu()
            total = now[1] - since[1]
            got["_busy"] = (now[0] - since[0]) / total if total > 0 else 0.0
            out[name].append(got)
    return out


def busy(runs: Sequence[Mapping[str, Any]]) -> float:
    """The median share of the machine's CPU in use over ``runs`` (from :func:`rounds`)."""
    return float(np.median([r["_busy"] for r in runs]))


def _proc_stat() -> list[float]:
    """The machine's CPU times so far (all cores; /proc/stat's first line), or [] without it."""
    try:
        with open("/proc/stat") as f:
            return [float(v) for v in f.readline().split()[1:]]
    except OSError:
        return []


def _cpu() -> tuple[float, float]:
    """CPU seconds (all cores) so far: (in use or stolen, total), from /proc/stat."""
    fields = _proc_stat()
    idle = sum(fields[3:5])  # idle, iowait
    return sum(fields) - idle, sum(fields)


def quietest_p99(points: Sequence[Any]) -> float:
    """The lowest of the runs' p99s (ms): the run the VM's neighbours disturbed least."""
    return float(min(p99(point) for point in points))


def median_p99(points: Sequence[Any]) -> float:
    """The median over runs of each run's p99 (ms)."""
    return float(np.median([p99(point) for point in points]))


def steal() -> tuple[float, float]:
    """CPU seconds (all cores) so far: (stolen by the hypervisor, total), from /proc/stat."""
    fields = _proc_stat()
    return sum(fields[7:8]), sum(fields)


def steal_share(since: tuple[float, float]) -> float:
    """The share of the CPU the hypervisor took since ``since`` (a :func:`steal` reading)."""
    now = steal()
    total = now[1] - since[1]
    return (now[0] - since[0]) / total if total > 0 else 0.0


def p99(point: Any) -> float:
    return float(point.latency_ms.get("p99", float("nan")))
