"""``config.yaml`` -> frozen, validated config objects.

The seed's file (``model`` / ``data`` / ``params`` / ``log`` / ``spark``, every key optional but
``model.path``, an empty value meaning the default) loads unchanged. Extension keys live in the
same nesting. Every key is checked: an unknown key or a bad value raises :class:`ConfigError`
naming the key, the value and what is allowed.

Example::

    cfg = load_config({"model": {"path": "resnet"}, "params": {"batch_size": 8}})
    cfg.params.batch_size  # 8
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = [
    "Config",
    "DataConfig",
    "HttpConfig",
    "LogConfig",
    "ModelConfig",
    "ParamsConfig",
    "RayConfig",
    "SparkConfig",
    "load_config",
]

RUNNERS = ("threads", "processes", "spark", "ray")
ENGINES = ("mklblas", "openvino")
BACKENDS = ("onnx", "torch", "tensorflow", "openvino", "caffe", "bigdl")
_TRUE = {"y", "yes", "true", "on", "1"}
_FALSE = {"n", "no", "false", "off", "0"}
_STREAM_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")
_MEMORY_RE = re.compile(r"^\d+[kmgtKMGT]?[bB]?$")


# ---------------------------------------------------------------- value checkers


def _check_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"{key}: expected y or n, got {value!r}", key=key, value=value)


def _int_checker(minimum: int) -> Callable[[str, Any], int]:
    def check(key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(
                f"{key}: expected an integer >= {minimum}, got {value!r}", key=key, value=value
            )
        try:
            number = int(str(value).strip())
        except ValueError:
            raise ConfigError(
                f"{key}: expected an integer >= {minimum}, got {value!r}", key=key, value=value
            ) from None
        if number < minimum:
            raise ConfigError(
                f"{key}: expected an integer >= {minimum}, got {value!r}", key=key, value=value
            )
        return number

    return check


def _float_checker(minimum: float) -> Callable[[str, Any], float]:
    def check(key: str, value: Any) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = float("nan")
        if isinstance(value, bool) or not number >= minimum:
            raise ConfigError(
                f"{key}: expected a number >= {minimum}, got {value!r}", key=key, value=value
            )
        return number

    return check


def _choice_checker(choices: tuple[str, ...]) -> Callable[[str, Any], str]:
    def check(key: str, value: Any) -> str:
        text = str(value).strip().lower()
        if text not in choices:
            raise ConfigError(
                f"{key}: expected one of {', '.join(choices)}, got {value!r}", key=key, value=value
            )
        return text

    return check


def _check_backend(key: str, value: Any) -> str:
    """A backend name, or ``package.module:Class`` for a third-party Model."""
    text = str(value).strip()
    if ":" in text and all(part.strip() for part in text.split(":", 1)):
        return text
    return _choice_checker(BACKENDS)(key, value)


def _check_str(key: str, value: Any) -> str:
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ConfigError(f"{key}: expected a string, got {value!r}", key=key, value=value)
    return str(value)


def _check_shape(key: str, value: Any) -> tuple[int, ...]:
    """``3,224,224`` or ``[3, 224, 224]`` -> (3, 224, 224); images need three dims (C,H,W)."""
    hint = f"{key}: expected comma-separated positive integers like 3,224,224, got {value!r}"
    if isinstance(value, (list, tuple)):
        parts = [str(v) for v in value]
    elif isinstance(value, str):
        parts = [p for p in value.replace("[", "").replace("]", "").split(",")]
    else:
        raise ConfigError(hint, key=key, value=value)
    try:
        dims = tuple(int(p.strip()) for p in parts)
    except ValueError:
        raise ConfigError(hint, key=key, value=value) from None
    if not dims or len(dims) > 8 or any(d <= 0 for d in dims):
        raise ConfigError(hint, key=key, value=value)
    return dims


def _check_src(key: str, value: Any) -> str:
    text = str(value).strip()
    if text.startswith(("redis://", "rediss://", "unix://")):
        return text
    host, sep, port = text.rpartition(":")
    if sep and host and port.isdigit() and 0 < int(port) < 65536:
        return text
    raise ConfigError(
        f"{key}: expected host:port (like localhost:6379) or a redis:// or rediss:// URL, "
        f"got {value!r}",
        key=key,
        value=value,
    )


def _check_stream(key: str, value: Any) -> str:
    text = str(value).strip()
    if not _STREAM_RE.match(text):
        raise ConfigError(
            f"{key}: expected letters, digits, '_', '.' or '-' only, got {value!r}",
            key=key,
            value=value,
        )
    return text


def _check_memory(key: str, value: Any) -> str:
    text = str(value).strip()
    if not _MEMORY_RE.match(text):
        raise ConfigError(
            f"{key}: expected a size like 512m or 4g, got {value!r}", key=key, value=value
        )
    return text


def _check_path(key: str, value: Any) -> str:
    text = _check_str(key, value).strip()
    if not text:
        raise ConfigError(f"{key}: expected a path, got {value!r}", key=key, value=value)
    return os.path.expanduser(text)


def _check_port(key: str, value: Any) -> int:
    port = _int_checker(0)(key, value)
    if port > 65535:
        raise ConfigError(
            f"{key}: expected a TCP port 1-65535, or 0 for off, got {value!r}", key=key, value=value
        )
    return port


def _opt(default: Any, check: Callable[[str, Any], Any], doc: str) -> Any:
    return field(default=default, metadata={"check": check, "doc": doc})


# ---------------------------------------------------------------- sections


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """``model:`` the model to serve."""

    path: str | None = _opt(None, _check_path, "model directory (or file); required")
    backend: str | None = _opt(
        None, _check_backend, "framework; detected from the directory when empty"
    )
    signature: str = _opt("serving_default", _check_str, "TensorFlow SavedModel signature to serve")


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """``data:`` where records come from and where results go."""

    src: str | None = _opt(
        None, _check_src, "host:port or redis[s]:// URL; empty: localhost:6379, embedded if absent"
    )
    shape: tuple[int, ...] = _opt(
        (3, 224, 224), _check_shape, "input shape without batch: C,H,W for images (resized to it)"
    )
    stream: str = _opt("serving_stream", _check_stream, "input Redis stream")
    group: str = _opt("serving", _check_stream, "consumer group of the workers")
    result_ttl_s: int = _opt(3600, _int_checker(1), "seconds a result key lives")
    password: str | None = _opt(None, _check_str, "Redis password (AUTH)")
    username: str | None = _opt(None, _check_str, "Redis ACL user")
    tls_ca: str | None = _opt(None, _check_path, "CA certificate file for rediss://")
    tls_cert: str | None = _opt(None, _check_path, "client certificate file for rediss://")
    tls_key: str | None = _opt(None, _check_path, "client key file for rediss://")
    max_payload_bytes: int = _opt(64 * 1024 * 1024, _int_checker(1), "largest accepted payload")
    max_image_pixels: int = _opt(
        64 * 1024 * 1024, _int_checker(1), "largest image accepted, in pixels (width x height)"
    )
    max_queue_len: int = _opt(
        0, _int_checker(0), "bound on unprocessed records; clients get QueueFullError; 0: none"
    )


@dataclass(frozen=True, kw_only=True)
class ParamsConfig:
    """``params:`` batching, answers and execution."""

    batch_size: int = _opt(4, _int_checker(1), "largest batch the model runs")
    top_n: int = _opt(1, _int_checker(0), "classes per answer; 0 returns the output tensor")
    engine_type: str = _opt("mklblas", _choice_checker(ENGINES), "execution engine")
    max_wait_ms: float = _opt(5.0, _float_checker(0.0), "longest wait for a batch to fill")
    runner: str = _opt("threads", _choice_checker(RUNNERS), "where workers run")
    workers: int = _opt(1, _int_checker(1), "worker count (processes, Ray actors)")
    threads: int = _opt(0, _int_checker(0), "framework threads per worker; 0: all cores")
    max_deliveries: int = _opt(
        3, _int_checker(1), "deliveries before a record goes to the dead-letter stream"
    )
    claim_idle_ms: int = _opt(
        30000, _int_checker(100), "a record pending this long on a silent worker is taken over"
    )


@dataclass(frozen=True, kw_only=True)
class LogConfig:
    """``log:`` logs and summaries."""

    error: bool = _opt(True, _check_bool, "write the error log (y/n)")
    summary: bool = _opt(False, _check_bool, "write TensorBoard summaries (y/n)")
    dir: str | None = _opt(
        None, _check_path, "work directory: pid, logs, embedded Redis; default .zoo-serving"
    )
    metrics_port: int = _opt(0, _check_port, "port of the Prometheus /metrics endpoint; 0: off")
    metrics_host: str = _opt(
        "127.0.0.1", _check_str, "address the metrics endpoint binds; 0.0.0.0 for every interface"
    )


@dataclass(frozen=True, kw_only=True)
class SparkConfig:
    """``spark:`` settings of the spark runner."""

    master: str = _opt("local[*]", _check_str, "Spark master URL")
    driver_memory: str = _opt("4g", _check_memory, "spark.driver.memory")
    executor_memory: str = _opt("1g", _check_memory, "spark.executor.memory")
    num_executors: int = _opt(1, _int_checker(1), "spark.executor.instances")
    executor_cores: int = _opt(4, _int_checker(1), "spark.executor.cores")
    total_executor_cores: int = _opt(4, _int_checker(1), "spark.cores.max")


@dataclass(frozen=True, kw_only=True)
class RayConfig:
    """``ray:`` settings of the ray runner."""

    address: str | None = _opt(None, _check_str, "existing cluster; empty: a local Ray")


@dataclass(frozen=True, kw_only=True)
class HttpConfig:
    """``http:`` the HTTP front door (POST /predict, KServe v2), a client of the same stream."""

    port: int = _opt(0, _check_port, "port of the HTTP front door; 0: off")
    host: str = _opt(
        "127.0.0.1", _check_str, "address the HTTP front door binds; 0.0.0.0 for every interface"
    )
    timeout_s: float = _opt(30.0, _float_checker(0.001), "longest an HTTP request waits")
    model_name: str | None = _opt(
        None, _check_str, "the model's name in /v2/models/<name>; empty: from model.path"
    )


_SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "params": ParamsConfig,
    "log": LogConfig,
    "spark": SparkConfig,
    "ray": RayConfig,
    "http": HttpConfig,
}


@dataclass(frozen=True, kw_only=True)
class Config:
    """The whole serving config; build it with :func:`load_config`."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    params: ParamsConfig = field(default_factory=ParamsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    source: str | None = None  # the file it was read from, if any

    def __post_init__(self) -> None:
        if not self.model.path:
            raise ConfigError(
                "model.path: expected the model directory, got nothing; set model.path in "
                "config.yaml",
                key="model.path",
                value=self.model.path,
            )

    @property
    def work_dir(self) -> Path:
        """Where the pid file, logs and the embedded Redis live."""
        if self.log.dir:
            return Path(self.log.dir)
        base = Path(self.source).parent if self.source else Path.cwd()
        return base / ".zoo-serving"

    def replace(self, **dotted: Any) -> Config:
        """A copy with ``section.key`` values changed and validated.

        Example: ``cfg.replace(**{"params.runner": "ray"})``.
        """
        raw = to_dict(self)
        for key, value in dotted.items():
            section, _, name = key.partition(".")
            if section not in _SECTIONS:
                raise ConfigError(_unknown(key, list(_SECTIONS)), key=key, value=value)
            raw.setdefault(section, {})[name] = value
        return load_config(raw, source_path=self.source)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every section, fit for YAML and for shipping to remote workers."""
        return to_dict(self)


def _unknown(key: str, allowed: list[str]) -> str:
    return f"{key}: unknown key; allowed: {', '.join(allowed)}"


def to_dict(cfg: Config) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in _SECTIONS:
        section = dataclasses.asdict(getattr(cfg, name))
        if "shape" in section:
            section["shape"] = ",".join(str(d) for d in section["shape"])
        out[name] = section
    return out


def _build_section(name: str, raw: Any) -> Any:
    cls = _SECTIONS[name]
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{name}: expected a mapping of keys, got {raw!r}", key=name, value=raw)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        dotted = f"{name}.{key}"
        if key not in fields:
            raise ConfigError(_unknown(dotted, sorted(fields)), key=dotted, value=value)
        if value is None or (isinstance(value, str) and not value.strip()):
            continue  # the seed's empty value means "the default"
        values[key] = fields[key].metadata["check"](dotted, value)
    return cls(**values)


def load_config(
    source: str | os.PathLike[str] | Mapping[str, Any] | Config | None = None,
    *,
    source_path: str | None = None,
    **overrides: Any,
) -> Config:
    """Load and validate a config from a YAML path, a mapping or a :class:`Config`.

    Args:
        source: path of a ``config.yaml``, a mapping shaped like one, or a ready Config.
        source_path: with a mapping, the file it stands for (sets the default work dir).
        **overrides: ``section.key`` values applied on top, e.g. ``**{"params.runner": "ray"}``.

    Raises:
        ConfigError: naming the key, the value and what is allowed.
    """
    if isinstance(source, Config):
        return source.replace(**overrides) if overrides else source
    path = source_path
    if source is None:
        raw: Any = {}
    elif isinstance(source, Mapping):
        raw = source
    else:
        path = os.fspath(source)
        raw = _read_yaml(path)
    if not isinstance(raw, Mapping):
        raise ConfigError(f"config: expected a mapping of sections, got {raw!r}", value=raw)
    for key in raw:
        if key not in _SECTIONS:
            raise ConfigError(_unknown(str(key), list(_SECTIONS)), key=key, value=raw[key])
    sections = {name: _build_section(name, raw.get(name)) for name in _SECTIONS}
    cfg = Config(**sections, source=os.path.abspath(path) if path else None)
    return cfg.replace(**overrides) if overrides else cfg


def _read_yaml(path: str) -> Any:
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            return yaml.safe_load(fh) or {}
    except FileNotFoundError:
        raise ConfigError(
            f"config: file {path!r} not found; write one with `zoo-serve init`", value=path
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config: {path!r} is not valid YAML: {exc}", value=path) from None


def default_config_text(model_path: str = "/path/to/model") -> str:
    """The commented ``config.yaml`` that ``zoo-serve init`` writes."""
    lines = ["## zoo_serving config. Empty values take the default shown.", ""]
    for name, cls in _SECTIONS.items():
        lines.append(f"{name}:")
        for f in dataclasses.fields(cls):
            default = f.default
            if isinstance(default, tuple):
                default = ",".join(str(d) for d in default)
            elif isinstance(default, bool):
                default = "y" if default else "n"
            lines.append(
                f"  # {f.metadata['doc']} (default: {default if default is not None else 'empty'})"
            )
            value = model_path if (name, f.name) == ("model", "path") else ""
            lines.append(f"  {f.name}: {value}".rstrip())
        lines.append("")
    return "\n".join(lines)
