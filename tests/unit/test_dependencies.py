"""Everything in the ``dev`` extra is a dependency of the test suite: a test imports it plainly,
so a machine without it fails loudly instead of skipping the tests that need it."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
SKIP_IMPORT = re.compile(r"importorskip" + r"\(\s*[\"']([\w.]+)[\"']")


def dev_distributions() -> set[str]:
    """The distributions ``pip install -e '.[dev]'`` installs for the project (its metadata)."""
    names = set()
    for line in importlib.metadata.requires("zoo-serving") or []:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate({"extra": "dev"}):
            names.add(canonicalize_name(requirement.name))
    return names


def test_no_test_skips_when_a_dependency_of_the_suite_is_missing() -> None:
    dev = dev_distributions()
    assert {"numpy", "redis", "torch", "tensorflow-cpu", "pyspark", "httpx"} <= dev
    providers = importlib.metadata.packages_distributions()
    skipping = []
    for path in sorted([*ROOT.glob("tests/**/*.py"), *ROOT.glob("benchmarks/**/*.py")]):
        for module in SKIP_IMPORT.findall(path.read_text(encoding="utf-8")):
            top = module.split(".")[0]
            if {canonicalize_name(d) for d in providers.get(top, [top])} & dev:
                skipping.append(f"{path.relative_to(ROOT)}: {module}")
    assert not skipping, f"import these plainly, they are in the dev extra: {skipping}"
