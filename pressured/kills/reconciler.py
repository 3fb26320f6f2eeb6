"""The kill reconciler: the records of every source merged into one OomKill per kill.

The daemon attributes each record to a watched target (:func:`attribute` by kernel cgroup
path, else by cgroup id, else None) and hands it to :class:`Reconciler`.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from pressured.kills.base import Clock
from pressured.model import (
    SOURCE_COUNTERS,
    SOURCE_COUNTERS_RESTART,
    Identity,
    KillRecord,
    OomKill,
    RiskFigures,
)

log = logging.getLogger("pressured.kills.reconciler")

SWAP_NEIGHBOURS = 16
NEAREST = 32
REROUTE_BRANCHES = 4
REROUTE_DEPTH = 3


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
    risk: RiskFigures | None = None
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
    risk: RiskFigures | None = None
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
    fit: dict[tuple[int, int], float] = field(default_factory=dict)  # (counter, kill)
    holders_of: dict[int, list[_Unit]] = field(default_factory=dict)
    stranded: list[_Unit] = field(default_factory=list)

    def pair(self, u: _Unit, g: _Group) -> None:
        self.by_group[id(g)] = u
        self.by_unit[id(u)] = g

    def cost(self, u: _Unit, g: _Group) -> float | None:
        """How badly unit ``u`` fits kill ``g`` (None: it may not take it). Every unit of one
        counter delta fits alike."""
        return self.fit.get((id(u.counter), id(g)))


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
        risk: RiskFigures | None = None,
    ) -> None:
        """Take one record. ``key``/``cgroup`` name the watched target it belongs to (None
        when the daemon could not attribute it); ``cgroup`` defaults to the record's own.
        ``risk``: the figures of that target's last sample, taken now (the target may be gone
        when the kill is reported)."""
        now = self._clock()
        ident = identity or Identity()
        notes = dict(annotations or {})
        target_cgroup = cgroup if cgroup is not None else record.cgroup
        if record.pid is None:
            self._add_counter(
                record,
                key=key,
                cgroup=target_cgroup,
                identity=ident,
                annotations=notes,
                now=now,
                risk=risk,
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
                risk=risk,
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
            group.risk = risk
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
        risk: RiskFigures | None,
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
            None if record.restart else risk,
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
        per_counter: dict[int, list[_Group]] = {}
        for u in units:
            c = u.counter
            shared = per_counter.get(id(c))
            if shared is not None:
                options[id(u)] = shared
                for g in shared:
                    m.holders_of.setdefault(id(g), []).append(u)
                continue
            if c.key is None:
                options[id(u)] = per_counter[id(c)] = []
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
                    # a burst: the nearest kills in time are enough to find a matching, as
                    # many as the delta's own kills beyond a margin (one reading can cover
                    # hundreds of kills; all its units look around the same time)
                    near = NEAREST + c.record.count_delta
                    if hi - lo > 2 * near:
                        mid = bisect_left(pool_times, t)
                        lo, hi = max(lo, mid - near), min(hi, mid + near)
                    chosen = pool[lo:hi]
                for g in chosen:
                    dt = abs(g.time - t)
                    scored.append((loose, dt, g))
                    m.fit[id(c), id(g)] = dt + (0.5 * w if loose else 0.0)
                    m.holders_of.setdefault(id(g), []).append(u)
            scored.sort(key=lambda s: (s[0], s[1]))
            options[id(u)] = per_counter[id(c)] = [g for _, _, g in scored]
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
                    if u1.counter is u2.counter:
                        continue  # alike: a swap changes nothing
                    c12, c21 = m.cost(u1, g2), m.cost(u2, g1)
                    c11, c22 = m.cost(u1, g1), m.cost(u2, g2)
                    if c12 is None or c21 is None or c11 is None or c22 is None:
                        continue
                    before = c11 + c22
                    if c12 + c21 < before - 1e-9:
                        m.pair(u1, g2)
                        m.pair(u2, g1)
                        changed = True
            if not changed:
                break
        self._reroute(m, groups)

    def _reroute(self, m: _Matching, groups: dict[int, _Group]) -> None:
        """Move units along short alternating paths that start at a kill no unit holds: a
        unit moves to a kill it fits better, the kill it left is taken by another unit that
        fits it better, and so on; the kill left at the end goes without. The matching keeps
        its size and every unit its kill; only the summed time distance falls. Swaps alone
        miss this: a counter delta whose best kill was taken by an earlier counter's unit
        would leave that earlier counter's own kill without a unit. Each step takes one of
        the few units that gain most by it, so a burst stays cheap."""
        free = [gid for gid in groups if gid not in m.by_group]
        budget = 4 * len(groups)
        while free and budget > 0:
            budget -= 1
            g0 = groups[free.pop()]
            if id(g0) in m.by_group:
                continue
            best: tuple[float, list[tuple[_Unit, _Group]]] = (1e-9, [])
            stack = [(g0, 0.0, list[tuple[_Unit, _Group]](), {id(g0)})]
            while stack:
                g, gain, path, seen = stack.pop()
                steps = []
                for u in m.holders_of.get(id(g), ()):
                    held = m.by_unit.get(id(u))
                    if held is None or id(held) in seen:
                        continue
                    step = (m.cost(u, held) or 0.0) - (m.cost(u, g) or 0.0)
                    if step > 1e-9:
                        steps.append((step, u, held))
                steps.sort(key=lambda s: -s[0])
                for step, u, held in steps[:REROUTE_BRANCHES]:
                    moves = [*path, (u, g)]
                    if gain + step > best[0]:
                        best = (gain + step, moves)
                    if len(moves) < REROUTE_DEPTH:
                        stack.append((held, gain + step, moves, seen | {id(held)}))
            if not best[1]:
                continue
            for u, _ in best[1]:
                del m.by_group[id(m.by_unit[id(u)])]
            left = m.by_unit[id(best[1][-1][0])]
            for u, g in best[1]:
                m.pair(u, g)
            free.append(id(left))

    def _serve_due(self, g: _Group, m: _Matching, now: float, depth: int) -> bool:
        """Give a kill that must be reported now a unit held by a kill that is not due yet,
        along a short alternating path."""
        if depth == 0:
            return False
        holders = sorted(
            (
                (u, h)
                for u in m.holders_of.get(id(g), ())
                if (h := m.by_unit.get(id(u))) is not None
            ),
            key=lambda p: m.cost(p[0], g) or 0.0,
        )[:REROUTE_BRANCHES]
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
        for name in (
            "oom_memcg",
            "constraint",
            "memcg_id",
            "cgroup_name",
            "parent_cgroup_name",
            "oom_group",
            "totalpages",
        ):
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
            risk=None if g.restart else g.risk or (g.unit.counter.risk if g.unit else None),
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
            risk=c.risk,
        )
