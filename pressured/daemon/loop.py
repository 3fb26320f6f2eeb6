"""The daemon's one loop: wait in the Watcher's epoll, dispatch each wake-up, and keep the
rest (signals, reload, the source's polls, the kill pipeline's windows) on the same thread.

Everything waits in one epoll set: kernel notifications, the adaptive-read deadlines, the
signal pipe (SIGTERM/SIGINT stop, SIGHUP reloads, SIGQUIT dumps stacks), kmsg and perf rings,
the source's inotify. A wake-up becomes a sample (targets.py), the engine turns samples into
events, and the action runner takes them into its lanes, on threads of their own
(actions/runner.py); kill records go through the kill pipeline (kill_pipeline.py). Nothing on
this thread waits for a slow action: not an event, not a reload, and a stop only for a bounded
time. The signal action (it never blocks) runs here when its lane is idle, so a crossing
reaches its signal without a thread hand-off; the log line is written on a thread of its own
(a stdout nobody reads must not stop the watching).
"""

from __future__ import annotations

import contextlib
import faulthandler
import functools
import gc
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import TYPE_CHECKING

from pressured import native
from pressured.actions.base import Action, ActionContext
from pressured.actions.registry import build_actions
from pressured.actions.runner import CLOSE_BUDGET_S, RELOAD_BUDGET_S, ActionRunner
from pressured.config import Config
from pressured.engine import Engine, EngineSettings
from pressured.errors import CgroupFileError, ConfigError, PressuredError
from pressured.kernel import cgroupfs
from pressured.kernel.pidfd import ProcessHandles, open_processes
from pressured.kernel.watch import PsiSpec, Wakeup, Watcher, WatchOptions
from pressured.kills.journal import read_kills
from pressured.model import MACHINE, Event, OomKill, PressureEvent, Sample
from pressured.sources.base import Source, TargetSpec
from pressured.sources.factory import make_source

from .kill_pipeline import KillPipeline
from .selfwatch import SelfWatch
from .state import STATE_PATH, LiveState
from .targets import Targets, TargetState

if TYPE_CHECKING:
    from pressured.metrics import Metrics, MetricsServer
    from pressured.storage.base import Storage

log = logging.getLogger("pressured.daemon")

# What the running loop was built from: changing these in a reload needs a restart.
RESTART_SECTIONS = ("source", "kills", "metrics", "storage", "kubernetes", "state_dir")


def protect_self(adj: int = -900) -> str:
    """Lower our own oom_score_adj so the kernel kills what we watch before us."""
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(adj))
    except OSError as exc:
        return f"cannot lower own oom_score_adj to {adj}: {exc.strerror} (needs CAP_SYS_RESOURCE)"
    return f"own oom_score_adj set to {adj}"


def settle_heap() -> None:
    """What start-up (or a reload) built lives as long as the daemon: it is moved out of the
    cyclic collector's reach (gc.freeze), so a full collection scans only what came after
    (measured with 1000 targets: 11 ms per full collection, a pause a crossing could wait
    behind on the loop; 0 ms frozen). What the last freeze held is collected first: a reload's
    old actions are freed, not kept for good."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def watch_options(cfg: Config) -> WatchOptions:
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
        self._reload = reload
        self._clock = clock
        self._wall = wall
        self.proc_root = str(cfg.get("source.proc_root"))
        self.engine = Engine(EngineSettings.from_config(cfg.data))
        self.source = source or make_source(cfg)
        self.watcher = Watcher(watch_options(cfg), clock=clock, proc=self.proc_root)
        self.targets = Targets(self.engine, self.watcher, proc_root=self.proc_root, clock=clock)
        self.live = LiveState(cfg.get("kubernetes.node_name"), wall=wall, extra=self._live_extra)
        self.kills = KillPipeline(
            cfg,
            self.targets,
            self.engine,
            self._emit_kill,
            clock=clock,
            wall=wall,
            proc_root=self.proc_root,
            started_usec=started_usec,
            last_sample=self.live.last_sample,
        )
        self.metrics: Metrics | None = None
        self._metrics_server: MetricsServer | None = None
        self._storage_obj: Storage | None = None
        self.runner: ActionRunner | None = None
        self._retiring: list[tuple[ActionRunner, threading.Thread]] = []
        """Runners replaced by a reload, closing on threads of their own."""
        self.ctx: ActionContext | None = None
        self._fd_handlers: dict[str, Callable[[], None]] = {}
        self._dirs: native.Inotify | None = None
        self._dir_wds: dict[str, int] = {}
        self._stop = False
        self._hup = False
        self.exit_reason = ""
        self._own_adopted = False
        self.ready = False
        """True once every target found at start is armed and the kill sources are open."""
        from pressured.metrics_config import MetricsSettings  # noqa: PLC0415

        levels = MetricsSettings.from_config(cfg.data)
        self.selfwatch = SelfWatch(
            degraded_percent=levels.self_degraded_percent,
            shed_percent=levels.self_shed_percent,
            clock=clock,
            proc=self.proc_root,
        )
        self._seed_kills()

    def _seed_kills(self) -> None:
        """/v1/state lists again the kills of the previous runs (kill journal): a restart does
        not hide a kill `pressured diagnose --cluster` would have shown."""
        state_dir = self.cfg.get("state_dir")
        journal = self.kills.journal
        if not state_dir or journal is None:
            return
        try:
            kept = read_kills(str(state_dir), every_boot=True)
        except OSError as exc:
            log.warning("%s: cannot list the earlier kills: %s", journal.path, exc.strerror or exc)
            return
        seeded = self.live.seed_kills(kept, where=journal.path)
        if seeded:
            log.info("%s: %d earlier kill(s) listed at %s", journal.path, seeded, STATE_PATH)

    @property
    def kill_status(self) -> dict[str, tuple[bool, str]]:
        return self.kills.status

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
            kube=self.source.kube,
            extra={"events_out": self.cfg.get("events_out")},
        )
        self.runner = self._runner(build_actions(self.cfg, self.ctx))
        if self.cfg.get("metrics.enabled"):
            self._start_metrics()
        self._watch_self(self._clock())
        self.source.start()
        if self.source.fd is not None:
            self._watch_fd(self.source.fd, "source", self.source.on_fd)
        elif self.source.watch_dirs():
            # node and sidecar sources: new pod/container directories mean new targets
            self._dirs = native.Inotify()
            self._watch_fd(self._dirs.fd, "source-dirs", self._on_source_dirs)
            self._watch_source_dirs()
        self._start_kills()
        if self.cfg.get("source.machine") and self.cfg.mode == "local":
            machine = self.targets.add_machine()
            if machine is not None:
                self._refresh(machine)
        with self.kills.batch():  # the state file is written once for every target found
            self._sync_targets()
        settle_heap()
        self._announce_ready()
        self.live.turn()

    def _runner(self, actions: list[Action], after: ActionRunner | None = None) -> ActionRunner:
        return ActionRunner(
            actions,
            still_holds=self._still_valid,
            on_failure=self._action_failed,
            on_drop=self._action_dropped,
            after=after,
            shed=lambda: self.selfwatch.shedding,
            inline_immediate=True,
        )

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

    def _storage(self) -> Storage:
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
            routes={STATE_PATH: self.live.route},
        )

    def health(self) -> tuple[bool, str]:
        """What /healthz answers: not ready (503) until every start-up target is armed; then
        200 "ok", or 200 "degraded: why" (daemon/selfwatch.py)."""
        if not self.ready:
            return False, "starting: arming targets"
        why = self.selfwatch.degraded()
        return True, ("degraded: " + "; ".join(why)) if why else "ok"

    def _live_extra(self) -> dict[str, object]:
        return {"ready": self.ready, "mode": self.cfg.mode, "self": self.selfwatch.snapshot()}

    def _watch_self(self, now: float) -> None:
        reading = self.selfwatch.observe(now)
        if reading is None or self.metrics is None:
            return
        self.metrics.observe_self(
            rss=reading.rss_bytes,
            working_set=reading.working_set_bytes,
            usage=reading.usage_bytes,
            limit=reading.limit_bytes,
            shedding=self.selfwatch.shedding,
        )
        self.metrics.set_degraded(bool(self.selfwatch.degraded(now)))
        for name in self.kills.sources.open_names():
            self.metrics.set_kill_source_problems(name, self.kills.sources.problems(name))

    def _start_kills(self) -> None:
        status = self.kills.start()
        for fd, name in self.kills.fds():
            self._watch_fd(fd, f"kills:{name}", functools.partial(self.kills.read_source, name))
        if self.metrics is not None:
            for name, (active, _why) in status.items():
                self.metrics.set_kill_source(name, active)
            for name in self.kills.sources.open_names():
                self.metrics.set_kill_source_problems(name, self.kills.sources.problems(name))

    def _watch_fd(self, fd: int, name: str, handler: Callable[[], None]) -> None:
        self.watcher.watch_fd(fd, name)
        self._fd_handlers[name] = handler

    # ------------------------------------------------------------------ targets
    def _sync_targets(self) -> None:
        wanted = {spec.key: spec for spec in self.source.targets()}
        for key in [k for k in self.targets.all_keys() if k != MACHINE and k not in wanted]:
            self._drop(key, "no longer a target")
        new = []
        for key, spec in wanted.items():
            current = self.targets.get(key)
            if current is None:
                new.append(spec)
            elif current.spec != spec:
                moved = current.overrides != spec.overrides
                self.targets.update(current, spec)
                if moved and spec.ref is not None:
                    # A threshold moved past the usage (a pod's pressured.io/* annotation
                    # changed): no crossing will be signalled, so read a sample now.
                    self._refresh(current)
        # each new target is read as soon as it is armed: one already past a level is
        # reported while the others are still being armed
        self.targets.add_many(new, on_added=self._first_reading)
        self._watched_changed()
        self._adopt_own_cgroup(wanted.values())

    def _adopt_own_cgroup(self, specs: Iterable[TargetSpec]) -> None:
        """In node mode /proc/self/cgroup may name "/" (a cgroup namespace over the host's
        tree): the target of our own pod whose cgroup holds our pid is our cgroup."""
        uid = self.cfg.get("kubernetes.pod_uid")
        if not uid or self._own_adopted:
            return
        for spec in specs:
            if spec.ref is None or spec.identity.pod_uid != uid:
                continue
            try:
                ours = os.getpid() in cgroupfs.read_pids(spec.ref)
            except CgroupFileError:
                continue
            if ours:
                self._own_adopted = True
                self.selfwatch.adopt(spec.ref)
                log.info("own cgroup: %s (this pod's container)", spec.ref.path)
                self._watch_self(self._clock())
                return

    def _first_reading(self, state: TargetState) -> None:
        if state.spec.ref is None:
            return
        self.kills.observe_counters(state)
        self._refresh(state)

    def _drop(self, key: str, why: str) -> None:
        state = self.targets.drop(key)
        if state is None:
            return
        log.info("stopped watching %s: %s", key, why)
        self.kills.forget(state)
        self.live.forget(key)
        self._watched_changed()

    def _watched_changed(self) -> None:
        if self.metrics is not None:
            self.metrics.set_watched(len(self.targets), self.targets.vanished_while_arming)

    def _watch_source_dirs(self) -> None:
        if self._dirs is None:
            return
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

    # ------------------------------------------------------------------ samples -> events
    def _refresh(self, state: TargetState) -> None:
        try:
            sample = self.targets.read_sample(state)
        except CgroupFileError as exc:
            if state.spec.ref is not None and not os.path.isdir(state.spec.ref.path):
                self._drop(state.key, "cgroup removed")
            else:
                log.warning("%s: cannot read: %s", state.key, exc)
            return
        if sample is not None:
            self.feed(state, sample)

    def feed(self, state: TargetState, sample: Sample) -> None:
        self.targets.set_limit(state, sample.limit_bytes)
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
        value = sample.metric_bytes(self.engine.settings.metric)
        self.live.sample(
            state.key,
            state.cgroup,
            state.spec.identity,
            sample,
            value=value,
            severity=self.engine.severity(state.key),
            decided_by=sample.decided_by(self.engine.settings.metric),
        )
        if self.metrics is not None:
            pct = 0.0
            metric = self.engine.settings.metric
            if sample.limit_bytes:
                pct = 100.0 * value / sample.limit_bytes
            self.metrics.observe_sample(
                sample,
                state.cgroup,
                state.spec.identity,
                pct,
                decided_by=sample.decided_by(metric),
            )
            throttled = self.engine.take_throttled_seconds(sample.key)
            self.metrics.add_throttled_seconds(state.cgroup, state.spec.identity, throttled)
        for ev in events:
            self.emit(ev, state)

    def emit(self, event: Event, state: TargetState | None) -> None:
        if state is not None:
            event.extra.setdefault("pids", self.targets.pids(state, live=True))
            if self.runner is not None and self.runner.holds_processes:
                event = replace(event, processes=self._hold(event.extra["pids"], state))
        if isinstance(event, PressureEvent) and event.key == "":
            event = replace(event, key=state.key if state else "")
        if self.metrics is not None:
            self.metrics.observe_event(event)
        self.live.event(event)
        if self.runner is not None:
            self.runner.submit(event)

    def _emit_kill(self, kill: OomKill, state: TargetState | None) -> None:
        # looked up per kill: ``emit`` is the one hook for every event (benches wrap it)
        self.emit(kill, state)

    def _hold(self, pids: list[int], state: TargetState) -> ProcessHandles:
        """The target's processes held open from now (kernel.pidfd), for the signal action:
        opened, then kept only where the target's cgroup.procs still lists them. Opened under
        this daemon's /proc: cgroup.procs numbers pids in the reader's PID namespace."""
        ref = state.spec.ref
        if ref is None:
            return ProcessHandles()
        try:
            return open_processes(pids, self.proc_root, members=lambda: cgroupfs.read_pids(ref))
        except CgroupFileError:
            return ProcessHandles()  # the cgroup is gone, and its processes with it

    def _reread_sample(self, key: str) -> Sample | None:
        state = self.targets.get(key)
        if state is None:
            return None
        if state.spec.ref is None and state.key != MACHINE:
            # cluster mode: no cgroup here; the source asks the node's kubelet again
            return self.source.reread(key, self._clock())
        try:
            return self.targets.read_sample(state)
        except CgroupFileError:
            return None

    def _still_valid(self, event: Event) -> bool:
        """Re-read before a destructive action: does what raised the event still hold?"""
        if not isinstance(event, PressureEvent):
            return True
        sample = self._reread_sample(event.key or event.cgroup)
        return sample is not None and self.engine.still_holds(event, sample)

    def _action_failed(self, name: str) -> None:
        self.selfwatch.dropped(name, "failed")
        if self.metrics is not None:
            self.metrics.action_failed(name)

    def _action_dropped(self, name: str, reason: str) -> None:
        if reason not in ("shutdown", "reload"):
            # a stop or a reload is asked for; what it leaves undone is logged, not a fault
            self.selfwatch.dropped(name, reason)
        if self.metrics is not None:
            self.metrics.action_dropped(name, reason)

    # ------------------------------------------------------------------ the loop
    def _handle(self, wake: Wakeup) -> None:
        if self.metrics is not None:
            self.metrics.wakeup(wake.cause)
        if wake.cause == "fd":
            handler = self._fd_handlers.get(wake.key)
            if handler is not None:
                handler()
            return
        state = self.targets.get(wake.key)
        if state is None:
            return
        if wake.cause == "gone":
            # the last counters before it went: a kill that emptied the cgroup is still a kill
            self.kills.observe_counters(state)
            self._drop(wake.key, wake.detail or "gone")
            return
        if wake.cause in ("oom", "events"):
            self.kills.observe_counters(state)
        self._refresh(state)

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
        fixed = [k for k in RESTART_SECTIONS if new.data.get(k) != self.cfg.data.get(k)]
        if fixed:
            log.warning("reload: changes to %s take effect after a restart", ", ".join(fixed))
        self.cfg = new
        self.engine.update_settings(settings)
        old = self.runner
        self.runner = self._runner(actions, after=old)
        self.ctx = ctx
        if old is not None:
            self._retire(old)
        self.targets.rearm_many(self.targets.states())
        settle_heap()
        log.info("configuration reloaded%s", f" from {new.file}" if new.file else "")

    def _retire(self, old: ActionRunner) -> None:
        """Close the replaced actions on a thread of their own: what they still run (a webhook
        waiting on its server) must not hold the loop. The new runner's log lines follow the
        old one's (ActionRunner's ``after``)."""
        self._retiring = [(r, t) for r, t in self._retiring if t.is_alive()]
        t = threading.Thread(
            target=old.close,
            kwargs={"budget": RELOAD_BUDGET_S, "reason": "reload"},
            name="pressured-retire-actions",
            daemon=True,
        )
        t.start()
        self._retiring.append((old, t))

    def _next_timeout(self) -> float:
        now = self._clock()
        deadlines = [now + 5.0]  # metrics staleness and the reconciler's windows
        for d in (self.source.next_poll(), self.kills.next_deadline()):
            if d is not None:
                deadlines.append(d)
        interval = self.kills.poll_interval()
        if interval:
            deadlines.append(now + interval)
        return max(0.0, min(deadlines) - now)

    def run(self, *, run_for: float | None = None) -> int:
        """Run until SIGTERM/SIGINT (or ``run_for`` seconds). Returns the exit code."""
        r, w = self._install_signals()

        def wake_loop() -> None:
            # A full pipe already holds a wake-up.
            with contextlib.suppress(BlockingIOError):
                os.write(w, b"\0")

        # A pod watch changes the source on its own thread: the loop, perhaps blocked on
        # quiet cgroups, must take the change now (a pod's annotations move its thresholds).
        self.source.set_waker(wake_loop)
        try:
            self.start()
            end = None if run_for is None else self._clock() + run_for
            while not self._stop:
                timeout = self._next_timeout()
                if end is not None:
                    timeout = min(timeout, max(0.0, end - self._clock()))
                planned = self._planned_wake(timeout)
                wakes = self.watcher.wait(timeout)
                self._wake_lag(planned)
                for wake in wakes:
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
                self.kills.poll_sources()
                self.kills.flush(now)
                if self.metrics is not None:
                    self.metrics.forget_stale(now)
                self._watch_self(now)
                self.live.turn()
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
            self.source.set_waker(None)
            os.close(r)
            os.close(w)

    def _planned_wake(self, timeout: float) -> float:
        """When the loop means to wake at the latest: its timeout or the Watcher's next
        adaptive read, whichever is first."""
        now = self._clock()
        deadline = self.watcher.next_deadline()
        planned = now + timeout
        return planned if deadline is None else min(planned, max(now, deadline))

    def _wake_lag(self, planned: float) -> None:
        """How late past ``planned`` the loop runs again (a wake-up before it is not late)."""
        lag = self._clock() - planned
        if lag < 0:
            return
        self.selfwatch.wake_lag(lag)
        if self.metrics is not None:
            self.metrics.observe_wakeup_lag(lag)

    def _poll_source(self, now: float) -> None:
        polled = self.source.poll(now)
        for spec, sample in polled.samples:
            state = self.targets.get(spec.key)
            if state is None:
                state = self.targets.add(spec)
                if state is None:
                    continue
            state.spec = spec
            self.feed(state, sample)
        self.kills.add_polled(polled.kills)

    def close(self) -> None:
        self.kills.close()  # every kill still in a merge window is reported first
        # the immediate lane writes every event; the slow lanes, a reload's old ones too, get
        # CLOSE_BUDGET_S in all, then what they did not deliver is logged by name and counted
        end = time.monotonic() + CLOSE_BUDGET_S
        if self.runner is not None:
            self.runner.close(CLOSE_BUDGET_S, reason="shutdown")
            self.runner = None
        for old, closing in self._retiring:
            closing.join(max(0.0, end - time.monotonic()))
            old.abandon("shutdown", budget=CLOSE_BUDGET_S)
        self._retiring = []
        with contextlib.suppress(Exception):
            self.source.close()
        if self._dirs is not None:
            self._dirs.close()
        if self._metrics_server is not None:
            self._metrics_server.close()
        if self._storage_obj is not None:
            self._storage_obj.close()
        self.watcher.close()


__all__ = ["Daemon", "protect_self", "watch_options"]
