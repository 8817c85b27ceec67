"""Fail when a module of the package is over the line limit (generated *_pb2.py excepted).

Usage: python scripts/check_module_size.py [ROOT] [LIMIT]   (src/zoo_serving, 400)
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(root: str = "src/zoo_serving", limit: str = "400") -> int:
    most = int(limit)
    over = []
    for path in sorted(Path(root).rglob("*.py")):
        if path.name.endswith("_pb2.py"):
            continue
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > most:
            over.append(f"{path}: {lines} lines, over {most}; split it by what its parts do")
    for line in over:
        print(line, file=sys.stderr)
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
