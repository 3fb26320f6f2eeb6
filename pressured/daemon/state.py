"""What the daemon publishes of itself, read-only, at ``GET /v1/state`` on its metrics port:
each target's last reading (usage, limit, headroom, growth, ETA, PSI, severity), the recent
events and kills, and the daemon's own health (daemon/selfwatch.py).

The loop updates it as it reads samples and emits events, and ends each turn that had
wake-ups with ``turn()``, which advances ``generation``. A client that passes
``?after=GENERATION&wait=SECONDS`` is answered as soon as a later turn ends (or after ``wait``
seconds, at most MAX_WAIT_S): `pressured top` refreshes on the daemon's own wake-ups that way,
and `pressured diagnose --cluster` reads it once from every node through the API server's pods
proxy. The kills of earlier runs are listed again from the kill journal at start
(``seed_kills``), so a restart hides none. Bounded: at most MAX_EVENTS events and MAX_KILLS
kills are kept, at most MAX_WAITERS requests wait at once (the others are answered at once),
and the endpoint only reads.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from pressured.engine import theil_sen_slope
from pressured.model import Event, Identity, OomKill, Sample, parse_time, rfc3339

log = logging.getLogger("pressured.daemon")

STATE_PATH: Final = "/v1/state"
STATE_VERSION: Final = 1
MAX_EVENTS: Final = 50
MAX_KILLS: Final = 50
MAX_WAIT_S: Final = 30.0
MAX_WAITERS: Final = 8
FIT_POINTS: Final = 20
"""Readings kept per target for its growth (the engine's Theil-Sen fit: pairs grow as the
square; bench/live_state.py measures the answer for 1000 targets)."""
REUSE_S: Final = 1.0
"""An answer is reused for this long by the requests of the same generation (several
viewers cost one answer; ages are then at most this stale)."""
FIT_WINDOW_S: Final = 120.0


@dataclass(slots=True)
class _Row:
    key: str
    cgroup: str
    identity: Identity
    sample: Sample
    wall: float
    value: int
    severity: str = "ok"
    decided_by: str | None = None
    """The metric ``value`` is (the engine's, or the working set where it has no figure)."""
    points: list[tuple[float, float]] = field(default_factory=list)
    """At most FIT_POINTS, none older than FIT_WINDOW_S (a list: a deque's first block alone
    is 0.6 KiB per target)."""
    version: int = 0
    fitted: tuple[int, float | None] = (-1, None)
    """(version, growth) of the last fit: a target not read again is not fitted again."""

    def copy(self) -> _Row:
        """What a reader needs, taken under the lock; the fit is done on the copy."""
        return _Row(
            self.key, self.cgroup, self.identity, self.sample, self.wall, self.value,
            self.severity, self.decided_by, self.points.copy(), self.version, self.fitted,
        )  # fmt: skip

    def growth(self) -> float | None:
        version, growth = self.fitted
        if version != self.version:
            growth = theil_sen_slope(list(self.points))
            self.fitted = (self.version, growth)
        return growth

    def as_json(self, now_wall: float) -> dict[str, Any]:
        s = self.sample
        limit = s.limit_bytes if s.limit_bytes and s.limit_bytes > 0 else None
        growth = self.growth()
        eta = None
        if growth is not None and growth > 0 and limit is not None:
            eta = max(0.0, (limit - self.value) / growth)
        psi = s.memory_psi
        ident = self.identity
        return {
            "key": self.key,
            "cgroup": self.cgroup,
            "namespace": ident.namespace,
            "pod": ident.pod_name,
            "container": ident.container_name,
            "usage_bytes": s.usage_bytes,
            "working_set_bytes": s.working_set_bytes,
            "unreclaimable_bytes": s.unreclaimable_bytes,
            "decided_by": self.decided_by,
            "limit_bytes": limit,
            "percent": None if limit is None else round(100.0 * self.value / limit, 2),
            "headroom_bytes": None if limit is None else limit - self.value,
            "growth_bytes_per_s": None if growth is None else round(growth, 1),
            "eta_seconds": None if eta is None else round(eta, 1),
            "psi_some_avg10": None if psi is None else psi.some_avg10,
            "psi_full_avg10": None if psi is None else psi.full_avg10,
            "severity": self.severity,
            "oom_kill": s.oom_kill_count,
            "age_seconds": round(max(0.0, now_wall - self.wall), 1),
        }


def _event_json(event: Event) -> dict[str, Any]:
    if isinstance(event, OomKill):
        return kill_row(event.to_json(), key=event.key or event.cgroup)
    ident = event.identity
    return {
        "time": rfc3339(event.time),
        "event_type": event.event_type,
        "severity": event.severity,
        "key": event.key or event.cgroup,
        "cgroup": event.cgroup,
        "namespace": ident.namespace,
        "pod": ident.pod_name,
        "container": ident.container_name,
        "usage_percent": round(event.usage_percent, 2),
        "rule": event.rule,
    }


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _seconds(value: Any) -> float | None:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return round(float(value), 3) if number and math.isfinite(value) else None


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def kill_row(doc: Mapping[str, Any], *, key: str | None = None) -> dict[str, Any]:
    """A kill as /v1/state lists it, from an ``oom_killed`` event's JSON (OomKill.to_json) or
    a line of the kill journal (kills/journal.py keeps those names): pod_name -> pod,
    container_name -> container, comm -> victim. A field of the wrong type is None."""
    cgroup = _str(doc.get("cgroup"))
    return {
        "time": _str(doc.get("time")),
        "event_type": "oom_killed",
        "severity": "oom_killed",
        "key": key or cgroup,
        "cgroup": cgroup,
        "namespace": _str(doc.get("namespace")),
        "pod": _str(doc.get("pod_name")),
        "container": _str(doc.get("container_name")),
        "pid": _count(doc.get("pid")),
        "victim": _str(doc.get("comm")),
        "warned_seconds_before": _seconds(doc.get("warned_seconds_before")),
        "limit_scope": _str(doc.get("limit_scope")),
        "unreclaimable_bytes": _count(doc.get("unreclaimable_bytes")),
        "working_set_bytes": _count(doc.get("working_set_bytes")),
        "decided_by": _str(doc.get("decided_by")),
    }


class LiveState:
    """The state the loop publishes; every method is safe from any thread."""

    def __init__(
        self,
        node: str | None,
        *,
        wall: Callable[[], float] = time.time,
        extra: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        """``extra``: more top-level fields computed per request (the daemon's own health)."""
        self.node = node
        self._wall = wall
        self._extra = extra
        self._cond = threading.Condition()
        self._rows: dict[str, _Row] = {}
        self._events: deque[dict[str, Any]] = deque(maxlen=MAX_EVENTS)
        self._kills: deque[dict[str, Any]] = deque(maxlen=MAX_KILLS)
        self._waiters = 0
        self._dirty = False
        self._answer: tuple[int, float, dict[str, Any]] | None = None
        self.generation = 0

    # ------------------------------------------------------------------ the loop's side
    def sample(
        self,
        key: str,
        cgroup: str,
        identity: Identity,
        sample: Sample,
        *,
        value: int,
        severity: str,
        decided_by: str | None = None,
    ) -> None:
        """A target's new reading; ``value``: the bytes thresholds are decided on, by the
        metric ``decided_by``."""
        with self._cond:
            row = self._rows.get(key)
            if row is None:
                row = self._rows[key] = _Row(key, cgroup, identity, sample, self._wall(), value)
            row.cgroup, row.identity, row.sample = cgroup, identity, sample
            row.wall, row.value, row.severity = self._wall(), value, severity
            row.decided_by = decided_by
            points = row.points
            drop = 0
            while drop < len(points) and sample.time - points[drop][0] > FIT_WINDOW_S:
                drop += 1
            points.append((sample.time, float(value)))
            drop = max(drop, len(points) - FIT_POINTS)
            if drop:
                del points[:drop]
            row.version += 1
            self._dirty = True

    def event(self, event: Event) -> None:
        doc = _event_json(event)
        with self._cond:
            self._events.append(doc)
            if isinstance(event, OomKill):
                self._kills.append(doc)
            self._dirty = True

    def last_sample(self, key: str) -> Sample | None:
        """The target's last reading (the kill pipeline's OOM-risk figures of a kill)."""
        with self._cond:
            row = self._rows.get(key)
            return None if row is None else row.sample

    def seed_kills(self, journal: Iterable[Mapping[str, Any]], *, where: str = "journal") -> int:
        """List again the kills a previous run confirmed (kills/journal.py ``read_kills``,
        oldest first): the last MAX_KILLS of them, before any new one. A line without a
        readable time is skipped with a warning naming ``where``; how many were listed."""
        rows, bad = [], 0
        for doc in journal:
            row = kill_row(doc)
            if parse_time(row["time"]) is None:
                bad += 1
                continue
            rows.append(row)
        if bad:
            log.warning("%s: %d kill(s) without a readable time skipped", where, bad)
        with self._cond:
            live = list(self._kills)
            kept = [*rows, *live][-MAX_KILLS:]
            self._kills = deque(kept, maxlen=MAX_KILLS)
            self._dirty = True
        return len(kept) - len(live)

    def forget(self, key: str) -> None:
        with self._cond:
            if self._rows.pop(key, None) is not None:
                self._dirty = True

    def turn(self) -> None:
        """The end of a loop turn: waiting readers are answered if anything changed."""
        with self._cond:
            if not self._dirty:
                return
            self._dirty = False
            self.generation += 1
            self._cond.notify_all()

    # ------------------------------------------------------------------ readers
    def snapshot(self, after: int | None = None, wait: float = 0.0) -> dict[str, Any]:
        """The state now; with ``after``, first wait (at most ``wait`` s, MAX_WAIT_S) for
        another generation (a later one, or an earlier one: the daemon restarted)."""
        wait = min(max(0.0, wait), MAX_WAIT_S)
        with self._cond:
            if after is not None and wait > 0 and self._waiters < MAX_WAITERS:
                self._waiters += 1
                try:
                    self._cond.wait_for(lambda: self.generation != after, wait)
                finally:
                    self._waiters -= 1
            now = self._wall()
            cached = self._answer
            if cached is not None and cached[0] == self.generation and now - cached[1] < REUSE_S:
                return self._with_extra(cached[2])
            copies = [row.copy() for row in self._rows.values()]
            events = list(self._events)
            kills = list(self._kills)
            generation = self.generation
        # the fits are done outside the lock: the loop never waits for a reader
        rows = [row.as_json(now) for row in copies]
        with self._cond:
            for row in copies:
                live = self._rows.get(row.key)
                if live is not None and live.version == row.fitted[0]:
                    live.fitted = row.fitted
        rows.sort(key=lambda r: (r["headroom_bytes"] is None, r["headroom_bytes"] or 0))
        doc: dict[str, Any] = {
            "version": STATE_VERSION,
            "node": self.node,
            "generation": generation,
            "time": rfc3339(now),
            "targets": rows,
            "events": events,
            "kills": kills,
        }
        with self._cond:
            self._answer = (generation, now, doc)
        return self._with_extra(doc)

    def _with_extra(self, doc: dict[str, Any]) -> dict[str, Any]:
        if self._extra is None:
            return doc
        return {**doc, **self._extra()}

    def route(self, query: Mapping[str, list[str]]) -> tuple[str, str, bytes]:
        """GET /v1/state[?after=N&wait=S] for metrics.start_http."""
        try:
            after = int(query["after"][0]) if "after" in query else None
            wait = float(query["wait"][0]) if "wait" in query else 0.0
        except ValueError:
            return (
                "400 Bad Request",
                "text/plain; charset=utf-8",
                b"after: a whole number; wait: seconds\n",
            )
        if math.isnan(wait):
            wait = 0.0
        doc = self.snapshot(after, wait)
        return "200 OK", "application/json", json.dumps(doc).encode()
