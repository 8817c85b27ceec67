"""Run a server inside your own program and use it, then stop it.

python examples/embed_server.py path/to/model_dir
"""

from __future__ import annotations

import sys

import numpy as np

from zoo_serving import InputQueue, Server


def main(model_dir: str) -> None:
    config = {"model": {"path": model_dir}, "params": {"batch_size": 8, "top_n": 5}}
    with Server(config) as server, InputQueue(url=server.url) as queue:
        shape = server.config.data.shape
        print(queue.predict(np.zeros(shape, np.float32), timeout=30))


if __name__ == "__main__":
    main(sys.argv[1])
