"""The public surface of ``zoo_serving`` is what we meant, and importing it has no side effects."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import zoo_serving

EXPECTED_ALL = {
    "BrokerConnectionError",
    "Config",
    "ConfigError",
    "DeadlineExceededError",
    "InputError",
    "InputQueue",
    "MissingDependencyError",
    "Model",
    "ModelError",
    "OutputQueue",
    "QueueFullError",
    "ResultTimeoutError",
    "Server",
    "ServerError",
    "TensorSpec",
    "UriInUseError",
    "Worker",
    "ZooServingError",
    "__version__",
    "detect_model",
    "load_config",
    "load_model",
    "serve",
    "serve_on_spark",
    "predict_df",
}

HEAVY_MODULES = ["redis", "cv2", "yaml", "onnxruntime", "torch", "tensorflow", "pyspark", "ray"]


def test_all_is_the_expected_surface() -> None:
    assert set(zoo_serving.__all__) == EXPECTED_ALL
    assert len(zoo_serving.__all__) == len(EXPECTED_ALL), "duplicates in __all__"


def test_every_public_name_resolves() -> None:
    for name in zoo_serving.__all__:
        assert getattr(zoo_serving, name) is not None, name


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from zoo_serving import *", namespace)
    namespace.pop("__builtins__")
    assert set(namespace) == EXPECTED_ALL


def test_version_is_a_string() -> None:
    assert isinstance(zoo_serving.__version__, str)
    assert zoo_serving.__version__.count(".") >= 1


def test_public_errors_share_one_root() -> None:
    for name in zoo_serving.__all__:
        obj = getattr(zoo_serving, name)
        if isinstance(obj, type) and name.endswith("Error"):
            assert issubclass(obj, zoo_serving.ZooServingError), name


def test_import_is_light_and_configures_no_logging() -> None:
    script = textwrap.dedent(
        f"""
        import json, logging, sys
        import zoo_serving
        root = logging.getLogger()
        print(json.dumps({{
            "heavy": [m for m in {HEAVY_MODULES!r} if m in sys.modules],
            "root_handlers": [repr(h) for h in root.handlers],
            "root_level": root.level,
            "pkg_handlers": [
                type(h).__name__ for h in logging.getLogger("zoo_serving").handlers
            ],
        }}))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["heavy"] == []
    assert report["root_handlers"] == []
    assert report["root_level"] == 30  # WARNING, untouched
    assert set(report["pkg_handlers"]) <= {"NullHandler"}
