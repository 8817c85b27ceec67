"""config.yaml -> frozen, validated Config: the seed's file, extensions, and every error path."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from zoo_serving.config import (
    Config,
    DataConfig,
    HttpConfig,
    LogConfig,
    ModelConfig,
    ParamsConfig,
    RayConfig,
    RepositoryConfig,
    SparkConfig,
    default_config_text,
    load_config,
)
from zoo_serving.errors import ConfigError

SEED_CONFIG = """\
## Analytics Zoo Cluster Serving Config Example

model:
  # model path must be set
  path: /opt/work/model
data:
  # default, localhost:6379
  src:
  # default, 3,224,224
  shape:
params:
  # default, 4
  batch_size:
  # default, 1
  top_n:
  # default, mklblas
  engine_type:
log:
  # default, y
  error:
  # default, n
  summary:
spark:
  # default, local[*], change this to spark://, yarn, k8s:// etc if you want to run on cluster
  master: local[*]
  # default, 4g
  driver_memory:
  # default, 1g
  executor_memory:
  # default, 1
  num_executors:
  # default, 4
  executor_cores:
  # default, 4
  total_executor_cores:
"""

FILLED_CONFIG = (
    SEED_CONFIG.replace("  src:\n", "  src: redis-host:6380\n")
    .replace("  shape:\n", "  shape: 3,32,32\n")
    .replace("  batch_size:\n", "  batch_size: 8\n")
    .replace("  error:\n", "  error: n\n")
    .replace("  summary:\n", "  summary: y\n")
)

SECTIONS = {
    "model": ModelConfig,
    "data": DataConfig,
    "params": ParamsConfig,
    "log": LogConfig,
    "spark": SparkConfig,
    "ray": RayConfig,
    "http": HttpConfig,
    "repository": RepositoryConfig,
}


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _load(section: str, key: str, value: object) -> Config:
    return load_config({"model": {"path": "/m"}, section: {key: value}})


# ---------------------------------------------------------------- the seed's file


def test_seed_config_loads_with_every_default(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, SEED_CONFIG))

    assert cfg.model.path == "/opt/work/model"
    assert cfg.model.backend is None
    assert cfg.data.src is None  # None means localhost:6379 (or the embedded Redis)
    assert cfg.data.shape == (3, 224, 224)
    assert cfg.params.batch_size == 4
    assert cfg.params.top_n == 1
    assert cfg.params.engine_type == "mklblas"
    assert cfg.log.error is True
    assert cfg.log.summary is False
    assert cfg.spark.master == "local[*]"
    assert cfg.spark.driver_memory == "4g"
    assert cfg.spark.executor_memory == "1g"
    assert cfg.spark.num_executors == 1
    assert cfg.spark.executor_cores == 4
    assert cfg.spark.total_executor_cores == 4


def test_seed_config_source_and_work_dir(tmp_path: Path) -> None:
    path = _write(tmp_path, SEED_CONFIG)
    cfg = load_config(path)
    assert cfg.source == str(path.resolve())
    assert cfg.work_dir == tmp_path.resolve() / ".zoo-serving"


@pytest.mark.parametrize(
    ("written", "shape"),
    [
        ("1000", (1000,)),  # a YAML integer
        ("[3, 224, 224]", (3, 224, 224)),  # a YAML flow list
        ("\n    - 3\n    - 32\n    - 32", (3, 32, 32)),  # a YAML block list
        ("[1000]", (1000,)),
        ("3,224,224", (3, 224, 224)),  # the seed's text
        ("'1000'", (1000,)),
    ],
)
def test_data_shape_as_a_yaml_integer_list_or_text(
    tmp_path: Path, written: str, shape: tuple[int, ...]
) -> None:
    cfg = load_config(_write(tmp_path, SEED_CONFIG.replace("  shape:\n", f"  shape: {written}\n")))
    assert cfg.data.shape == shape
    assert load_config(cfg.to_dict()).data.shape == shape  # as shipped to remote workers


@pytest.mark.parametrize(
    "written", ["0", "-3", "true", "3.5", "[3, 0, 4]", "[]", "[3, 2.5]", "[3, true]", "{c: 3}"]
)
def test_bad_data_shape_in_yaml_names_key_value_and_the_forms(tmp_path: Path, written: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, SEED_CONFIG.replace("  shape:\n", f"  shape: {written}\n")))
    message = str(info.value)
    assert message.startswith("data.shape: expected positive integers")
    assert "3,224,224" in message and "[3, 224, 224]" in message and "1000" in message
    assert message.endswith(f"got {yaml.safe_load(written)!r}")


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "app").mkdir()
    path = _write(tmp_path / "app", "model:\n  path: models/net\nlog:\n  dir: run\n")
    monkeypatch.chdir(tmp_path)  # not where the file is
    cfg = load_config(path)
    assert cfg.model.path == str(tmp_path.resolve() / "app" / "models" / "net")
    assert cfg.work_dir == tmp_path.resolve() / "app" / "run"
    assert load_config({"model": {"path": "/abs/net"}}).model.path == "/abs/net"
    assert cfg.replace(**{"params.batch_size": 8}).model.path == cfg.model.path


def test_embedded_port_is_checked_and_is_the_default_address() -> None:
    from zoo_serving.broker.connection import redis_url

    cfg = load_config({"model": {"path": "m"}, "data": {"embedded_port": 7000}})
    assert cfg.data.embedded_port == 7000 and redis_url(cfg.data) == "redis://localhost:7000"
    for bad in (0, 70000, "x"):
        with pytest.raises(ConfigError, match="data.embedded_port"):
            load_config({"model": {"path": "m"}, "data": {"embedded_port": bad}})


def test_seed_config_with_values_filled(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, FILLED_CONFIG))

    assert cfg.data.src == "redis-host:6380"
    assert cfg.data.shape == (3, 32, 32)
    assert cfg.params.batch_size == 8
    assert cfg.log.error is False
    assert cfg.log.summary is True
    # the untouched keys keep their defaults
    assert cfg.params.top_n == 1
    assert cfg.spark.driver_memory == "4g"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("y", True), ("yes", True), ("true", True), ("n", False), ("no", False), ("off", False)],
)
def test_yaml_booleans_and_letters_both_work(tmp_path: Path, text: str, expected: bool) -> None:
    cfg = load_config(_write(tmp_path, f"model:\n  path: /m\nlog:\n  error: {text}\n"))
    assert cfg.log.error is expected


def test_empty_sections_take_defaults() -> None:
    cfg = load_config({"model": {"path": "/m"}, "data": None, "params": {}})
    assert cfg.data == DataConfig()
    assert cfg.params == ParamsConfig()


@pytest.mark.parametrize(
    "src",
    [
        "redis://localhost:6379",
        "redis://:secret@redis-host:6380/2",
        "rediss://user:pw@redis.example.com:6380/0",
        "localhost:6379",
        "10.0.0.5:7000",
        "redis+cluster://10.0.0.1:7000,10.0.0.2:7001",
        "rediss+cluster://user:pw@h1:7000",
        "redis+sentinel://:pw@s1:26379,s2:26379,s3:26379/mymaster",
    ],
)
def test_data_src_accepts_host_port_and_urls(src: str) -> None:
    assert _load("data", "src", src).data.src == src


@pytest.mark.parametrize(
    ("src", "says"),
    [
        ("redis+cluster://h1:7000,h2", "bad seed 'h2'"),
        ("redis+cluster://h1:99999", "bad seed"),
        ("redis+sentinel://s1:26379,s2:26379", "names the master"),
        ("redis+sentinel://s1:26379/", "names the master"),
    ],
)
def test_bad_cluster_or_sentinel_src_names_data_src(src: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says) as info:
        _load("data", "src", src)
    assert info.value.details["key"] == "data.src"


@pytest.mark.parametrize(("key", "value"), [("partitions", 0), ("replica_acks", -1)])
def test_partitions_and_replica_acks_are_checked(key: str, value: int) -> None:
    with pytest.raises(ConfigError) as info:
        _load("data", key, value)
    assert info.value.details["key"] == f"data.{key}"
    assert _load("data", key, 3).data.__dict__[key] == 3


# ---------------------------------------------------------------- unknown keys


def test_unknown_key_in_section_names_dotted_key_and_allowed() -> None:
    with pytest.raises(ConfigError) as info:
        _load("params", "batch_sise", 8)
    message = str(info.value)
    assert "params.batch_sise" in message
    for allowed in ("batch_size", "top_n", "engine_type", "runner"):
        assert allowed in message
    assert info.value.details["key"] == "params.batch_sise"


def test_unknown_section_names_it_and_lists_sections() -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"model": {"path": "/m"}, "sparkle": {"master": "x"}})
    message = str(info.value)
    assert "sparkle" in message
    for section in SECTIONS:
        assert section in message


def test_unknown_key_in_file_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path, SEED_CONFIG + "  executor_gpus: 2\n")
    with pytest.raises(ConfigError, match=r"spark\.executor_gpus"):
        load_config(path)


# ---------------------------------------------------------------- bad values


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("params", "batch_size", 0, "integer >= 1"),
        ("params", "batch_size", "abc", "integer >= 1"),
        ("data", "shape", "3,0,224", "3,224,224"),
        ("data", "shape", "a,b,c", "3,224,224"),
        ("params", "engine_type", "gpu", "mklblas"),
        ("log", "error", "maybe", "y or n"),
        ("data", "src", "nohost", "host:port"),
        ("data", "stream", "bad name!", "letters, digits"),
    ],
)
def test_bad_value_names_key_value_and_expectation(
    section: str, key: str, value: object, expected: str
) -> None:
    dotted = f"{section}.{key}"
    with pytest.raises(ConfigError) as info:
        _load(section, key, value)
    message = str(info.value)
    assert dotted in message
    assert repr(value) in message
    assert expected in message
    assert info.value.details.get("key") == dotted


def test_bad_value_in_file(tmp_path: Path) -> None:
    path = _write(tmp_path, SEED_CONFIG.replace("  top_n:\n", "  top_n: -1\n"))
    with pytest.raises(ConfigError, match=r"params\.top_n.*-1"):
        load_config(path)


def test_missing_model_path_is_named(tmp_path: Path) -> None:
    text = SEED_CONFIG.replace("  path: /opt/work/model\n", "  path:\n")
    with pytest.raises(ConfigError, match=r"model\.path"):
        load_config(_write(tmp_path, text))
    with pytest.raises(ConfigError, match=r"model\.path"):
        load_config({})


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="zoo-serve init"):
        load_config(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "model: [unclosed\n"))


# ---------------------------------------------------------------- frozen, replace


def test_configs_are_frozen(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, SEED_CONFIG))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.params.batch_size = 8  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model = ModelConfig(path="/x")  # type: ignore[misc]


@pytest.mark.parametrize("cls", list(SECTIONS.values()))
def test_sections_are_keyword_only(cls: type) -> None:
    fields = dataclasses.fields(cls)
    with pytest.raises(TypeError):
        cls(*[f.default for f in fields])


def test_replace_returns_validated_copy(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, FILLED_CONFIG))
    threads = cfg.replace(**{"params.runner": "threads"})
    assert threads.params.runner == "threads"
    ray = cfg.replace(**{"params.runner": "ray", "params.workers": "3"})
    assert (ray.params.runner, ray.params.workers) == ("ray", 3)
    # every other value survives the round trip
    assert ray.data.shape == (3, 32, 32)
    assert ray.data.src == "redis-host:6380"
    assert ray.log.error is False
    assert ray.source == cfg.source
    # the original is untouched
    assert cfg.params.runner == "threads"
    assert cfg.params.workers == 1


@pytest.mark.parametrize(
    ("dotted", "value", "fragment"),
    [
        ("params.runner", "gpu", "params.runner"),
        ("params.nope", 1, "params.nope"),
        ("nope.key", 1, "nope.key"),
    ],
)
def test_replace_validates(dotted: str, value: object, fragment: str) -> None:
    cfg = load_config({"model": {"path": "/m"}})
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        cfg.replace(**{dotted: value})


def test_load_config_overrides() -> None:
    cfg = load_config({"model": {"path": "/m"}}, **{"params.batch_size": 16})
    assert cfg.params.batch_size == 16
    assert load_config(cfg) is cfg


# ---------------------------------------------------------------- zoo-serve init


def test_default_config_text_parses_and_loads(tmp_path: Path) -> None:
    text = default_config_text()
    raw = yaml.safe_load(text)
    assert set(raw) == set(SECTIONS)
    for name, cls in SECTIONS.items():
        assert set(raw[name]) == {f.name for f in dataclasses.fields(cls)}
    raw["model"]["path"] = str(tmp_path / "model")
    cfg = load_config(raw)
    assert cfg.model.path == str(tmp_path / "model")
    assert cfg.data == DataConfig()
    assert cfg.params == ParamsConfig()
    assert cfg.log == LogConfig()
    assert cfg.spark == SparkConfig()


def test_default_config_text_with_model_path_loads_from_file(tmp_path: Path) -> None:
    path = _write(tmp_path, default_config_text(model_path="/srv/models/resnet"))
    cfg = load_config(path)
    assert cfg.model.path == "/srv/models/resnet"
    assert cfg.params.batch_size == 4


def test_model_path_or_repository_not_both_nor_neither(tmp_path: Path) -> None:
    cfg = load_config({"model": {"repository": str(tmp_path)}})
    assert cfg.model.repository == str(tmp_path) and cfg.model.path is None
    (tmp_path / "app").mkdir()
    path = _write(tmp_path / "app", "model:\n  repository: models\n")
    assert load_config(path).model.repository == str(tmp_path.resolve() / "app" / "models")
    with pytest.raises(ConfigError, match="model.repository") as err:
        load_config({"model": {"path": "a", "repository": "b"}})
    assert err.value.details["key"] == "model.repository"
    with pytest.raises(ConfigError, match="model.path"):
        load_config({"model": {}})


def test_repository_keys(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "model:\n  repository: models\n"
        "repository:\n  control: poll\n  poll_s: 0.5\n  default: resnet\n"
        "  load: [resnet, small]\n  on_unload: fail\n"
        "params:\n  memory_budget: 2g\n  max_loads: 2\n  slots: 4\n"
    )
    cfg = load_config(path)
    assert cfg.repository.control == "poll" and cfg.repository.poll_s == 0.5
    assert cfg.repository.default == "resnet"
    assert cfg.repository.load == ("resnet", "small")
    assert cfg.repository.on_unload == "fail"
    assert cfg.params.memory_budget == 2 << 30
    assert (cfg.params.max_loads, cfg.params.slots) == (2, 4)
    assert load_config(cfg.to_dict(), source_path=cfg.source) == cfg  # ships unchanged
    assert load_config({"model": {"path": "m"}, "repository": {"load": "a,b"}}).repository.load == (
        "a",
        "b",
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("repository.control", "sometimes"),
        ("repository.load", ["ok", "not ok"]),
        ("repository.on_unload", "drop"),
        ("params.memory_budget", "lots"),
        ("params.max_loads", 0),
    ],
)
def test_bad_repository_values_name_the_key(key: str, value: object) -> None:
    section, _, name = key.partition(".")
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as err:
        load_config({"model": {"path": "m"}, section: {name: value}})
    assert err.value.details["key"] == key
