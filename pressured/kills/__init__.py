"""Kill confirmation: every real OOM kill reported exactly once.

Sources (each optional; each says whether it is active and, if not, why):

- ``counters``   memory.events.local / memory.events ``oom_kill`` (v2) and memory.oom_control
                 ``oom_kill`` (v1), read when the Watcher wakes for them. Counters carry no
                 pid: a delta of n stands for n kills. :class:`CounterTracker` turns readings
                 into records and, with a state directory, reports the kills that happened
                 while the daemon was down (source ``counters:restart``).
- ``kmsg``       /dev/kmsg records (:mod:`.readers.kmsg`).
- ``tracepoint`` oom:mark_victim through perf_event_open (:mod:`.readers.tracepoint`).
- ``bcc``        a kprobe on oom_kill_process, or a BPF tracepoint program when the kprobe
                 cannot attach (:mod:`.readers.bcc`); replaces ``tracepoint``.

Every source yields :class:`~pressured.model.KillRecord`. The daemon attributes each record to
a watched target (``attribute`` by kernel cgroup path, ``cgroup_id`` by directory inode, else
None) and hands it to :class:`Reconciler`, which merges the records of one kill (same pid,
compatible target, within ``window_s``) into one :class:`~pressured.model.OomKill` naming every
source that saw it. Counter deltas are matched against pid-bearing kills of the same target;
what they cannot match becomes pid-less kills, one per kill.

Modules: ``readers/`` (the kernel sources: kmsg, tracepoint, bcc), ``base`` (the
:class:`~pressured.kills.base.KillSource` protocol every open reader follows: ``name``,
``status``, ``fds()``, ``read()``, ``poll_interval``, ``close()``), ``sources``
(:class:`KillSources`: opens the enabled readers), ``config`` (:class:`KillsConfig`),
``counters`` (:class:`CounterTracker`, :class:`KillState`), ``journal`` (:class:`KillJournal`:
the confirmed kills in the state directory, for `pressured diagnose`), ``reconciler``
(:class:`Reconciler`, :func:`attribute`). Wiring, in the daemon loop::

    sources = KillSources(KillsConfig.from_mapping(cfg["kills"]), clock=clock)
    sources.start()                        # status(): {name: (active, why)}, logged
    rec = Reconciler(cfg.window_seconds, clock, first_warn=engine_first_warn,
                     expected=sources.expected)
    tracker = CounterTracker(KillState(state_dir) if state_dir else None, clock=clock)
    for fd, name in sources.fds(): epoll.add(fd, EPOLLIN, token_for(name))
    on EPOLLIN for name  -> for r in sources.read(name): rec.add(r, key=..., cgroup=...)
    every loop turn      -> the same for each name in sources.polled() (no fd to wait on)
    at start (all targets in one tracker.batch()) and on a counter wake-up of a target ->
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

from pressured.kills.base import KillSource
from pressured.kills.config import KillsConfig
from pressured.kills.counters import CounterTracker, KillState
from pressured.kills.journal import KillJournal
from pressured.kills.reconciler import Reconciler, attribute
from pressured.kills.sources import KillSources

__all__ = [
    "CounterTracker",
    "KillJournal",
    "KillSource",
    "KillSources",
    "KillState",
    "KillsConfig",
    "Reconciler",
    "attribute",
]
