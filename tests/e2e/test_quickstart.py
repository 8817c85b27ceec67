"""The README's quick start, executed as written."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start\s+```bash\n(.*?)```", readme, re.S)
    assert block, "README has no Quick start bash block"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_readme_opens_with_demo_and_test_commands() -> None:
    commands = quick_start_commands()
    assert commands == ["make demo", "make test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci  # CI runs the README's test command


def test_quick_start_demo_runs() -> None:
    demo = quick_start_commands()[0]
    result = subprocess.run(
        demo.split(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    answers = [
        line for line in result.stdout.splitlines() if line.endswith("[matches onnxruntime]")
    ]
    assert len(answers) == 3, result.stdout
    assert answers[0].startswith("red-circle.jpg: red (0)")
    assert "server stopped" in result.stdout
