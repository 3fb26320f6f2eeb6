"""Reading the event JSON lines `pressured run --events-out FILE` writes, from a test."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Event = dict[str, Any]


def read_events(path: Path) -> list[Event]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def kind(doc: Event) -> str:
    """warn / critical / recovered, or oom_killed."""
    return str(doc.get("severity") or doc["event_type"])


def wait_for_events(
    path: Path, done: Callable[[list[Event]], bool], timeout: float, *, poll: float = 0.2
) -> list[Event]:
    """The events once ``done(events)`` holds, or what there is when ``timeout`` runs out."""
    deadline = time.monotonic() + timeout
    docs = read_events(path)
    while not done(docs) and time.monotonic() < deadline:
        time.sleep(poll)
        docs = read_events(path)
    return docs


def has_kill(docs: list[Event]) -> bool:
    return any(d["event_type"] == "oom_killed" for d in docs)
