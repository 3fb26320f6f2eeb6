"""``python -m pressured.demo``: the demo with its defaults (``pressured demo`` has options)."""

import sys

from pressured.demo import run_demo

sys.exit(run_demo())
