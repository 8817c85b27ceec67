"""``python -m zoo_serving`` is ``zoo-serve``."""

from .cli import main

raise SystemExit(main())
