"""Local mode: every memory cgroup under the root that has a limit, or the ones named.

New cgroups are noticed through inotify (IN_CREATE on every directory of the tree) and removed
ones through the Watcher's own IN_DELETE_SELF. A limit written after mkdir sends no
notification (memory.max / memory.limit_in_bytes are not pollable), so a directory created in the
last ``settle_seconds`` without a limit is re-checked on a short timer until it has one or the
time is up: the only reads here, and only while something is new.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence

from pressured import native
from pressured.errors import CgroupError, CgroupFileError
from pressured.kernel import cgroupfs
from pressured.sources.base import Polled, Source, TargetSpec

log = logging.getLogger("pressured.sources.local")


class LocalSource(Source):
    mode = "local"

    def __init__(
        self,
        root: str = "/sys/fs/cgroup",
        paths: Sequence[str] = (),
        *,
        settle_seconds: float = 30.0,
        recheck_seconds: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.layout = cgroupfs.detect_layout(root)
        self.paths = [os.path.abspath(p) for p in paths]
        self._clock = clock
        self._settle = settle_seconds
        self._recheck = recheck_seconds
        self._fresh: dict[str, float] = {}  # dir -> when it appeared (unlimited so far)
        self._inotify: native.Inotify | None = None
        self._wds: dict[int, str] = {}
        self._next_recheck: float | None = None

    @property
    def base(self) -> str | None:
        return self.layout.memory_root

    def start(self) -> None:
        for p in self.paths:
            # named cgroups must exist at start: a typo is an error, not an empty watch
            cgroupfs.resolve(p, self.layout)
        if not self.paths and self.base is None:
            raise CgroupError(
                f"{self.layout.root}: no memory controller found (neither cgroup v2 with "
                "'memory' in cgroup.controllers nor a v1 memory hierarchy)"
            )
        if not self.paths and self.base is not None:
            self._inotify = native.Inotify()
            for dirpath, _dirs, _files in os.walk(self.base):
                self._add_dir_watch(dirpath)

    @property
    def fd(self) -> int | None:
        return self._inotify.fd if self._inotify else None

    def _add_dir_watch(self, path: str) -> None:
        assert self._inotify is not None
        try:
            wd = self._inotify.add(
                path, native.IN_CREATE | native.IN_DELETE | native.IN_ONLYDIR | native.IN_MOVED_TO
            )
        except OSError as exc:
            log.debug("cannot watch %s: %s", path, exc.strerror)
            return
        self._wds[wd] = path

    def on_fd(self) -> None:
        """inotify said the tree changed: watch new directories, remember them as fresh."""
        if self._inotify is None:
            return
        now = self._clock()
        for ev in self._inotify.events():
            if ev.mask & native.IN_Q_OVERFLOW:
                self.mark_changed()
                continue
            parent = self._wds.get(ev.wd)
            if ev.mask & native.IN_IGNORED:
                self._wds.pop(ev.wd, None)
                continue
            if parent is None or not ev.mask & native.IN_ISDIR:
                continue
            path = os.path.join(parent, ev.name)
            if ev.mask & (native.IN_CREATE | native.IN_MOVED_TO):
                self._add_dir_watch(path)
                self._fresh[path] = now
                self._next_recheck = now
                self.mark_changed()
            elif ev.mask & native.IN_DELETE:
                self._fresh.pop(path, None)

    def next_poll(self) -> float | None:
        return self._next_recheck if self._fresh else None

    def poll(self, now: float) -> Polled:
        """Due when a new directory had no limit yet: look again (limits are often written
        just after mkdir); a new limit makes ``changed()`` true."""
        self.recheck_fresh()
        return Polled()

    def recheck_fresh(self) -> None:
        """Look again at new directories that had no limit yet."""
        now = self._clock()
        for path, since in list(self._fresh.items()):
            if now - since > self._settle or not os.path.isdir(path):
                self._fresh.pop(path, None)
                continue
            try:
                ref = cgroupfs.resolve(path, self.layout)
                if cgroupfs.read_limit(ref) is not None:
                    self._fresh.pop(path, None)
                    self.mark_changed()
            except (CgroupError, CgroupFileError):
                continue
        self._next_recheck = now + self._recheck if self._fresh else None

    def targets(self) -> list[TargetSpec]:
        self._changed.clear()
        out: list[TargetSpec] = []
        if self.paths:
            for p in self.paths:
                try:
                    ref = cgroupfs.resolve(p, self.layout)
                except CgroupError as exc:
                    log.warning("%s", exc)
                    continue
                out.append(TargetSpec(ref.path, ref))
            return out
        assert self.base is not None
        for ref in cgroupfs.list_limited(self.base, self.layout):
            out.append(TargetSpec(ref.path, ref))
        return out

    def status(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "layout": self.layout.kind,
            "memory_root": self.base,
            "paths": self.paths,
        }

    def close(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
