"""The sections of ``config.yaml``: one frozen, keyword-only dataclass each, every field with
its checker and its one-line doc (what ``zoo-serve init`` writes)."""

from __future__ import annotations

from dataclasses import dataclass

from .checks import (
    CONTROLS,
    ENGINES,
    ON_UNLOAD,
    RUNNERS,
    check_backend,
    check_bool,
    check_memory,
    check_names,
    check_path,
    check_port,
    check_redis_port,
    check_shape,
    check_size,
    check_src,
    check_str,
    check_stream,
    choice_checker,
    float_checker,
    int_checker,
    opt,
)


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """``model:`` the model to serve."""

    path: str | None = opt(None, check_path, "model directory (or file); this or repository")
    repository: str | None = opt(
        None, check_path, "many models: a folder of <name>/<version>/<files>; this or path"
    )
    backend: str | None = opt(
        None, check_backend, "framework; detected from the directory when empty"
    )
    signature: str = opt("serving_default", check_str, "TensorFlow SavedModel signature to serve")


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """``data:`` where records come from and where results go."""

    src: str | None = opt(
        None,
        check_src,
        "host:port, redis[s]:// URL, redis[s]+cluster://h1:p1,h2:p2 (Redis Cluster) or "
        "redis[s]+sentinel://h1:p1,h2:p2/master (Sentinel); empty: localhost:<embedded_port>, "
        "embedded if absent",
    )
    embedded_port: int = opt(
        6379, check_redis_port, "port of the embedded redis-server used when src is empty"
    )
    shape: tuple[int, ...] = opt(
        (3, 224, 224), check_shape, "input shape without batch: C,H,W for images (resized to it)"
    )
    stream: str = opt("serving_stream", check_stream, "input Redis stream")
    group: str = opt("serving", check_stream, "consumer group of the workers")
    result_ttl_s: int = opt(3600, int_checker(1), "seconds a result key lives")
    password: str | None = opt(None, check_str, "Redis password (AUTH)")
    username: str | None = opt(None, check_str, "Redis ACL user")
    sentinel_password: str | None = opt(
        None, check_str, "password of the Sentinels themselves (their requirepass), if any"
    )
    tls_ca: str | None = opt(None, check_path, "CA certificate file for rediss://")
    tls_cert: str | None = opt(None, check_path, "client certificate file for rediss://")
    tls_key: str | None = opt(None, check_path, "client key file for rediss://")
    max_payload_bytes: int = opt(64 * 1024 * 1024, int_checker(1), "largest accepted payload")
    max_image_pixels: int = opt(
        64 * 1024 * 1024, int_checker(1), "largest image accepted, in pixels (width x height)"
    )
    max_queue_len: int = opt(
        0, int_checker(0), "bound on unprocessed records; clients get QueueFullError; 0: none"
    )
    partitions: int = opt(
        1,
        int_checker(1),
        "streams a model's records are spread over (by uri), each in its own Redis Cluster "
        "slot; 1: the one stream data.stream",
    )
    replica_acks: int = opt(
        0,
        int_checker(0),
        "replicas that must have a record (WAIT) before its client is told it is in, and a "
        "result before the worker goes on; 0: do not wait",
    )
    replica_timeout_ms: int = opt(
        1000, int_checker(1), "longest WAIT for data.replica_acks replicas"
    )


@dataclass(frozen=True, kw_only=True)
class ParamsConfig:
    """``params:`` batching, answers and execution."""

    batch_size: int = opt(4, int_checker(1), "largest batch the model runs")
    top_n: int = opt(1, int_checker(0), "classes per answer; 0 returns the output tensor")
    engine_type: str = opt("mklblas", choice_checker(ENGINES), "execution engine")
    max_wait_ms: float = opt(5.0, float_checker(0.0), "longest wait for a batch to fill")
    runner: str = opt("threads", choice_checker(RUNNERS), "where workers run")
    workers: int = opt(1, int_checker(1), "worker count (processes, Ray actors)")
    threads: int = opt(0, int_checker(0), "framework threads per worker; 0: all cores")
    max_deliveries: int = opt(
        3, int_checker(1), "deliveries before a record goes to the dead-letter stream"
    )
    claim_idle_ms: int = opt(
        30000, int_checker(100), "a record pending this long on a silent worker is taken over"
    )
    batch_timeout_s: float = opt(
        60.0,
        float_checker(0.0),
        "longest a batch may run; past it the worker gives the batch up and is replaced or "
        "reports unhealthy, and its records are retried one at a time; 0: no limit",
    )
    memory_budget: int = opt(
        0, check_size, "memory a worker's models may take, e.g. 4g; LRU idle ones go; 0: none"
    )
    max_loads: int = opt(1, int_checker(1), "model loads at a time per worker")
    slots: int = opt(0, int_checker(0), "execution slots per worker; 0: one per core (1 model: 1)")


@dataclass(frozen=True, kw_only=True)
class LogConfig:
    """``log:`` logs and summaries."""

    error: bool = opt(True, check_bool, "write the error log (y/n)")
    summary: bool = opt(False, check_bool, "write TensorBoard summaries (y/n)")
    dir: str | None = opt(
        None, check_path, "work directory: pid, logs, embedded Redis; default .zoo-serving"
    )
    metrics_port: int = opt(0, check_port, "port of the Prometheus /metrics endpoint; 0: off")
    metrics_host: str = opt(
        "127.0.0.1", check_str, "address the metrics endpoint binds; 0.0.0.0 for every interface"
    )


@dataclass(frozen=True, kw_only=True)
class SparkConfig:
    """``spark:`` settings of the spark runner."""

    master: str = opt("local[*]", check_str, "Spark master URL")
    driver_memory: str = opt("4g", check_memory, "spark.driver.memory")
    executor_memory: str = opt("1g", check_memory, "spark.executor.memory")
    num_executors: int = opt(1, int_checker(1), "spark.executor.instances")
    executor_cores: int = opt(4, int_checker(1), "spark.executor.cores")
    total_executor_cores: int = opt(4, int_checker(1), "spark.cores.max")


@dataclass(frozen=True, kw_only=True)
class RayConfig:
    """``ray:`` settings of the ray runner."""

    address: str | None = opt(None, check_str, "existing cluster; empty: a local Ray")


@dataclass(frozen=True, kw_only=True)
class HttpConfig:
    """``http:`` the HTTP front door (POST /predict, KServe v2), a client of the same stream."""

    port: int = opt(0, check_port, "port of the HTTP front door; 0: off")
    host: str = opt(
        "127.0.0.1", check_str, "address the HTTP front door binds; 0.0.0.0 for every interface"
    )
    timeout_s: float = opt(30.0, float_checker(0.001), "longest an HTTP request waits")
    model_name: str | None = opt(
        None, check_str, "the model's name in /v2/models/<name>; empty: from model.path"
    )
    processes: int = opt(
        1,
        int_checker(0),
        "processes serving HTTP beside the server's own (each a queue client on the same "
        "port); 0: a thread of the server's process, which shares its GIL with the workers",
    )


@dataclass(frozen=True, kw_only=True)
class RepositoryConfig:
    """``repository:`` how the models of ``model.repository`` are loaded and unloaded."""

    control: str = opt(
        "static", choice_checker(CONTROLS), "static: as found at start; poll: follow the folder"
    )
    poll_s: float = opt(5.0, float_checker(0.1), "poll: seconds between scans of the repository")
    default: str | None = opt(
        None, check_stream, "the model served on data.stream; empty: the only model, if one"
    )
    load: tuple[str, ...] = opt((), check_names, "explicit: models loaded at start (a list)")
    on_unload: str = opt(
        "keep", choice_checker(ON_UNLOAD), "keep: queued records wait; fail: model_unloaded"
    )
