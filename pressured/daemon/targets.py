"""The target table: who is watched, armed in the Watcher at which levels, how each is read,
and which target held a pid when it was last seen."""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pressured.engine import Engine
from pressured.errors import CgroupFileError
from pressured.kernel import cgroupfs, procfs, sampler
from pressured.kernel.watch import ArmReport, Watcher
from pressured.model import MACHINE, Overrides, Sample
from pressured.sources.base import TargetSpec

log = logging.getLogger("pressured.daemon")

MAX_PIDS_IN_EVENT = 64
MAX_PID_OWNERS = 65536


@dataclass(slots=True)
class TargetState:
    spec: TargetSpec
    limit: int | None = None
    levels: list[int] = field(default_factory=list)
    overrides: Overrides | None = None
    cgroup_id: int | None = None
    """Inode of the cgroup directory (the kernel's cgroup id on v2), taken once when armed."""

    @property
    def key(self) -> str:
        return self.spec.key

    @property
    def cgroup(self) -> str:
        return self.spec.ref.path if self.spec.ref is not None else self.spec.key


class Targets:
    """Every watched target by key, and what arming, re-arming and dropping one means."""

    def __init__(
        self,
        engine: Engine,
        watcher: Watcher,
        *,
        proc_root: str,
        clock: Callable[[], float],
    ) -> None:
        self.engine = engine
        self.watcher = watcher
        self._proc = proc_root
        self._clock = clock
        self._table: dict[str, TargetState] = {}
        self._pid_owner: dict[int, str] = {}
        self._noted: set[str] = set()
        self.vanished_while_arming = 0
        """Cgroups removed between being listed and being armed: an expected race."""

    # ------------------------------------------------------------------ the table
    def __contains__(self, key: str) -> bool:
        return key in self._table

    def __len__(self) -> int:
        return len(self._table)

    def states(self) -> list[TargetState]:
        return list(self._table.values())

    def get(self, key: str | None) -> TargetState | None:
        return self._table.get(key) if key else None

    def all_keys(self) -> list[str]:
        return list(self._table)

    def relpaths(self) -> dict[str, str]:
        """Key -> cgroup path as the kernel names it, for attributing kill records."""
        return {k: s.spec.ref.relpath for k, s in self._table.items() if s.spec.ref is not None}

    def by_cgroup_id(self) -> dict[int, str]:
        return {s.cgroup_id: k for k, s in self._table.items() if s.cgroup_id is not None}

    def owner_of(self, pid: int) -> str | None:
        """The target that held ``pid`` when its processes were last read."""
        return self._pid_owner.get(pid)

    # ------------------------------------------------------------------ arming
    def levels(self, state: TargetState) -> list[int]:
        levels = self.engine.levels_bytes(state.limit, state.overrides, include_hysteresis=True)
        if self.engine.settings.predict_seconds and state.limit:
            # growth tracking (time-to-OOM) needs reads before the warn level: from half the limit
            levels = sorted({*levels, state.limit // 2})
        return levels

    def add_machine(self) -> TargetState | None:
        try:
            report = self.watcher.add_machine(MACHINE)
        except (OSError, CgroupFileError) as exc:
            log.warning("cannot watch the machine itself: %s", exc)
            return None
        state = self._table[MACHINE] = TargetState(TargetSpec(MACHINE, None))
        self._log_report(report)
        return state

    def add(self, spec: TargetSpec) -> TargetState | None:
        """Arm a new target; None when it cannot be watched (said in the log)."""
        added = self.add_many([spec])
        return added[0] if added else None

    def add_many(
        self,
        specs: Sequence[TargetSpec],
        on_added: Callable[[TargetState], None] | None = None,
    ) -> list[TargetState]:
        """Arm new targets, their kernel registrations overlapping (Watcher.add_cgroups: the
        nearest to their limit first). ``on_added`` is called for each as soon as it is armed,
        on this thread; the ones that cannot be watched are said in the log, each by name."""
        out: list[TargetState] = []
        pending: dict[str, TargetState] = {}
        items: list[tuple[str, cgroupfs.CgroupRef, list[int]]] = []
        for spec in specs:
            state = TargetState(spec, overrides=spec.overrides)
            if spec.ref is None:  # cluster mode: sampled by the source, nothing to arm here
                self._table[spec.key] = state
                out.append(state)
                if on_added is not None:
                    on_added(state)
                continue
            try:
                state.cgroup_id = os.stat(spec.ref.path).st_ino
                state.limit = cgroupfs.read_limit(spec.ref)
            except (CgroupFileError, OSError) as exc:
                self._not_armed(spec, exc)
                continue
            state.levels = self.levels(state)
            pending[spec.key] = state
            items.append((spec.key, spec.ref, state.levels))

        def armed(key: str, result: ArmReport | Exception) -> None:
            state = pending[key]
            if isinstance(result, Exception):
                self._not_armed(state.spec, result)
                return
            self._table[key] = state
            self._log_report(result)
            out.append(state)
            if on_added is not None:
                on_added(state)

        if items:
            self.watcher.add_cgroups(items, on_armed=armed)
        return out

    def _not_armed(self, spec: TargetSpec, exc: Exception) -> None:
        assert spec.ref is not None
        if not os.path.isdir(spec.ref.path):
            # listed, then removed before it could be armed (short-lived containers)
            self.vanished_while_arming += 1
            log.debug("%s vanished while being armed: %s", spec.key, exc)
        else:
            log.warning("cannot watch %s: %s", spec.key, exc)

    def update(self, state: TargetState, spec: TargetSpec) -> None:
        """The source says something about a target changed (annotations, identity)."""
        state.spec = spec
        state.overrides = spec.overrides
        self.rearm(state)

    def rearm(self, state: TargetState) -> None:
        self.rearm_many([state])

    def rearm_many(self, states: Sequence[TargetState]) -> None:
        """Levels follow the settings and limits now; moved ones are re-registered together,
        each new registration in place before its old one is closed."""
        moved: dict[str, Sequence[int]] = {}
        for state in states:
            levels = self.levels(state)
            if levels != state.levels and state.key in self.watcher:
                state.levels = levels
                moved[state.key] = levels
        if moved:
            self.watcher.set_levels_many(moved)

    def set_limit(self, state: TargetState, limit: int | None) -> None:
        """A new limit seen in a sample: the Watcher's levels follow it."""
        if limit == state.limit:
            return
        state.limit = limit
        if state.spec.ref is not None:
            self.watcher.set_limit(state.key, limit)
            self.rearm(state)

    def drop(self, key: str) -> TargetState | None:
        state = self._table.pop(key, None)
        self.watcher.remove(key)
        if state is not None:
            self.engine.forget(key)
        return state

    def _log_report(self, report: ArmReport) -> None:
        log.info("watching %s: %s", report.key, ", ".join(report.armed) or "adaptive reads only")
        for note in report.missing:
            log.debug("%s: not armed: %s", report.key, note)
        for note in self.watcher.psi_window_notes:
            if note not in self._noted:
                self._noted.add(note)
                log.info("%s", note)

    # ------------------------------------------------------------------ reading
    def read_sample(self, state: TargetState) -> Sample | None:
        ref = state.spec.ref
        if ref is None and state.key != MACHINE:
            return None  # cluster mode: the source samples
        sample = sampler.read_sample(
            state.key,
            ref,
            now=self._clock(),
            proc=self._proc,
            pids=self.pids(state) if ref is not None else (),
        )
        if ref is not None:
            state.limit = sample.limit_bytes
        return sample

    def pids(self, state: TargetState, *, live: bool = False) -> list[int]:
        """The target's processes now (cgroup.procs), at most MAX_PIDS_IN_EVENT. With ``live``
        only those alive: an OOM victim is listed there while its memory is being freed."""
        if state.spec.ref is None:
            return []
        try:
            pids = cgroupfs.read_pids(state.spec.ref)
        except CgroupFileError:
            return []
        # who owned which pid when last seen: kmsg's cgroup line is rate-limited (10 per 5 s)
        # and a reaped victim's /proc/PID/cgroup is gone, so a burst of kills often arrives
        # with only a pid; the target that held it is still known from here
        for pid in pids[:MAX_PIDS_IN_EVENT]:
            self._pid_owner[pid] = state.key
        if len(self._pid_owner) > MAX_PID_OWNERS:
            self._pid_owner.clear()
        if live:
            alive = (p for p in pids if procfs.process_alive(p, self._proc))
            return list(itertools.islice(alive, MAX_PIDS_IN_EVENT))
        return pids[:MAX_PIDS_IN_EVENT]
