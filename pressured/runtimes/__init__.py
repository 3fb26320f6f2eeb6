"""Heap capture for runtimes that do not serve pprof over HTTP: the HotSpot JVM and Node.js.

The heapdump action (pressured.actions.heapdump) chooses the runtime (its ``runtime`` option,
``auto`` asks ``detect``) and hands the capture here; Go stays the action's own HTTP path.

- ``detect``: which runtime a process runs, from /proc; ``hold``: the process held
  (kernel.pidfd) from before that reading, so SIGQUIT and SIGUSR1 go through a pidfd to that
  process, or nowhere once it is gone, never to a pid number another process took since.
- ``jvm``: the HotSpot attach protocol (client in ``hotspot``, run as the JVM's user in a
  helper), GC.class_histogram always, GC.heap_dump when asked and safe.
- ``node``: the inspector (SIGUSR1), a sampling heap profile over the DevTools protocol,
  converted to profile.proto; in another network namespace through a helper.
- ``helper``: running such a helper within a deadline and a byte cap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

RUNTIMES = ("auto", "go", "jvm", "node")
FULL_DUMP = ("never", "auto", "always")
FullDump = Literal["never", "auto", "always"]


@dataclass(frozen=True)
class CaptureOptions:
    """What the heapdump action's options say about a runtime capture."""

    timeout_s: float
    """Per step: attach and one diagnostic command, or the inspector's whole conversation."""
    max_bytes: int
    """Each artifact (histogram, .hprof, profile) is aborted past this; nothing is stored."""
    full_dump: FullDump = "auto"
    sample_seconds: float = 2.0
    inspector_port: int = 9229
    top_n: int = 3


@dataclass(frozen=True)
class Target:
    """The process to capture and the memory figures of its cgroup (for full_dump: auto)."""

    pid: int
    proc_root: str = "/proc"
    limit_bytes: int | None = None
    usage_bytes: int | None = None


@dataclass
class RuntimeCapture:
    """What a capture stored and what it adds to the event."""

    runtime: str
    key: str
    size: int
    info: dict[str, Any] = field(default_factory=dict)
    """Merged into ``event.extra["heapdump"]`` (keys, sizes, where from)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Set on ``event.extra`` (heap_top, full_dump_skipped, heap_top_error)."""
    profile: bytes | None = None
    """A gzipped profile.proto to analyse as a Go heap profile is (Node.js)."""
    notes: list[str] = field(default_factory=list)
    """Warnings for the action's log (each also in ``extra``)."""
