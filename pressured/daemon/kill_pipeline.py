"""From kill records to `oom_killed` events: each record is attributed to a target (its
cgroup path, its cgroup id, or the target that last held its pid), the target's kill counter is
read so both meet inside the merge window, and the reconciler merges the records of one kill
into one event with the lead time of the warning before it. Each event says which limit
killed (kills.limits: ``limit_scope`` and ``limit``), in the log too, and carries the OOM-risk
figures of the target's last sample (``last_sample``: the daemon's live state keeps it), taken
when the kill's records arrive: a killed container's cgroup may be gone when it is reported."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping

from pressured.config import Config
from pressured.engine import Engine
from pressured.errors import CgroupFileError
from pressured.kernel import cgroupfs
from pressured.kills import (
    CounterTracker,
    KillJournal,
    KillsConfig,
    KillSources,
    KillState,
    Reconciler,
    attribute,
)
from pressured.kills.limits import CgroupTree, LimitScope, which_limit
from pressured.model import KillRecord, OomKill, RiskFigures, Sample

from .targets import Targets, TargetState

log = logging.getLogger("pressured.daemon")

Emit = Callable[[OomKill, TargetState | None], None]


class KillPipeline:
    def __init__(
        self,
        cfg: Config,
        targets: Targets,
        engine: Engine,
        emit: Emit,
        *,
        clock: Callable[[], float],
        wall: Callable[[], float],
        proc_root: str,
        started_usec: int | None = None,
        last_sample: Callable[[str], Sample | None] | None = None,
    ) -> None:
        self._cfg = cfg
        self._targets = targets
        self._engine = engine
        self._last_sample = last_sample
        self._emit = emit
        self._clock = clock
        self.config = KillsConfig.from_mapping(cfg.get("kills"))
        self.sources = KillSources(self.config, clock=clock, wall_clock=wall, proc=proc_root)
        self._started_usec = started_usec
        state_dir = cfg.get("state_dir")
        self.tracker = CounterTracker(
            KillState(state_dir) if state_dir else None, clock=clock, wall_clock=wall
        )
        self.journal = KillJournal(state_dir) if state_dir else None
        self.reconciler = Reconciler(
            self.config.window_seconds,
            clock,
            first_warn=lambda key: engine.first_warn_time(key, at=clock()),
            expected=self.sources.expected,
            dry_run=cfg.dry_run,
        )
        self.status: dict[str, tuple[bool, str]] = {}
        self._tree = (
            None
            if cfg.mode == "cluster"
            else CgroupTree.from_root(str(cfg.get("source.cgroup.path", "/sys/fs/cgroup")))
        )

    def start(self) -> dict[str, tuple[bool, str]]:
        """Open the kernel's kill sources; {source: (active, why)}."""
        status = self.sources.start(self._started_usec)
        if self._cfg.mode == "cluster":
            # the kernel of this pod's node is not the one whose kills matter here
            self.sources.close()
            status = {"cluster": (True, "Events OOMKilling and lastState OOMKilled")}
        self.status = status
        return status

    def fds(self) -> list[tuple[int, str]]:
        """(fd, source) pairs for the daemon's epoll."""
        return self.sources.fds()

    def poll_interval(self) -> float | None:
        return self.sources.poll_interval()

    def next_deadline(self) -> float | None:
        return self.reconciler.next_deadline()

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Counter observations inside are saved to the state directory once, at the end."""
        with self.tracker.batch():
            yield

    @property
    def watches_everything(self) -> bool:
        """Local mode over the whole tree, or a node: a kill outside every target is still a
        kill on this machine (a global OOM, an unlimited cgroup) and is reported. With named
        targets (--cgroup, a sidecar's own pod) kernel sources also see the neighbours' kills,
        which are not ours to report."""
        if self._cfg.mode == "local":
            return not self._cfg.get("source.cgroup.paths")
        return self._cfg.mode == "node"

    # ------------------------------------------------------------------ records in
    def observe_counters(self, state: TargetState) -> None:
        """Read the target's kill counter; a rise is a counter record for the reconciler."""
        ref = state.spec.ref
        if ref is None:
            return
        try:
            counters = cgroupfs.read_kill_counters(ref)
        except CgroupFileError:
            return
        record = self.tracker.observe(
            state.key,
            ref.relpath,
            counters.oom_kill_count,
            group_kills=counters.oom_group_kill,
            cgroup_id=state.cgroup_id,
        )
        if record is not None:
            self._add(record, state.key, state)

    def read_source(self, name: str) -> None:
        """A kill source's fd is readable (or its poll is due): attribute what it has."""
        records = self.sources.read(name)
        if not records:
            return
        paths = self._targets.relpaths()
        ids = self._targets.by_cgroup_id()
        for r in records:
            key = attribute(r.cgroup, paths)
            if key is None and r.cgroup_id is not None:
                key = ids.get(r.cgroup_id)
            if key is None and r.pid is not None:
                key = self._targets.owner_of(r.pid)
            state = self._targets.get(key)
            self._add(r, key, state)
            if state is not None:
                # the counter moved too: read it now so both records meet inside the window
                self.observe_counters(state)

    def poll_sources(self) -> None:
        """Sources no fd wakes the loop for (a bcc probe without reader fds)."""
        for name in self.sources.polled():
            self.read_source(name)

    def add_polled(self, records: Iterable[KillRecord]) -> None:
        """Kill records a polling source found (cluster mode: Events, lastState)."""
        for record in records:
            extra = record.extra if isinstance(record.extra, Mapping) else {}
            key = extra.get("key")
            state = self._targets.get(key)
            identity = state.spec.identity if state else extra.get("identity")
            self.reconciler.add(
                record,
                key=key,
                cgroup=state.cgroup if state else record.cgroup,
                identity=identity,
                annotations=dict(state.spec.annotations) if state else None,
                risk=self._risk(key if isinstance(key, str) else None, record),
            )

    def _add(self, record: KillRecord, key: str | None, state: TargetState | None) -> None:
        self.reconciler.add(
            record,
            key=key,
            cgroup=state.cgroup if state else record.cgroup,
            identity=state.spec.identity if state else None,
            annotations=dict(state.spec.annotations) if state else None,
            risk=self._risk(key, record),
        )

    def _risk(self, key: str | None, record: KillRecord) -> RiskFigures | None:
        """The figures of ``key``'s last sample; none for kills while the daemon was down
        (its last sample is not from before them)."""
        if key is None or record.restart or self._last_sample is None:
            return None
        sample = self._last_sample(key)
        if sample is None:
            return None
        return RiskFigures.of(sample, self._engine.settings.metric)

    def forget(self, state: TargetState) -> None:
        """The target is gone; its last counters were read before."""
        if state.spec.ref is not None:
            self.tracker.forget(state.spec.ref.relpath)

    # ------------------------------------------------------------------ events out
    def flush(self, now: float) -> None:
        for kill in self.reconciler.flush(now):
            self._report(kill)

    def _report(self, kill: OomKill) -> None:
        state = self._targets.get(kill.key)
        if state is None and not self.watches_everything:
            log.debug(
                "kill of pid %s in %s: not a watched target, not reported", kill.pid, kill.cgroup
            )
            return
        kill = self._with_limit(kill)
        if self.journal is not None:
            self.journal.append(kill)
        self._emit(kill, state)

    def _with_limit(self, kill: OomKill) -> OomKill:
        """The kill with which limit killed it (scope, cgroup, limits, words), also logged."""
        if self._tree is None:
            verdict = LimitScope(
                "unknown",
                "which limit killed is unknown: in cluster mode the node's kernel is not read",
            )
        else:
            verdict = which_limit(kill.extra, self._tree)
        log.info(
            "OOM kill of %s (pid %s) in %s: %s",
            kill.comm or "?",
            kill.pid if kill.pid is not None else "?",
            kill.cgroup or "?",
            verdict.text,
        )
        return dataclasses.replace(kill, extra={**kill.extra, **verdict.as_event_fields()})

    def close(self) -> None:
        """Every kill still in a merge window is reported, then the sources close."""
        for kill in self.reconciler.drain():
            self._report(kill)
        self.sources.close()
