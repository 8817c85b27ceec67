"""Send images to a running zoo_serving server and print their top-N.

zoo-serve start -c config.yaml
python examples/client_images.py cat.jpg dog.jpg
"""

from __future__ import annotations

import sys

from zoo_serving import InputQueue, ZooServingError


def main(paths: list[str]) -> int:
    with InputQueue(host="localhost", port=6379) as queue:
        if not queue.wait_ready(timeout=30):
            print("no ready server on localhost:6379", file=sys.stderr)
            return 1
        for path in paths:
            try:
                print(path, queue.predict(path, timeout=10))
            except ZooServingError as exc:
                print(path, f"failed ({exc.code}): {exc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
