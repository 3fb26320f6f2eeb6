"""What the parts of kill confirmation share."""

from __future__ import annotations

from collections.abc import Callable

Clock = Callable[[], float]
"""Seconds: time.monotonic for the daemon's clock, time.time for the wall clock."""
