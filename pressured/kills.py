"""Kill sources and the kill reconciler: every real OOM kill reported exactly once.

Sources (each optional; each says whether it is active and, if not, why):

- ``counters``   memory.events.local / memory.events ``oom_kill`` (v2) and memory.oom_control
                 ``oom_kill`` (v1), read when the Watcher wakes for them. Counters carry no
                 pid: a delta of n stands for n kills. :class:`CounterTracker` turns readings
                 into records and, with a state directory, reports the kills that happened
                 while the daemon was down (source ``counters:restart``).
- ``kmsg``       /dev/kmsg records (:mod:`pressured.kernel.kmsg`).
- ``tracepoint`` oom:mark_victim through perf_event_open (:mod:`pressured.kernel.tracepoint`).
- ``bcc``        a kprobe on oom_kill_process, or a BPF tracepoint program when the kprobe
                 cannot attach (:mod:`pressured.kernel.bcc_probe`); replaces ``tracepoint``.

Every source yields :class:`KillRecord`. The daemon attributes each record to a watched target
(``attribute`` by kernel cgroup path, ``cgroup_id`` by directory inode, else None) and hands
it to :class:`Reconciler`, which merges the records of one kill (same pid, compatible target,
within ``window_s``) into one :class:`~pressured.model.OomKill` naming every source that saw it.
Counter deltas are matched against pid-bearing kills of the same target; what they cannot
match becomes pid-less kills, one per kill. Wiring, in the daemon loop::

    sources = KillSources(KillsConfig.from_mapping(cfg["kills"]), clock=clock)
    sources.start()                        # status(): {name: (active, why)}, logged
    rec = Reconciler(cfg.window_seconds, clock, first_warn=engine_first_warn,
                     expected=sources.expected)
    tracker = CounterTracker(KillState(state_dir) if state_dir else None, clock=clock)
    for fd, name in sources.fds(): epoll.add(fd, EPOLLIN, token_for(name))
    on EPOLLIN for name  -> for r in sources.read(name): rec.add(r, key=..., cgroup=...)
    at start (in tracker.batch()) and on a counter wake-up of a target ->
        r = tracker.observe(key, cgroup, oom_kill_local, group_kills=..., cgroup_id=inode)
        if r: rec.add(r, key=key, cgroup=cgroup, identity=..., annotations=...)
    a target gone     -> tracker.forget(cgroup)
    every wake, at rec.next_deadline() and sources.poll_interval() -> rec.flush() -> events
    shutdown          -> rec.drain(); sources.close()

Attribution (the daemon's): a record's ``cgroup`` is the kernel's path relative to the
hierarchy root (v1 memory or v2), so ``attribute(record.cgroup, {key: ref.relpath})``; a bcc
record's ``cgroup_id`` is the inode of the victim's v2 cgroup directory. A record that names
no watched target is added with key None.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pressured.errors import ConfigError
from pressured.kernel import kmsg as kmsg_mod
from pressured.kernel import tracepoint as tp_mod
from pressured.kernel.bcc_probe import BccProbe
from pressured.model import (
    SOURCE_BCC,
    SOURCE_COUNTERS,
    SOURCE_COUNTERS_RESTART,
    SOURCE_KMSG,
    SOURCE_TRACEPOINT,
    Identity,
    KillRecord,
    OomKill,
)

log = logging.getLogger("pressured.kills")

Clock = Callable[[], float]

SWAP_NEIGHBOURS = 16
NEAREST = 32


def attribute(cgroup: str | None, targets: Mapping[str, str]) -> str | None:
    """The key of the deepest target whose cgroup path holds ``cgroup`` (component-wise).

    ``targets`` maps key -> cgroup path relative to the hierarchy root (CgroupRef.relpath).
    """
    if not cgroup:
        return None
    path = "/" + cgroup.strip("/")
    best: tuple[int, str] | None = None
    for key, tpath in targets.items():
        t = "/" + tpath.strip("/")
        if t in (path, "/") or path.startswith(t + "/"):
            depth = 0 if t == "/" else t.count("/")
            if best is None or depth > best[0]:
                best = (depth, key)
    return None if best is None else best[1]


# --------------------------------------------------------------------------- reconciler
@dataclass
class _Counter:
    """A counter delta: ``count_delta`` kills of one target, no pid."""

    record: KillRecord
    key: str | None
    cgroup: str | None
    identity: Identity
    annotations: dict[str, str]
    arrived: float
    first_warn: float | None
    units: list[_Unit] = field(default_factory=list)

    @property
    def restart(self) -> bool:
        return self.record.restart


@dataclass(eq=False)
class _Unit:
    """One kill a counter delta stands for, until it is bound to a pid-bearing kill or
    reported on its own. ``committed``: its counter's window closed while a pending kill
    could take it; it is then bound to some pending kill, which one is settled when a kill
    is emitted (a later record or counter may make another assignment the consistent one)."""

    counter: _Counter
    value: int | None  # the oom_kill counter after this kill, when known
    committed: bool = False


@dataclass(eq=False)
class _Group:
    """The records of one kill that carries a pid."""

    pid: int
    key: str | None
    cgroup: str | None
    identity: Identity
    annotations: dict[str, str]
    arrived: float
    time: float
    wall: float
    records: list[KillRecord] = field(default_factory=list)
    sources: set[str] = field(default_factory=set)
    first_warn: float | None = None
    unit: _Unit | None = None
    confirmed_late: bool = False
    restart: bool = False
    emitted_at: float | None = None

    @property
    def cgroup_unknown(self) -> bool:
        return all(r.cgroup is None and r.cgroup_id is None for r in self.records)


@dataclass
class _Matching:
    """Units paired with pending kills (both ways), the cost of every possible pair, who can
    take each kill, and committed units left without one."""

    by_group: dict[int, _Unit] = field(default_factory=dict)
    by_unit: dict[int, _Group] = field(default_factory=dict)
    fit: dict[tuple[int, int], float] = field(default_factory=dict)
    holders_of: dict[int, list[_Unit]] = field(default_factory=dict)
    stranded: list[_Unit] = field(default_factory=list)

    def pair(self, u: _Unit, g: _Group) -> None:
        self.by_group[id(g)] = u
        self.by_unit[id(u)] = g


class Reconciler:
    """Merges kill records from every source into one OomKill per killed process.

    - Records with a pid merge when the pid is equal, the targets are compatible (equal, or
      one of them unknown) and their times lie within ``window_s``.
    - A counter delta of n for target K stands for n kills of K. Each is bound to a
      pid-bearing kill of K within the window, or to a kill no source could attribute (the
      victim was reaped before its cgroup could be read); what is left becomes pid-less
      kills. Binding waits until a decision is due (a kill's or a counter's window closes)
      and then takes a maximum matching over everything pending, so the order in which the
      sources happen to be read does not change the result.
    - ``counters:restart`` deltas (kills while the daemon was down) match regardless of time,
      so a replayed /dev/kmsg does not count those kills twice.
    - memory.oom.group: the kernel kills the victim, then every member of the group, the
      victim again among them while it still has its memory (measured on 6.1: 3 processes,
      oom_kill +4, four "Killed process" lines). pid sources merge the repeat by pid; for the
      counter, each oom_group_kill increment (``extra["oom_group_kill_delta"]``) cancels one
      unit that no pid-bearing kill took, within the window.
    - A kill is emitted ``window_s`` after its first record arrived, or at once when every
      source ``expected(key)`` names has seen it; a kill attributed to no target waits
      ``2 * window_s`` (a counter may still claim it) and has key "".
    - ``warned_seconds_before`` = kill time - first warn of the episode for that target
      (``first_warn(key)``, or what ``note_warn`` recorded), None when unwarned.

    Ambiguity that no bookkeeping can remove: a kill seen only by counters of target K and,
    at the same time, a kill of another target that no source could attribute look exactly
    like one kill of K seen by both; the reconciler then reports one kill, not two.
    """

    def __init__(
        self,
        window_s: float = 5.0,
        clock: Clock = time.monotonic,
        *,
        first_warn: Callable[[str], float | None] | None = None,
        expected: Callable[[str | None], Collection[str]] | None = None,
        dry_run: bool = False,
    ) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, not {window_s}")
        self.window_s = window_s
        self._clock = clock
        self._first_warn_fn = first_warn
        self._warns: dict[str, float] = {}
        self._expected = expected
        self._dry_run = dry_run
        self._groups: list[_Group] = []
        self._counters: list[_Counter] = []
        self._committed: list[_Unit] = []
        self._group_credits: dict[str | None, list[list[float]]] = {}
        self.duplicates = 0
        """Records that arrived for a kill already reported (merged, not counted again)."""

    # ------------------------------------------------------------------ warnings
    def note_warn(self, key: str, first_warn_monotonic: float) -> None:
        """The engine warned for ``key``; only the first warn of an episode is kept."""
        self._warns.setdefault(key, first_warn_monotonic)

    def end_episode(self, key: str) -> None:
        self._warns.pop(key, None)

    def _first_warn(self, key: str | None) -> float | None:
        if key is None:
            return None
        if self._first_warn_fn is not None:
            return self._first_warn_fn(key)
        return self._warns.get(key)

    # ------------------------------------------------------------------ input
    def add(
        self,
        record: KillRecord,
        *,
        key: str | None = None,
        cgroup: str | None = None,
        identity: Identity | None = None,
        annotations: Mapping[str, str] | None = None,
    ) -> None:
        """Take one record. ``key``/``cgroup`` name the watched target it belongs to (None
        when the daemon could not attribute it); ``cgroup`` defaults to the record's own."""
        now = self._clock()
        ident = identity or Identity()
        notes = dict(annotations or {})
        target_cgroup = cgroup if cgroup is not None else record.cgroup
        if record.pid is None:
            self._add_counter(
                record, key=key, cgroup=target_cgroup, identity=ident, annotations=notes, now=now
            )
            return
        group = self._find_group(record, key)
        if group is None:
            group = _Group(
                record.pid,
                key,
                target_cgroup,
                ident,
                notes,
                now,
                record.time,
                record.wall,
                first_warn=self._first_warn(key),
            )
            self._groups.append(group)
        elif group.emitted_at is not None:
            self.duplicates += 1
            log.debug(
                "kill of pid %d already reported; late %s record ignored", record.pid, record.source
            )
            return
        group.records.append(record)
        group.sources.add(record.source)
        group.time = min(group.time, record.time)
        group.wall = min(group.wall, record.wall)
        if group.key is None and key is not None:
            group.key, group.cgroup = key, target_cgroup
            group.identity, group.annotations = ident, notes
        elif group.cgroup is None and target_cgroup is not None:
            group.cgroup = target_cgroup
        if group.first_warn is None:
            group.first_warn = self._first_warn(group.key)

    def _add_counter(
        self,
        record: KillRecord,
        *,
        key: str | None,
        cgroup: str | None,
        identity: Identity,
        annotations: dict[str, str],
        now: float,
    ) -> None:
        group_delta = record.extra.get("oom_group_kill_delta")
        if isinstance(group_delta, int) and group_delta > 0:
            self._group_credits.setdefault(key, []).append([record.time, float(group_delta)])
        if record.count_delta <= 0:
            return
        c = _Counter(
            record,
            key,
            cgroup,
            identity,
            annotations,
            now,
            None if record.restart else self._first_warn(key),
        )
        value = record.extra.get("oom_kill")
        for i in range(record.count_delta):
            number = value - record.count_delta + 1 + i if isinstance(value, int) else None
            c.units.append(_Unit(c, number))
        self._counters.append(c)

    def _find_group(self, record: KillRecord, key: str | None) -> _Group | None:
        best: _Group | None = None
        for g in self._groups:
            if g.pid != record.pid:
                continue
            if key is not None and g.key is not None and key != g.key:
                continue
            if abs(g.time - record.time) > self.window_s:
                continue
            if best is None or abs(g.time - record.time) < abs(best.time - record.time):
                best = g
        return best

    # ------------------------------------------------------------------ matching
    def _matching(self, now: float) -> _Matching:
        """A maximum matching of units to pending kills, then made to fit time best.

        1. Kuhn's augmenting paths, committed units first: an augmenting path never unmatches
           a matched unit, so every committed unit that still has a kill to take keeps one.
           Each unit tries its best-fitting kills first (same target, then closest in time).
        2. Pairwise swaps that lower the summed time distance (unattributed kills cost
           extra): Kuhn only maximises the count; among equally large matchings the closest
           in time is the likeliest truth.
        3. A kill that must be reported now takes a unit from a kill that is not due yet
           (which may still get a later unit).
        """
        m = _Matching()
        groups = [g for g in self._groups if g.emitted_at is None]
        committed = list(self._committed)
        opened = [u for c in sorted(self._counters, key=lambda c: c.arrived) for u in c.units]
        if not groups:
            m.stranded = committed
            return m
        options = self._options(committed + opened, groups, m)

        def augment(start: _Unit, seen: set[int]) -> bool:
            # iterative depth-first search for an augmenting path: a burst can make it long
            stack = [(start, iter(options[id(start)]))]
            path: list[tuple[_Unit, _Group]] = []
            while stack:
                u, candidates = stack[-1]
                for g in candidates:
                    if id(g) in seen:
                        continue
                    seen.add(id(g))
                    path.append((u, g))
                    holder = m.by_group.get(id(g))
                    if holder is None:
                        for pu, pg in path:
                            m.pair(pu, pg)
                        return True
                    stack.append((holder, iter(options[id(holder)])))
                    break
                else:
                    stack.pop()
                    if path:
                        path.pop()
            return False

        for units in (committed, opened):  # committed first: they keep a kill if any can
            for u in units:  # the easy part first: a free best fit
                for g in options[id(u)]:
                    if id(g) not in m.by_group:
                        m.pair(u, g)
                        break
            # Kuhn: what failed to augment cannot help another unit until the matching changes
            seen: set[int] = set()
            for u in units:
                if id(u) in m.by_unit:
                    continue
                if augment(u, seen):
                    seen = set()
                elif u.committed:
                    m.stranded.append(u)
        self._improve(m, {id(g): g for g in groups})
        for g in groups:
            if id(g) not in m.by_group and self._deadline(g) <= now:
                self._serve_due(g, m, now, depth=3)
        return m

    def _options(
        self, units: list[_Unit], groups: list[_Group], m: _Matching
    ) -> dict[int, list[_Group]]:
        """For each unit, the kills it may take, best fit first; fills ``m.fit`` and
        ``m.holders_of``. Kills are looked up by time (bisect), not all against all: a burst
        of hundreds of kills stays cheap."""
        w = self.window_s
        by_key: dict[str | None, list[_Group]] = {}
        unknown: list[_Group] = []
        for g in sorted(groups, key=lambda g: g.time):
            if g.key is not None:
                by_key.setdefault(g.key, []).append(g)
            elif g.cgroup_unknown:
                unknown.append(g)
        times = {k: [g.time for g in v] for k, v in by_key.items()}
        unknown_times = [g.time for g in unknown]
        options: dict[int, list[_Group]] = {}
        for u in units:
            c = u.counter
            if c.key is None:
                options[id(u)] = []
                continue
            t = c.record.time
            scored: list[tuple[int, float, _Group]] = []
            for loose, pool, pool_times in (
                (0, by_key.get(c.key, []), times.get(c.key, [])),
                (1, unknown, unknown_times),
            ):
                if c.restart:
                    chosen = pool
                else:
                    lo, hi = bisect_left(pool_times, t - w), bisect_right(pool_times, t + w)
                    if hi - lo > 2 * NEAREST:
                        # a burst: the nearest kills in time are enough to find a matching
                        mid = bisect_left(pool_times, t)
                        lo, hi = max(lo, mid - NEAREST), min(hi, mid + NEAREST)
                    chosen = pool[lo:hi]
                for g in chosen:
                    dt = abs(g.time - t)
                    scored.append((loose, dt, g))
                    m.fit[id(u), id(g)] = dt + (0.5 * w if loose else 0.0)
                    m.holders_of.setdefault(id(g), []).append(u)
            scored.sort(key=lambda s: (s[0], s[1]))
            options[id(u)] = [g for _, _, g in scored]
        return options

    def _improve(self, m: _Matching, groups: dict[int, _Group]) -> None:
        for _ in range(4):
            pairs = sorted(
                ((u, groups[gid]) for gid, u in m.by_group.items()), key=lambda p: p[1].time
            )
            changed = False
            for i, (u1, g1) in enumerate(pairs):
                # crossings in time are between neighbours: a few on each side suffice
                for u2, g2 in pairs[i + 1 : i + 1 + SWAP_NEIGHBOURS]:
                    if m.by_unit.get(id(u1)) is not g1 or m.by_unit.get(id(u2)) is not g2:
                        continue
                    c12 = m.fit.get((id(u1), id(g2)))
                    c21 = m.fit.get((id(u2), id(g1)))
                    if c12 is None or c21 is None:
                        continue
                    before = m.fit[id(u1), id(g1)] + m.fit[id(u2), id(g2)]
                    if c12 + c21 < before - 1e-9:
                        m.pair(u1, g2)
                        m.pair(u2, g1)
                        changed = True
            if not changed:
                return

    def _serve_due(self, g: _Group, m: _Matching, now: float, depth: int) -> bool:
        """Give a kill that must be reported now a unit held by a kill that is not due yet,
        along a short alternating path."""
        if depth == 0:
            return False
        holders = [
            (u, h) for u in m.holders_of.get(id(g), ()) if (h := m.by_unit.get(id(u))) is not None
        ]
        for u, h in holders:
            if self._deadline(h) > now:
                del m.by_group[id(h)]
                m.pair(u, g)
                return True
        for u, h in holders:
            del m.by_group[id(h)]
            m.pair(u, g)
            if self._serve_due(h, m, now, depth - 1):
                return True
            del m.by_group[id(g)]
            m.pair(u, h)  # undo
        return False

    def _bind(self, u: _Unit, g: _Group) -> None:
        c = u.counter
        if u.committed:
            self._committed.remove(u)
        else:
            c.units.remove(u)
        g.unit = u
        g.sources.add(c.record.source)
        g.restart = g.restart or c.restart
        if g.key is None:
            g.key, g.cgroup = c.key, c.cgroup
            g.identity, g.annotations = c.identity, c.annotations
            g.first_warn = c.first_warn

    # ------------------------------------------------------------------ output
    def _deadline(self, g: _Group) -> float:
        # a kill no source could attribute waits two windows: a counter delta of its target,
        # whose own window closes later, may still claim it
        return g.arrived + (self.window_s if g.key is not None else 2 * self.window_s)

    def _complete(self, g: _Group, matched: bool) -> bool:
        if self._expected is None or g.key is None:
            return False
        want = set(self._expected(g.key))
        sources = set(g.sources)
        if matched or g.unit is not None:
            sources.add(SOURCE_COUNTERS)
        if SOURCE_COUNTERS_RESTART in sources:
            sources.add(SOURCE_COUNTERS)
        return bool(want) and want <= sources

    def next_deadline(self) -> float | None:
        """Monotonic time at which ``flush`` has something to emit, or None."""
        due = [self._deadline(g) for g in self._groups if g.emitted_at is None]
        due += [c.arrived + self.window_s for c in self._counters]
        return min(due) if due else None

    def pending(self) -> int:
        """Kills not reported yet: pending pid-bearing kills and unbound counter units."""
        open_units = sum(len(c.units) for c in self._counters)
        return sum(g.emitted_at is None for g in self._groups) + open_units

    def flush(self, now: float | None = None) -> list[OomKill]:
        """Kills whose window closed (or that every expected source saw), oldest first."""
        now = self._clock() if now is None else now
        out: list[tuple[float, OomKill]] = []
        if self._anything_due(now):
            # one matching serves every decision due now: taking decided pairs out of a
            # matching leaves a matching of the rest
            m = self._matching(now)
            for u in m.stranded:
                self._committed.remove(u)
                kill = self._settle_unit(u)
                if kill is not None:
                    out.append((u.counter.record.time, kill))
            decisions: list[tuple[float, int, _Group | _Counter]] = []
            for g in self._groups:
                if g.emitted_at is not None:
                    continue
                due = self._deadline(g)
                if due <= now or self._complete(g, id(g) in m.by_group):
                    decisions.append((min(due, now), 0, g))
            decisions += [
                (c.arrived + self.window_s, 1, c)
                for c in self._counters
                if c.arrived + self.window_s <= now
            ]
            decisions.sort(key=lambda d: (d[0], d[1]))
            for _, _, item in decisions:
                if isinstance(item, _Group):
                    unit = m.by_group.get(id(item))
                    if unit is not None:
                        self._bind(unit, item)
                    item.emitted_at = now
                    out.append((item.time, self._kill_from_group(item)))
                else:
                    out += [(item.record.time, k) for k in self._close_counter(item, m.by_unit)]
        for key, credits in list(self._group_credits.items()):
            kept = [cr for cr in credits if cr[1] > 0 and now - cr[0] < 4 * self.window_s]
            if kept:
                self._group_credits[key] = kept
            else:
                del self._group_credits[key]
        # keep reported kills a while longer: a late record of the same kill is then merged
        self._groups = [
            g
            for g in self._groups
            if g.emitted_at is None or now - g.emitted_at < 2 * self.window_s
        ]
        out.sort(key=lambda item: item[0])
        return [k for _, k in out]

    def _anything_due(self, now: float) -> bool:
        if any(c.arrived + self.window_s <= now for c in self._counters):
            return True
        pending = [g for g in self._groups if g.emitted_at is None]
        if any(self._deadline(g) <= now for g in pending):
            return True
        # early completion needs the matching only when a counter could complete a kill
        return self._expected is not None and any(
            g.key is not None and self._complete(g, bool(self._counters or self._committed))
            for g in pending
        )

    def _close_counter(self, c: _Counter, by_unit: dict[int, _Group]) -> list[OomKill]:
        """The counter's window is over: units a pending kill can take are committed, the
        rest confirm kills already reported, cancel oom.group repeats or become pid-less."""
        out: list[OomKill] = []
        for u in c.units:
            if id(u) in by_unit:
                u.committed = True
                self._committed.append(u)
                continue
            kill = self._settle_unit(u)
            if kill is not None:
                out.append(kill)
        c.units = []
        self._counters.remove(c)
        return out

    def _settle_unit(self, u: _Unit) -> OomKill | None:
        """A unit no pending kill can take: a kill reported already, an oom.group repeat, or
        a kill of its own (no pid)."""
        late = self._late_kill(u)
        if late is not None:
            late.confirmed_late = True  # reported already, without this counter
            return None
        if self._cancel_group_repeat(u.counter):
            log.debug("an oom_kill count of %s is the oom.group victim killed again", u.counter.key)
            return None
        return self._kill_from_unit(u)

    def _late_kill(self, u: _Unit) -> _Group | None:
        c = u.counter
        for g in self._groups:
            if (
                g.emitted_at is not None
                and g.unit is None
                and not g.confirmed_late
                and g.key == c.key
                and (c.restart or abs(g.time - c.record.time) <= self.window_s)
            ):
                return g
        return None

    def _cancel_group_repeat(self, c: _Counter) -> bool:
        for credit in self._group_credits.get(c.key, []):
            if credit[1] >= 1 and (c.restart or abs(credit[0] - c.record.time) <= self.window_s):
                credit[1] -= 1
                return True
        return False

    def drain(self) -> list[OomKill]:
        """Everything still pending, regardless of windows (daemon shutdown)."""
        return self.flush(self._clock() + 10 * self.window_s)

    def _warned(self, kill_time: float, first_warn: float | None, restart: bool) -> float | None:
        if restart or first_warn is None or first_warn > kill_time:
            return None
        return kill_time - first_warn

    def _kill_from_group(self, g: _Group) -> OomKill:
        comm = next((r.comm for r in g.records if r.comm), None)
        extra: dict[str, Any] = {}
        rss: dict[str, int] = {}
        for r in g.records:
            for k, v in r.rss.items():
                rss.setdefault(k, v)
        if rss:
            extra["rss_bytes"] = rss
        for name in ("uid", "oom_score_adj"):
            value = next(
                (getattr(r, name) for r in g.records if getattr(r, name) is not None), None
            )
            if value is not None:
                extra[name] = value
        kernel_cgroup = next((r.cgroup for r in g.records if r.cgroup), None)
        if kernel_cgroup is not None:
            extra["kernel_cgroup"] = kernel_cgroup
        cgroup_id = next((r.cgroup_id for r in g.records if r.cgroup_id), None)
        if cgroup_id is not None:
            extra["cgroup_id"] = cgroup_id
        for name in ("oom_memcg", "constraint", "memcg_id", "cgroup_name", "parent_cgroup_name"):
            value = next((r.extra[name] for r in g.records if r.extra.get(name)), None)
            if value is not None:
                extra[name] = value
        if g.restart:
            extra["while_down"] = True
        return OomKill(
            time=g.wall,
            cgroup=g.cgroup or kernel_cgroup or "",
            pid=g.pid,
            comm=comm,
            oom_kill_count=None if g.unit is None else g.unit.value,
            sources=tuple(sorted(g.sources)),
            warned_seconds_before=self._warned(g.time, g.first_warn, g.restart),
            key=g.key or "",
            identity=g.identity,
            annotations=dict(g.annotations),
            dry_run=self._dry_run,
            extra=extra,
        )

    def _kill_from_unit(self, u: _Unit) -> OomKill:
        c = u.counter
        extra: dict[str, Any] = {}
        if c.restart:
            extra["while_down"] = True
        if c.record.cgroup_id is not None:
            extra["cgroup_id"] = c.record.cgroup_id
        return OomKill(
            time=c.record.wall,
            cgroup=c.cgroup or "",
            pid=None,
            comm=None,
            oom_kill_count=u.value,
            sources=(c.record.source,),
            warned_seconds_before=self._warned(c.record.time, c.first_warn, c.restart),
            key=c.key or "",
            identity=c.identity,
            annotations=dict(c.annotations),
            dry_run=self._dry_run,
            extra=extra,
        )


# --------------------------------------------------------------------------- counters + state
STATE_FILE = "kills.json"
STATE_VERSION = 1


class KillState:
    """Last seen oom_kill counter per cgroup, kept in ``<state_dir>/kills.json``.

    Written atomically (temporary file, fsync, rename) so a crash leaves either the old or
    the new state. A file that cannot be read is set aside as ``kills.json.corrupt`` with a
    warning: losing it costs only the kills that happened while the daemon was down.
    """

    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, STATE_FILE)
        try:
            os.makedirs(state_dir, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"state_dir: cannot create the directory: {exc.strerror} (got {state_dir!r})"
            ) from exc
        if not os.access(state_dir, os.W_OK | os.X_OK):
            raise ConfigError(f"state_dir: not writable (got {state_dir!r})")
        self.saved_at: float | None = None
        self.entries: dict[str, dict[str, Any]] = self._load()

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            return self._set_aside(f"cannot read: {exc}")
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            return self._set_aside("unknown format or version")
        cgroups = data.get("cgroups")
        if not isinstance(cgroups, dict):
            return self._set_aside("no 'cgroups' object")
        out: dict[str, dict[str, Any]] = {}
        for cg, entry in cgroups.items():
            if (
                isinstance(entry, dict)
                and isinstance(entry.get("oom_kill"), int)
                and (entry.get("id") is None or isinstance(entry.get("id"), int))
                and (
                    entry.get("oom_group_kill") is None
                    or isinstance(entry.get("oom_group_kill"), int)
                )
            ):
                out[str(cg)] = entry
        saved = data.get("saved_at")
        self.saved_at = float(saved) if isinstance(saved, int | float) else None
        return out

    def _set_aside(self, why: str) -> dict[str, dict[str, Any]]:
        log.warning("%s: %s; kills while the daemon was down cannot be reported", self.path, why)
        with contextlib.suppress(OSError):
            os.replace(self.path, self.path + ".corrupt")
        return {}

    def get(self, cgroup: str) -> dict[str, Any] | None:
        return self.entries.get(cgroup)

    def save(self, wall: float | None = None) -> None:
        data = {
            "version": STATE_VERSION,
            "saved_at": time.time() if wall is None else wall,
            "cgroups": self.entries,
        }
        fd, tmp = tempfile.mkstemp(prefix=".kills.", dir=self.state_dir)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


class CounterTracker:
    """Turns oom_kill counter readings into counter KillRecords (deltas since last seen).

    The first reading of a cgroup in this process is compared with the persisted one: the
    difference is reported as ``counters:restart`` (kills while the daemon was down). A
    cgroup with no persisted reading only sets the baseline. A counter that went down, or a
    cgroup id (directory inode) that changed, means the cgroup was recreated: its whole
    counter is new kills. Feed it the target's own kills (v2 memory.events.local, v1
    memory.oom_control), so nested targets do not count one kill twice.
    """

    def __init__(
        self,
        state: KillState | None = None,
        *,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
    ) -> None:
        self._state = state
        self._clock = clock
        self._wall = wall_clock
        self._live: dict[str, tuple[int, int | None, int | None]] = {}
        self._batch_depth = 0
        self._dirty = False

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Write the state file once for many observations (the start-up sweep)."""
        self._batch_depth += 1
        try:
            yield
        finally:
            self._batch_depth -= 1
            if self._batch_depth == 0 and self._dirty:
                self._persist()

    def _persist(self) -> None:
        if self._state is None:
            return
        if self._batch_depth:
            self._dirty = True
            return
        self._dirty = False
        try:
            self._state.save(self._wall())
        except OSError as exc:
            log.warning("%s: cannot save kill counters: %s", self._state.path, exc)

    def observe(
        self,
        key: str | None,
        cgroup: str,
        current: int,
        *,
        group_kills: int | None = None,
        cgroup_id: int | None = None,
    ) -> KillRecord | None:
        """A counter record for the kills since the last reading, or None when there were none.

        ``current`` is the oom_kill counter, ``group_kills`` the oom_group_kill one (v2 with
        memory.oom.group), ``cgroup_id`` the directory's inode (to notice a recreated cgroup).
        """
        delta, group_delta, restart = self._delta(cgroup, current, group_kills, cgroup_id)
        if self._state is not None:
            entry = {
                "oom_kill": current,
                "oom_group_kill": group_kills,
                "id": cgroup_id,
                "key": key,
            }
            if self._state.entries.get(cgroup) != entry:
                self._state.entries[cgroup] = entry
                self._persist()
        if delta <= 0:
            return None
        extra: dict[str, Any] = {"oom_kill": current}
        if group_delta > 0:
            extra["oom_group_kill_delta"] = group_delta
        if restart and self._state is not None and self._state.saved_at is not None:
            extra["down_since"] = self._state.saved_at
        return KillRecord(
            source=SOURCE_COUNTERS_RESTART if restart else SOURCE_COUNTERS,
            time=self._clock(),
            wall=self._wall(),
            cgroup=cgroup,
            cgroup_id=cgroup_id,
            count_delta=delta,
            extra=extra,
        )

    def _delta(
        self, cgroup: str, current: int, group: int | None, cgroup_id: int | None
    ) -> tuple[int, int, bool]:
        seen = self._live.get(cgroup)
        self._live[cgroup] = (current, cgroup_id, group)
        restart = False
        if seen is None:
            saved = self._state.get(cgroup) if self._state is not None else None
            if saved is None:
                return 0, 0, False
            saved_group = saved.get("oom_group_kill")
            seen = (
                int(saved["oom_kill"]),
                saved.get("id"),
                saved_group if isinstance(saved_group, int) else None,
            )
            restart = True
        last, last_id, last_group = seen
        recreated = last_id is not None and cgroup_id is not None and last_id != cgroup_id
        if recreated or current < last:
            return current, group or 0, restart
        group_delta = 0
        if group is not None:
            group_delta = (
                group - last_group if last_group is not None and group >= last_group else 0
            )
        return current - last, group_delta, restart

    def forget(self, cgroup: str) -> None:
        """The cgroup is gone: drop its baseline (live and persisted)."""
        self._live.pop(cgroup, None)
        if self._state is not None and self._state.entries.pop(cgroup, None) is not None:
            self._persist()


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class KillsConfig:
    """The ``kills`` section of the configuration."""

    kmsg_enabled: bool = True
    kmsg_path: str = "/dev/kmsg"
    kmsg_replay: bool = False
    tracepoint_enabled: bool = True
    tracefs: str = "/sys/kernel/tracing"
    bcc_enabled: bool = False
    window_seconds: float = 5.0

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None, where: str = "kills") -> KillsConfig:
        """Validate the section; every problem is reported at once in one ConfigError."""
        problems: list[str] = []
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: expected a mapping (got {data!r})")
        known = {"kmsg", "tracepoint", "bcc", "window_seconds"}
        problems += [f"{where}.{k}: unknown key (got {data[k]!r})" for k in data if k not in known]

        def section(name: str, keys: set[str]) -> Mapping[str, Any]:
            value = data.get(name, {})
            if value is None:
                return {}
            if not isinstance(value, Mapping):
                problems.append(f"{where}.{name}: expected a mapping (got {value!r})")
                return {}
            problems.extend(
                f"{where}.{name}.{k}: unknown key (got {value[k]!r})"
                for k in value
                if k not in keys
            )
            return value

        def flag(sec: Mapping[str, Any], path: str, name: str, default: bool) -> bool:
            value = sec.get(name, default)
            if not isinstance(value, bool):
                problems.append(f"{path}.{name}: expected true or false (got {value!r})")
                return default
            return value

        def text(sec: Mapping[str, Any], path: str, name: str, default: str) -> str:
            value = sec.get(name, default)
            if not isinstance(value, str) or not value.startswith("/"):
                problems.append(f"{path}.{name}: expected an absolute path (got {value!r})")
                return default
            return value

        kmsg = section("kmsg", {"enabled", "path", "replay"})
        tp = section("tracepoint", {"enabled", "tracefs"})
        bcc = section("bcc", {"enabled"})
        window = data.get("window_seconds", cls.window_seconds)
        if isinstance(window, bool) or not isinstance(window, int | float) or not 0 < window <= 300:
            problems.append(
                f"{where}.window_seconds: expected a number of seconds in (0, 300] (got {window!r})"
            )
            window = cls.window_seconds
        out = cls(
            kmsg_enabled=flag(kmsg, f"{where}.kmsg", "enabled", cls.kmsg_enabled),
            kmsg_path=text(kmsg, f"{where}.kmsg", "path", cls.kmsg_path),
            kmsg_replay=flag(kmsg, f"{where}.kmsg", "replay", cls.kmsg_replay),
            tracepoint_enabled=flag(tp, f"{where}.tracepoint", "enabled", cls.tracepoint_enabled),
            tracefs=text(tp, f"{where}.tracepoint", "tracefs", cls.tracefs),
            bcc_enabled=flag(bcc, f"{where}.bcc", "enabled", cls.bcc_enabled),
            window_seconds=float(window),
        )
        if problems:
            raise ConfigError(problems)
        return out


# --------------------------------------------------------------------------- sources
class KillSources:
    """Opens the configured kernel kill sources and says which are active and why not.

    Nothing here is fatal: a source the machine lacks (no /dev/kmsg access, no tracefs, no
    bcc) is reported inactive with the reason and the daemon goes on with the others.
    """

    def __init__(
        self,
        config: KillsConfig,
        *,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        proc: str = "/proc",
    ) -> None:
        self.config = config
        self._clock = clock
        self._wall = wall_clock
        self._proc = proc
        self.kmsg: kmsg_mod.KmsgReader | None = None
        self.tracepoint: tp_mod.MarkVictimSource | None = None
        self.bcc: BccProbe | None = None
        self._status: dict[str, tuple[bool, str]] = {
            SOURCE_COUNTERS: (
                True,
                "event-driven through the Watcher (memory.events.local / memory.oom_control)",
            ),
        }

    def start(self, since_usec: int | None = None) -> dict[str, tuple[bool, str]]:
        """Open every enabled source. ``since_usec`` (kmsg's clock): kmsg records from then
        on are read back from the kernel's buffer, so a kill while the daemon was starting
        up is not lost; None starts at the newest record."""
        cfg = self.config
        if not cfg.kmsg_enabled:
            self._status[SOURCE_KMSG] = (False, "disabled in config (kills.kmsg.enabled)")
        else:
            ok, why = kmsg_mod.available(cfg.kmsg_path)
            if ok:
                try:
                    self.kmsg = kmsg_mod.KmsgReader(
                        cfg.kmsg_path,
                        replay=cfg.kmsg_replay,
                        clock=self._clock,
                        wall_clock=self._wall,
                        since_usec=since_usec,
                    )
                    why = f"reading {cfg.kmsg_path}" + (" (replaying)" if cfg.kmsg_replay else "")
                except OSError as exc:
                    ok, why = False, f"{cfg.kmsg_path}: {exc.strerror}"
            self._status[SOURCE_KMSG] = (ok, why)

        if cfg.bcc_enabled:
            self.bcc = BccProbe(
                True,
                tracefs=cfg.tracefs,
                clock=self._clock,
                wall_clock=self._wall,
                proc=self._proc,
            )
            self.bcc.start()
            self._status[SOURCE_BCC] = (self.bcc.active, self.bcc.reason)
            if not self.bcc.active:
                self.bcc.close()
                self.bcc = None
        else:
            self._status[SOURCE_BCC] = (False, "disabled in config (kills.bcc.enabled)")

        if not cfg.tracepoint_enabled:
            self._status[SOURCE_TRACEPOINT] = (
                False,
                "disabled in config (kills.tracepoint.enabled)",
            )
        elif self.bcc is not None:
            self._status[SOURCE_TRACEPOINT] = (
                False,
                "the bcc probe is active and reports oom:mark_victim itself",
            )
        else:
            try:
                self.tracepoint = tp_mod.open_mark_victim(
                    cfg.tracefs, clock=self._clock, wall_clock=self._wall, proc=self._proc
                )
                self._status[SOURCE_TRACEPOINT] = (
                    True,
                    f"oom:mark_victim via perf_event_open on {len(self.tracepoint.fds())} CPUs "
                    f"({self.tracepoint.tracefs})",
                )
            except tp_mod.TracepointUnavailable as exc:
                self._status[SOURCE_TRACEPOINT] = (False, str(exc))
        for name, (active, why) in self._status.items():
            log.info("kill source %s: %s (%s)", name, "active" if active else "inactive", why)
        return self.status()

    def status(self) -> dict[str, tuple[bool, str]]:
        return dict(self._status)

    def expected(self, key: str | None) -> frozenset[str]:
        """Sources that see every kill of a watched target (for Reconciler(expected=...))."""
        names = {n for n, (on, _) in self._status.items() if on and n != SOURCE_COUNTERS}
        if key is not None:
            names.add(SOURCE_COUNTERS)
        return frozenset(names)

    def fds(self) -> list[tuple[int, str]]:
        """(fd, source) pairs to register for EPOLLIN."""
        out: list[tuple[int, str]] = []
        if self.kmsg is not None:
            out.append((self.kmsg.fd, SOURCE_KMSG))
        if self.tracepoint is not None:
            out += [(fd, SOURCE_TRACEPOINT) for fd in self.tracepoint.fds()]
        if self.bcc is not None:
            out += [(fd, SOURCE_BCC) for fd in self.bcc.fds()]
        return out

    def poll_interval(self) -> float | None:
        """Seconds between reads for a source without a pollable fd (a bcc without reader
        fds); None when every active source wakes epoll itself."""
        if self.bcc is not None and not self.bcc.fds():
            return 0.5
        return None

    def read(self, source: str | None = None) -> list[KillRecord]:
        """Drain one source (or all). Never blocks."""
        out: list[KillRecord] = []
        if self.kmsg is not None and source in (None, SOURCE_KMSG):
            out += self.kmsg.read_records()
        if self.tracepoint is not None and source in (None, SOURCE_TRACEPOINT):
            out += self.tracepoint.drain()
        if self.bcc is not None and source in (None, SOURCE_BCC):
            out += self.bcc.poll()
        return out

    def close(self) -> None:
        for src in (self.kmsg, self.tracepoint, self.bcc):
            if src is not None:
                src.close()
        self.kmsg = self.tracepoint = self.bcc = None


def kill_sources_status(sources: KillSources) -> dict[str, tuple[bool, str]]:
    """{source: (active, why)} of started kill sources (for `pressured doctor` and logs)."""
    return sources.status()
