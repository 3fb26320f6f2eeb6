"""The one loop: source -> Watcher -> samples -> engine -> actions; kills -> reconciler.

Everything waits in the Watcher's epoll: kernel notifications, the adaptive-read deadlines,
the signal pipe (SIGTERM/SIGINT stop, SIGHUP reloads), kmsg and perf rings, the local source's
inotify. Actions run on one worker thread in the configured order, so a slow webhook never
delays the next wake-up; destructive actions re-read their target first and are skipped when
the event no longer holds for that reading (Engine.still_holds; earlyoom re-checks memory
before killing).
"""

from __future__ import annotations

import contextlib
import faulthandler
import functools
import itertools
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from importlib.metadata import entry_points
from typing import Any

from pressured import native
from pressured.actions.base import Action, ActionContext
from pressured.config import Config
from pressured.engine import Engine, EngineSettings, ThresholdOverride
from pressured.errors import (
    ActionError,
    CgroupError,
    CgroupFileError,
    ConfigError,
    PressuredError,
    did_you_mean,
)
from pressured.kernel import cgroupfs, procfs, sampler
from pressured.kernel.watch import PsiSpec, Wakeup, Watcher, WatchOptions
from pressured.kills import (
    CounterTracker,
    KillsConfig,
    KillSources,
    KillState,
    Reconciler,
    attribute,
)
from pressured.model import MACHINE, Event, OomKill, PressureEvent, Sample
from pressured.sources.base import Source, TargetSpec
from pressured.sources.factory import make_source

log = logging.getLogger("pressured.daemon")

ACTION_GROUP = "pressured.actions.v1"
MAX_PIDS_IN_EVENT = 64


def load_action_classes() -> dict[str, type[Action]]:
    """Action classes by type name; a plugin that fails to import is skipped with a warning."""
    out: dict[str, type[Action]] = {}
    for ep in entry_points(group=ACTION_GROUP):
        try:
            cls = ep.load()
        except Exception as exc:
            log.warning(
                "action plugin %r (%s) cannot be loaded, skipped: %s", ep.name, ep.value, exc
            )
            continue
        if not (isinstance(cls, type) and issubclass(cls, Action)):
            log.warning(
                "action plugin %r (%s) is not an Action subclass, skipped", ep.name, ep.value
            )
            continue
        out[ep.name] = cls
    return out


def build_actions(cfg: Config, ctx: ActionContext) -> list[Action]:
    """Validate and build every configured action; all problems in one ConfigError."""
    classes = load_action_classes()
    actions: list[Action] = []
    problems: list[str] = []
    # heapdump first: it adds pprof_top to the event the later actions report
    entries = sorted(
        enumerate(cfg.actions), key=lambda e: 0 if e[1].get("type") == "heapdump" else 1
    )
    for i, entry in entries:
        where = f"actions[{i}]"
        kind = entry.get("type")
        cls = classes.get(str(kind))
        if cls is None:
            problems.append(
                f"{where}.type: unknown action {kind!r}; known: {', '.join(sorted(classes))}"
                f"{did_you_mean(str(kind), classes)}"
            )
            continue
        options = {k: v for k, v in entry.items() if k != "type"}
        try:
            actions.append(cls(options, ctx, where))
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        for a in actions:
            a.close()
        raise ConfigError(problems)
    return actions


def protect_self(adj: int = -900) -> str:
    """Lower our own oom_score_adj so the kernel kills what we watch before us."""
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(adj))
    except OSError as exc:
        return f"cannot lower own oom_score_adj to {adj}: {exc.strerror} (needs CAP_SYS_RESOURCE)"
    return f"own oom_score_adj set to {adj}"


@dataclass
class TargetState:
    spec: TargetSpec
    limit: int | None = None
    levels: list[int] = field(default_factory=list)
    overrides: ThresholdOverride | None = None
    cgroup_id: int | None = None
    """Inode of the cgroup directory (the kernel's cgroup id on v2), taken once when armed."""

    @property
    def key(self) -> str:
        return self.spec.key

    @property
    def cgroup(self) -> str:
        return self.spec.ref.path if self.spec.ref is not None else self.spec.key


class ActionRunner:
    """Runs the action chain for each event on one worker thread, in order."""

    def __init__(
        self,
        actions: list[Action],
        *,
        reread: Callable[[Event], bool],
        on_failure: Callable[[str], None],
    ) -> None:
        self.actions = actions
        self._reread = reread
        self._on_failure = on_failure
        self._queue: queue.Queue[Event | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="pressured-actions", daemon=True)
        self._thread.start()

    def submit(self, event: Event) -> None:
        self._queue.put(event)

    def _loop(self) -> None:
        while True:
            event = self._queue.get()
            if event is None:
                return
            self.run_chain(event)

    def run_chain(self, event: Event) -> None:
        still_valid: bool | None = None
        for action in self.actions:
            if (
                action.destructive
                and isinstance(event, PressureEvent)
                and event.severity != "recovered"
            ):
                if still_valid is None:
                    still_valid = self._reread(event)
                if not still_valid:
                    log.info(
                        "%s skipped for %s: the target recovered before it ran",
                        action.type,
                        event.cgroup,
                    )
                    continue
            try:
                action.run(event)
            except ActionError as exc:
                log.warning("action %s failed for %s: %s", action.type, event.cgroup, exc)
                self._on_failure(action.type)
            except Exception as exc:
                log.error(
                    "action %s raised for %s: %s: %s",
                    action.type,
                    event.cgroup,
                    type(exc).__name__,
                    exc,
                )
                self._on_failure(action.type)

    def close(self, timeout: float = 10.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)
        for a in self.actions:
            try:
                a.close()
            except Exception as exc:
                log.warning("closing action %s: %s", a.type, exc)


class Daemon:
    def __init__(
        self,
        cfg: Config,
        *,
        reload: Callable[[], Config] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        source: Source | None = None,
        started_usec: int | None = None,
    ) -> None:
        """``started_usec``: when the process started, on /dev/kmsg's clock (the CLI passes
        it): kills from then on are reported even if they happened before arming finished."""
        self.cfg = cfg
        self._started_usec = started_usec
        self._reload = reload
        self._clock = clock
        self._wall = wall
        self.proc_root = str(cfg.get("source.proc_root"))
        self.engine = Engine(EngineSettings.from_config(cfg.data))
        self.source = source or make_source(cfg)
        self.targets: dict[str, TargetState] = {}
        self.watcher = Watcher(self._watch_options(cfg), clock=clock, proc=self.proc_root)
        self._stop = False
        self._hup = False
        self.metrics: Any = None
        self._metrics_server: Any = None
        self.kills: Any = None
        self.reconciler: Any = None
        self.tracker: Any = None
        self._fd_names: dict[str, Callable[[], None]] = {}
        self.runner: ActionRunner | None = None
        self.ctx: ActionContext | None = None
        self._noted: set[str] = set()
        self._pid_owner: dict[int, str] = {}
        self.exit_reason = ""
        self.ready = False
        self.kill_status: dict[str, tuple[bool, str]] = {}
        """True once every target found at start is armed and the kill sources are open."""

    @staticmethod
    def _watch_options(cfg: Config) -> WatchOptions:
        psi = None
        if cfg.get("source.psi.enabled"):
            psi = PsiSpec(
                cfg.get("source.psi.kind"),
                cfg.get("source.psi.stall_us"),
                cfg.get("source.psi.window_us"),
            )
        rules = cfg.get("rules") or {}
        return WatchOptions(
            min_interval_s=cfg.get("source.min_interval_ms") / 1000,
            max_interval_s=cfg.get("source.poll_interval_ms") / 1000,
            psi=psi,
            read_always=bool(rules.get("warning") or rules.get("critical")),
        )

    # ------------------------------------------------------------------ set-up
    def start(self) -> None:
        log.info("%s", protect_self())
        self.ctx = ActionContext(
            dry_run=self.cfg.dry_run,
            mode=self.cfg.mode,
            node_name=self.cfg.get("kubernetes.node_name"),
            proc_root=self.proc_root,
            config=self.cfg.data,
            logger=logging.getLogger("pressured.actions"),
            storage_factory=self._storage,
            reread=self._reread_sample,
            kube=getattr(self.source, "kube", None),
            extra={"events_out": self.cfg.get("events_out")},
        )
        actions = build_actions(self.cfg, self.ctx)
        self.runner = ActionRunner(
            actions, reread=self._still_valid, on_failure=self._action_failed
        )
        if self.cfg.get("metrics.enabled"):
            self._start_metrics()
        self.source.start()
        fd = getattr(self.source, "fd", None)
        if isinstance(fd, int):
            self._watch_fd(fd, "source", self._on_source_fd)
        elif self.source.watch_dirs():
            # node and sidecar sources: new pod/container directories mean new targets
            self._dirs = native.Inotify()
            self._watch_fd(self._dirs.fd, "source-dirs", self._on_source_dirs)
            self._watch_source_dirs()
        self._start_kills()
        if self.cfg.get("source.machine") and self.cfg.mode == "local":
            self._add_machine()
        with self.tracker.batch():  # the state file is written once for every target found
            self._sync_targets()
        self._announce_ready()

    def _announce_ready(self) -> None:
        """Say once that start-up is over: tests, probes and people wait for this line (or for
        /healthz to answer 200), never for a guessed time."""
        self.ready = True
        active = [name for name, (on, _why) in self.kill_status.items() if on]
        log.info(
            "ready: %d target(s) watched, kill sources: %s",
            len(self.targets),
            ", ".join(active) or "none",
        )

    _storage_obj: Any = None

    def _storage(self) -> Any:
        if self._storage_obj is None:
            from pressured.storage.factory import open_storage  # noqa: PLC0415

            self._storage_obj = open_storage(self.cfg.get("storage"), "storage")
        return self._storage_obj

    def _start_metrics(self) -> None:
        from pressured.metrics import Metrics, start_http  # noqa: PLC0415

        self.metrics = Metrics(
            self.cfg.get("kubernetes.node_name"),
            self.cfg.get("metrics.pid_labels"),
            clock=self._clock,
        )
        self._metrics_server = start_http(
            self.metrics.registry,
            self.cfg.get("metrics.address"),
            self.cfg.get("metrics.port"),
            health=self.health,
        )

    def health(self) -> tuple[bool, str]:
        """What /healthz answers: not ready (503) until every start-up target is armed."""
        return (True, "ok") if self.ready else (False, "starting: arming targets")

    def _start_kills(self) -> None:
        kcfg = KillsConfig.from_mapping(self.cfg.get("kills"))
        self.kills = KillSources(
            kcfg, clock=self._clock, wall_clock=self._wall, proc=self.proc_root
        )
        status = self.kills.start(self._started_usec)
        if self.cfg.mode == "cluster":
            # the kernel of this pod's node is not the one whose kills matter here
            self.kills.close()
            status = {"cluster": (True, "Events OOMKilling and lastState OOMKilled")}
        self.kill_status = status
        for fd, name in self.kills.fds():
            self._watch_fd(fd, f"kills:{name}", functools.partial(self._on_kill_fd, name))
        state_dir = self.cfg.get("state_dir")
        state = KillState(state_dir) if state_dir else None
        self.tracker = CounterTracker(state, clock=self._clock, wall_clock=self._wall)
        self.reconciler = Reconciler(
            kcfg.window_seconds,
            self._clock,
            first_warn=lambda key: self.engine.first_warn_time(key, at=self._clock()),
            expected=self.kills.expected,
            dry_run=self.cfg.dry_run,
        )
        if self.metrics is not None:
            for name, (active, _why) in status.items():
                self.metrics.set_kill_source(name, active)

    def _watch_fd(self, fd: int, name: str, handler: Callable[[], None]) -> None:
        self.watcher.watch_fd(fd, name)
        self._fd_names[name] = handler

    def _add_machine(self) -> None:
        try:
            report = self.watcher.add_machine(MACHINE)
        except (OSError, CgroupFileError) as exc:
            log.warning("cannot watch the machine itself: %s", exc)
            return
        state = TargetState(TargetSpec(MACHINE, None))
        self.targets[MACHINE] = state
        self._log_report(report.key, report.armed, report.missing)
        self._refresh(state, "start")

    def _log_report(self, key: str, armed: tuple[str, ...], missing: tuple[str, ...]) -> None:
        log.info("watching %s: %s", key, ", ".join(armed) or "adaptive reads only")
        for note in missing:
            log.debug("%s: not armed: %s", key, note)
        for note in self.watcher.psi_window_notes:
            if note not in self._noted:
                self._noted.add(note)
                log.info("%s", note)

    # ------------------------------------------------------------------ targets
    def _overrides(self, spec: TargetSpec) -> ThresholdOverride | None:
        o = spec.overrides
        if o.warn_percent is None and o.critical_percent is None and o.cooldown_seconds is None:
            return None
        return ThresholdOverride(o.warn_percent, o.critical_percent, o.cooldown_seconds)

    def _levels(self, state: TargetState) -> list[int]:
        levels = self.engine.levels_bytes(state.limit, state.overrides, include_hysteresis=True)
        if self.engine.settings.predict_seconds and state.limit:
            # growth tracking (time-to-OOM) needs reads before the warn level: from half the limit
            levels = sorted({*levels, state.limit // 2})
        return levels

    def _sync_targets(self) -> None:
        wanted = {spec.key: spec for spec in self.source.targets()}
        for key in [k for k in self.targets if k != MACHINE and k not in wanted]:
            self._drop(key, "no longer a target")
        for key, spec in wanted.items():
            current = self.targets.get(key)
            if current is not None:
                if current.spec != spec:
                    current.spec = spec
                    current.overrides = self._overrides(spec)
                    self._rearm(current)
                continue
            if spec.ref is None:
                self.targets[key] = TargetState(spec, overrides=self._overrides(spec))
                continue
            state = TargetState(spec, overrides=self._overrides(spec))
            try:
                state.cgroup_id = os.stat(spec.ref.path).st_ino
                state.limit = cgroupfs.read_limit(spec.ref)
                state.levels = self._levels(state)
                report = self.watcher.add_cgroup(key, spec.ref, state.levels)
            except (CgroupError, OSError) as exc:
                log.warning("cannot watch %s: %s", key, exc)
                continue
            self.targets[key] = state
            self._log_report(key, report.armed, report.missing)
            self._observe_counters(state)
            self._refresh(state, "start")
        if self.metrics is not None:
            self.metrics.set_watched(len(self.targets))

    def _rearm(self, state: TargetState) -> None:
        levels = self._levels(state)
        if levels != state.levels and state.key in self.watcher:
            state.levels = levels
            self.watcher.set_levels(state.key, levels)

    def _drop(self, key: str, why: str) -> None:
        state = self.targets.pop(key, None)
        self.watcher.remove(key)
        if state is None:
            return
        log.info("stopped watching %s: %s", key, why)
        # the last counters before it went: a kill that emptied the cgroup is still a kill
        self.engine.forget(key)
        if self.tracker is not None and state.spec.ref is not None:
            self.tracker.forget(state.spec.ref.relpath)
        if self.metrics is not None:
            self.metrics.set_watched(len(self.targets))

    # ------------------------------------------------------------------ samples
    def read_sample(self, state: TargetState) -> Sample | None:
        ref = state.spec.ref
        if ref is None and state.key != MACHINE:
            return None  # cluster mode: the source samples
        sample = sampler.read_sample(
            state.key,
            ref,
            now=self._clock(),
            proc=self.proc_root,
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
        if len(self._pid_owner) > 65536:
            self._pid_owner.clear()
        if live:
            alive = (p for p in pids if procfs.process_alive(p, self.proc_root))
            return list(itertools.islice(alive, MAX_PIDS_IN_EVENT))
        return pids[:MAX_PIDS_IN_EVENT]

    def _refresh(self, state: TargetState, cause: str) -> None:
        try:
            sample = self.read_sample(state)
        except CgroupFileError as exc:
            if state.spec.ref is not None and not os.path.isdir(state.spec.ref.path):
                self._drop(state.key, "cgroup removed")
            else:
                log.warning("%s: cannot read: %s", state.key, exc)
            return
        if sample is None:
            return
        self.feed(state, sample)

    def feed(self, state: TargetState, sample: Sample) -> None:
        old_limit = state.limit
        state.limit = sample.limit_bytes
        if old_limit != state.limit and state.spec.ref is not None:
            self.watcher.set_limit(state.key, state.limit)
            self._rearm(state)
        events = self.engine.feed(
            sample,
            sample.time,
            self._wall(),
            cgroup=state.cgroup,
            identity=state.spec.identity,
            annotations=dict(state.spec.annotations),
            dry_run=self.cfg.dry_run,
            overrides=state.overrides,
        )
        if self.metrics is not None:
            pct = 0.0
            if sample.limit_bytes:
                value = (
                    sample.usage_bytes
                    if self.engine.settings.metric == "usage"
                    else sample.working_set_bytes
                )
                pct = 100.0 * value / sample.limit_bytes
            self.metrics.observe_sample(sample, state.cgroup, state.spec.identity, pct)
        for ev in events:
            self.emit(ev, state)

    def emit(self, event: Event, state: TargetState | None) -> None:
        if state is not None:
            event.extra.setdefault("pids", self.pids(state, live=True))
            if state.spec.pids_root:
                event.extra.setdefault("proc_root", state.spec.pids_root)
        if isinstance(event, PressureEvent) and event.key == "":
            event = replace(event, key=state.key if state else "")
        if self.metrics is not None:
            self.metrics.observe_event(event)
        if self.runner is not None:
            self.runner.submit(event)

    def _reread_sample(self, key: str) -> Sample | None:
        state = self.targets.get(key)
        if state is None:
            return None
        if state.spec.ref is None and state.key != MACHINE:
            # cluster mode: no cgroup here; the source asks the node's kubelet again
            reread = getattr(self.source, "reread", None)
            return reread(key, self._clock()) if callable(reread) else None
        try:
            return self.read_sample(state)
        except CgroupFileError:
            return None

    def _still_valid(self, event: Event) -> bool:
        """Re-read before a destructive action: does what raised the event still hold?"""
        if not isinstance(event, PressureEvent):
            return True
        sample = self._reread_sample(event.key or event.cgroup)
        return sample is not None and self.engine.still_holds(event, sample)

    def _action_failed(self, name: str) -> None:
        if self.metrics is not None:
            self.metrics.action_failed(name)

    # ------------------------------------------------------------------ kills
    def _observe_counters(self, state: TargetState) -> None:
        ref = state.spec.ref
        if ref is None or self.tracker is None:
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
            self.reconciler.add(
                record,
                key=state.key,
                cgroup=state.cgroup,
                identity=state.spec.identity,
                annotations=dict(state.spec.annotations),
            )

    def _kill_targets(self) -> dict[str, str]:
        return {k: s.spec.ref.relpath for k, s in self.targets.items() if s.spec.ref is not None}

    def _on_kill_fd(self, name: str) -> None:
        records = self.kills.read(name)
        if not records:
            return
        paths = self._kill_targets()
        ids = {s.cgroup_id: k for k, s in self.targets.items() if s.cgroup_id is not None}
        for r in records:
            key = attribute(r.cgroup, paths)
            if key is None and r.cgroup_id is not None:
                key = ids.get(r.cgroup_id)
            if key is None and r.pid is not None:
                key = self._pid_owner.get(r.pid)
            state = self.targets.get(key) if key else None
            self.reconciler.add(
                r,
                key=key,
                cgroup=state.cgroup if state else r.cgroup,
                identity=state.spec.identity if state else None,
                annotations=dict(state.spec.annotations) if state else None,
            )
            if state is not None:
                # the counter moved too: read it now so both records meet inside the window
                self._observe_counters(state)

    @property
    def watches_everything(self) -> bool:
        """Local mode over the whole tree, or a node: a kill outside every target is still a
        kill on this machine (a global OOM, an unlimited cgroup) and is reported. With named
        targets (--cgroup, a sidecar's own pod) kernel sources also see the neighbours' kills,
        which are not ours to report."""
        if self.cfg.mode == "local":
            return not self.cfg.get("source.cgroup.paths")
        return self.cfg.mode == "node"

    def _flush_kills(self) -> None:
        if self.reconciler is None:
            return
        for kill in self.reconciler.flush(self._clock()):
            self._emit_kill(kill)

    def _emit_kill(self, kill: OomKill) -> None:
        state = self.targets.get(kill.key) if kill.key else None
        if state is None and not self.watches_everything:
            log.debug(
                "kill of pid %s in %s: not a watched target, not reported", kill.pid, kill.cgroup
            )
            return
        self.emit(kill, state)

    # ------------------------------------------------------------------ loop
    _dirs: native.Inotify | None = None
    _dir_wds: dict[str, int]

    def _watch_source_dirs(self) -> None:
        if self._dirs is None:
            return
        if not hasattr(self, "_dir_wds"):
            self._dir_wds = {}
        mask = native.IN_CREATE | native.IN_DELETE | native.IN_ONLYDIR | native.IN_MOVED_TO
        for path in self.source.watch_dirs():
            if path in self._dir_wds:
                continue
            try:
                self._dir_wds[path] = self._dirs.add(path, mask)
            except OSError as exc:
                log.debug("cannot watch %s: %s", path, exc.strerror)

    def _on_source_dirs(self) -> None:
        if self._dirs is not None and self._dirs.events():
            self.source.notify_fs_change()

    def _on_source_fd(self) -> None:
        on_fd = getattr(self.source, "on_fd", None)
        if callable(on_fd):
            on_fd()

    def _handle(self, wake: Wakeup) -> None:
        if self.metrics is not None:
            self.metrics.wakeup(wake.cause)
        if wake.cause == "fd":
            handler = self._fd_names.get(wake.key)
            if handler is not None:
                handler()
            return
        state = self.targets.get(wake.key)
        if state is None:
            return
        if wake.cause == "gone":
            self._observe_counters(state)
            self._drop(wake.key, wake.detail or "gone")
            return
        if wake.cause in ("oom", "events"):
            self._observe_counters(state)
        self._refresh(state, wake.cause)

    def _install_signals(self) -> tuple[int, int]:
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._old_wakeup_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        self._old_handlers = {
            s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        }

        def stop(signum: int, _frame: object) -> None:
            self._stop = True
            self.exit_reason = signal.Signals(signum).name

        def hup(_signum: int, _frame: object) -> None:
            self._hup = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, hup)
        # SIGQUIT prints every thread's stack to stderr and the daemon goes on (as a JVM does):
        # what a stuck daemon is doing, from its log alone
        faulthandler.register(signal.SIGQUIT, all_threads=True)
        self._watch_fd(r, "signals", lambda: self._drain_pipe(r))
        return r, w

    @staticmethod
    def _drain_pipe(fd: int) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(fd, 512):
                pass

    def reload(self) -> None:
        if self._reload is None:
            return
        try:
            new = self._reload()
            settings = EngineSettings.from_config(new.data)
            assert self.ctx is not None
            ctx = replace(self.ctx, dry_run=new.dry_run, config=new.data)
            actions = build_actions(new, ctx)
        except PressuredError as exc:
            problems = exc.problems if isinstance(exc, ConfigError) else [str(exc)]
            log.error("reload refused, keeping the running config: %s", "; ".join(problems))
            return
        # thresholds, rules, actions and dry_run apply now; what the running loop was built
        # from (sources, kill sources, the metrics server, storage) needs a restart
        fixed = [
            k
            for k in ("source", "kills", "metrics", "storage", "kubernetes", "state_dir")
            if new.data.get(k) != self.cfg.data.get(k)
        ]
        if fixed:
            log.warning("reload: changes to %s take effect after a restart", ", ".join(fixed))
        self.cfg = new
        self.engine.update_settings(settings)
        old, self.runner = (
            self.runner,
            ActionRunner(actions, reread=self._still_valid, on_failure=self._action_failed),
        )
        self.ctx = ctx
        if old is not None:
            old.close()
        for state in self.targets.values():
            self._rearm(state)
        log.info("configuration reloaded%s", f" from {new.file}" if new.file else "")

    def _next_timeout(self) -> float:
        deadlines = [self._clock() + 5.0]  # metrics staleness and the reconciler's windows
        for d in (
            self.source.next_poll(),
            self.reconciler.next_deadline() if self.reconciler else None,
        ):
            if d is not None:
                deadlines.append(d)
        if self.kills is not None and self.kills.poll_interval():
            deadlines.append(self._clock() + self.kills.poll_interval())
        return max(0.0, min(deadlines) - self._clock())

    def run(self, *, run_for: float | None = None) -> int:
        """Run until SIGTERM/SIGINT (or ``run_for`` seconds). Returns the exit code."""
        r, w = self._install_signals()
        try:
            self.start()
            end = None if run_for is None else self._clock() + run_for
            while not self._stop:
                timeout = self._next_timeout()
                if end is not None:
                    timeout = min(timeout, max(0.0, end - self._clock()))
                for wake in self.watcher.wait(timeout):
                    try:
                        self._handle(wake)
                    except PressuredError as exc:
                        log.warning("%s (%s): %s", wake.key, wake.cause, exc)
                now = self._clock()
                if self._hup:
                    self._hup = False
                    self.reload()
                np = self.source.next_poll()
                if np is not None and np <= now:
                    self._poll_source(now)
                if self.source.changed():
                    self._sync_targets()
                    self._watch_source_dirs()
                if self.kills is not None:
                    for name in self.kills.polled():
                        self._on_kill_fd(name)
                self._flush_kills()
                if self.metrics is not None:
                    self.metrics.forget_stale(now)
                if end is not None and now >= end:
                    break
            log.info("stopping%s", f" on {self.exit_reason}" if self.exit_reason else "")
            return 0
        finally:
            self.close()
            # an in-process caller (demo, benches, tests) gets its own handlers back
            signal.set_wakeup_fd(self._old_wakeup_fd)
            faulthandler.unregister(signal.SIGQUIT)
            for signum, handler in self._old_handlers.items():
                signal.signal(signum, handler)
            os.close(r)
            os.close(w)

    def _poll_source(self, now: float) -> None:
        recheck = getattr(self.source, "recheck_fresh", None)
        if callable(recheck):
            recheck()
            return
        polled = self.source.poll(now)
        for spec, sample in polled.samples:
            state = self.targets.get(spec.key)
            if state is None:
                state = self.targets[spec.key] = TargetState(spec, overrides=self._overrides(spec))
            state.spec = spec
            self.feed(state, sample)
        for record in polled.kills:
            key = record.extra.get("key") if isinstance(record.extra, Mapping) else None
            state = self.targets.get(key) if key else None
            self.reconciler.add(
                record,
                key=key,
                cgroup=state.cgroup if state else record.cgroup,
                identity=state.spec.identity if state else record.extra.get("identity"),
                annotations=dict(state.spec.annotations) if state else None,
            )

    def close(self) -> None:
        if self.reconciler is not None:
            for kill in self.reconciler.drain():
                self._emit_kill(kill)
        if self.runner is not None:
            self.runner.close()
            self.runner = None
        with contextlib.suppress(Exception):
            self.source.close()
        if self._dirs is not None:
            self._dirs.close()
        if self.kills is not None:
            self.kills.close()
        if self._metrics_server is not None:
            self._metrics_server.close()
        if self._storage_obj is not None:
            self._storage_obj.close()
        self.watcher.close()


__all__ = ["Daemon", "build_actions", "load_action_classes", "native"]
