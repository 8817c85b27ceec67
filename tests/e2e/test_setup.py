"""Setting up a fresh machine: `make java` (Java 17+ for the Spark tests) and CI's use of it."""

from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def ensure_java() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ensure_java", ROOT / "scripts/ensure_java.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("text", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15\nOpenJDK Runtime Environment', 17),
        ('java version "1.8.0_292"\nJava(TM) SE Runtime Environment', 8),
        ('openjdk version "11.0.2" 2019-01-15', 11),
        ('openjdk version "21" 2023-09-19', 21),
        ('openjdk version "25-ea" 2025-09-16', 25),
        ("Error: could not find libjava.so", None),
    ],
)
def test_java_major_reads_the_version_line(text: str, major: int | None) -> None:
    assert ensure_java().java_major(text) == major


def run(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
    )


def test_make_java_finds_the_java_spark_runs() -> None:
    done = run(["make", "-s", "java"])
    assert done.returncode == 0, done.stdout + done.stderr
    major = int(done.stdout.rsplit("is Java ", 1)[1])
    assert major >= 17


def test_missing_java_is_named_with_how_to_install_it(tmp_path: Path) -> None:
    """A JAVA_HOME without a java (what PySpark would start): named, with the apt command."""
    done = run(["python3", "scripts/ensure_java.py", "--check"], JAVA_HOME=str(tmp_path))
    assert done.returncode == 1
    assert f"JAVA_HOME={tmp_path}: no working '{tmp_path}/bin/java' found" in done.stderr
    assert "sudo apt-get install -y openjdk-17-jre-headless" in done.stderr
    assert "https://adoptium.net" in done.stderr


def test_ci_and_make_test_check_java_before_the_tests() -> None:
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert ci.index("make java") < ci.index('make test PYTEST_ARGS="-p no:cacheprovider"')
    planned = run(["make", "-n", "test"]).stdout.splitlines()
    java = next(i for i, line in enumerate(planned) if "scripts/ensure_java.py" in line)
    pytest_run = next(i for i, line in enumerate(planned) if "-m pytest" in line)
    assert java < pytest_run
