"""The target-source contract the daemon drives.

A source says WHO is watched; the daemon's Watcher says WHEN to look. Cgroup-backed sources
(local, sidecar, node) return TargetSpecs with a CgroupRef: the daemon arms kernel
notifications for each and diffs the list on every ``targets()`` call, so targets come and go
without a restart. The cluster source has no cgroups: it produces Samples itself (kubelet
/stats/summary) on its own interval, and kill records from the API (Events, lastState).

Call order: ``start()`` once; ``targets()`` at start and whenever ``changed()`` is true (the
source flips it from its own thread, e.g. a pod watch, or the daemon's inotify on cgroup
directories calls ``notify_fs_change()``); ``poll(now)`` when ``next_poll()`` says so;
``close()`` at shutdown. Nothing here may raise for bad data from outside: log a warning that
names the input, skip it, and go on.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pressured.kernel.cgroupfs import CgroupRef
from pressured.model import Identity, KillRecord, Overrides, Sample

if TYPE_CHECKING:
    from pressured.k8s.client import KubeClient


@dataclass(frozen=True, slots=True)
class TargetSpec:
    key: str
    """Stable identity of the target: the cgroup path, or "<pod uid>/<container>" (cluster)."""
    ref: CgroupRef | None
    identity: Identity = field(default_factory=Identity)
    annotations: Mapping[str, str] = field(default_factory=dict)
    overrides: Overrides = field(default_factory=Overrides)


@dataclass(frozen=True)
class Polled:
    """What a polling source (cluster mode) found in one round."""

    samples: list[tuple[TargetSpec, Sample]] = field(default_factory=list)
    kills: list[KillRecord] = field(default_factory=list)


class Source:
    """Base class; subclasses override what they need.

    Optional capabilities, declared here with their neutral defaults (the daemon asks for
    them, never probes): ``kube`` (the API client actions may use), ``fd`` + ``on_fd()`` (a
    descriptor the daemon's epoll watches for the source, e.g. local mode's inotify),
    ``reread()`` (a fresh sample of a target without a cgroup here, for the re-check before
    a destructive action in cluster mode).
    """

    mode: str = "local"
    kube: KubeClient | None = None

    def __init__(self) -> None:
        self._changed = threading.Event()
        self._changed.set()
        self._wake: Callable[[], None] | None = None

    def start(self) -> None:
        """Begin background work (pod watches). Raise ConfigError/KubernetesError to refuse."""

    def targets(self) -> list[TargetSpec]:
        self._changed.clear()
        return []

    def changed(self) -> bool:
        return self._changed.is_set()

    def mark_changed(self) -> None:
        self._changed.set()
        wake = self._wake
        if wake is not None:
            wake()

    def set_waker(self, wake: Callable[[], None] | None) -> None:
        """``wake()`` is called, from any thread, whenever the source changes: a daemon blocked
        in its wait then takes the change at once (a pod watch runs on a thread of its own)."""
        self._wake = wake

    def notify_fs_change(self) -> None:
        """The daemon's inotify saw a directory of ``watch_dirs()`` gain or lose a child."""
        self.mark_changed()

    def watch_dirs(self) -> list[str]:
        """Directories whose new or removed children may be new or removed targets."""
        return []

    @property
    def fd(self) -> int | None:
        """A descriptor to watch for readability on the source's behalf, or None."""
        return None

    def on_fd(self) -> None:
        """``fd`` is readable."""

    def reread(self, key: str, now: float) -> Sample | None:
        """A fresh sample of a target that has no cgroup on this machine (cluster mode)."""
        return None

    def next_poll(self) -> float | None:
        """Monotonic time of the next ``poll`` (polling sources only), else None."""
        return None

    def poll(self, now: float) -> Polled:
        return Polled()

    def status(self) -> dict[str, Any]:
        """For `pressured diagnose` and logs."""
        return {"mode": self.mode}

    def close(self) -> None:
        """Stop background work."""
