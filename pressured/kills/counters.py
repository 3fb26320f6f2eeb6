"""oom_kill counter readings turned into counter KillRecords, and the last readings kept on
disk so that kills while the daemon was down are reported at start (``counters:restart``)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from pressured.errors import ConfigError
from pressured.kills.base import Clock
from pressured.kills.journal import boot_id
from pressured.model import SOURCE_COUNTERS, SOURCE_COUNTERS_RESTART, KillRecord

log = logging.getLogger("pressured.kills.counters")

STATE_FILE = "kills.json"
STATE_VERSION = 1


class KillState:
    """Last seen oom_kill counter per cgroup, kept in ``<state_dir>/kills.json``.

    Written atomically (temporary file, fsync, rename) so a crash leaves either the old or
    the new state. A file that cannot be read is set aside as ``kills.json.corrupt`` with a
    warning: losing it costs only the kills that happened while the daemon was down.

    The state names the boot it was saved in (``boot``: the kernel's boot_id). Saved in
    another boot (a state_dir on the node's disk across a reboot), every cgroup it names was
    made anew since, whatever its inode: ``other_boot``.
    """

    def __init__(self, state_dir: str, *, boot: str | None = None) -> None:
        self.state_dir = state_dir
        self.boot = boot if boot is not None else boot_id()
        self.saved_boot: str | None = None
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
        boot = data.get("boot_id")
        self.saved_boot = boot if isinstance(boot, str) else None
        return out

    @property
    def other_boot(self) -> bool:
        """Saved in another boot than this one (both known)."""
        return None not in (self.boot, self.saved_boot) and self.boot != self.saved_boot

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
            "boot_id": self.boot,
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
            if self._state is None or (saved := self._state.get(cgroup)) is None:
                return 0, 0, False
            saved_group = saved.get("oom_group_kill")
            seen = (
                int(saved["oom_kill"]),
                saved.get("id"),
                saved_group if isinstance(saved_group, int) else None,
            )
            restart = True
            if self._state.other_boot:  # made anew since the reboot: all its kills are new
                return current, group or 0, restart
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
