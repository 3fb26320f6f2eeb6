"""OOM kills from BPF through bcc (bpf/oom_kill.c), loaded only when enabled and importable.

Modes, chosen once at start:

- ``kprobe``: a kprobe on oom_kill_process gives the victim's pid/tgid/comm, the cgroup id of
  the memcg that hit its limit, the victim's v2 cgroup id and the kernfs names of its cgroup
  and parent (read in the kernel, so they survive the victim being reaped), totalpages and
  chosen_points. oom:mark_victim is attached beside it: the kprobe also fires when no kill
  follows (the victim was already exiting, or had no mm left), so a kprobe hit is reported
  only once mark_victim confirms it, merged into one record.
- ``tracepoint``: when the kprobe cannot attach (kernels without kprobes, a renamed or
  inlined oom_kill_process), a BPF program on oom:mark_victim alone.

bcc is Debian's python3-bpfcc (not the unrelated PyPI package named "bcc"); the program is
compiled once at start (~30 s in a slow guest with memcontrol.h: ``compile_seconds`` says how
long it took). Reading: ``fds()`` are bcc's perf reader fds, to register for EPOLLIN; on a
wake-up call ``read()``. When bcc offers no reader fds, ``poll_interval`` says how often to
call ``read()`` instead (and on every other wake-up) while the probe is active.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import struct
import sys
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from pressured.kills.readers.tracepoint import (
    TRACEFS_CANDIDATES,
    TracepointUnavailable,
    find_tracefs,
    pid_cgroup,
    read_format,
)
from pressured.model import SOURCE_BCC, KillRecord

log = logging.getLogger("pressured.kills.readers.bcc")

PROGRAM_NAME = "oom_kill.c"
KPROBE_FUNCTION = "oom_kill_process"

# struct pk_event in bpf/oom_kill.c, little-endian, natural alignment (368 bytes)
EVENT_LAYOUT = struct.Struct("<IIIIQQQqQQQQQiI16s128s128s")
KIND_KPROBE = 1
KIND_MARK_VICTIM = 2
HAVE_COMM = 1
HAVE_RSS = 2
HAVE_UID = 4
HAVE_PGTABLES = 8
HAVE_ADJ = 16
HAVE_MEMCG = 32
HAVE_CGROUP = 64

# mark_victim field -> (compile flag, HAVE bit)
_MV_FLAGS = {
    "comm": "-DPK_MV_COMM",
    "total_vm": "-DPK_MV_RSS",
    "uid": "-DPK_MV_UID",
    "pgtables": "-DPK_MV_PGTABLES",
    "oom_score_adj": "-DPK_MV_ADJ",
}
_MV_RSS_FIELDS = ("total_vm", "anon_rss", "file_rss", "shmem_rss")


def _cstr(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode("utf-8", "replace")


def decode_event(data: bytes) -> dict[str, Any]:
    """One struct pk_event from the perf buffer."""
    (
        kind,
        pid,
        tgid,
        uid,
        memcg_id,
        cgroup_id,
        totalpages,
        points,
        total_vm,
        anon_rss,
        file_rss,
        shmem_rss,
        pgtables,
        adj,
        have,
        comm,
        cg_name,
        parent_name,
    ) = EVENT_LAYOUT.unpack_from(data)
    return {
        "kind": kind,
        "pid": pid,
        "tgid": tgid,
        "uid": uid,
        "memcg_id": memcg_id,
        "cgroup_id": cgroup_id,
        "totalpages": totalpages,
        "points": points,
        "total_vm": total_vm,
        "anon_rss": anon_rss,
        "file_rss": file_rss,
        "shmem_rss": shmem_rss,
        "pgtables": pgtables,
        "oom_score_adj": adj,
        "have": have,
        "comm": _cstr(comm),
        "cgroup_name": _cstr(cg_name),
        "parent_cgroup_name": _cstr(parent_name),
    }


def program_path() -> Path:
    """bpf/oom_kill.c: at the top of a source checkout, or where a wheel installs it
    (<prefix>/share/pressured/bpf, pyproject's data-files), or packaged as pressured/bpf/."""
    checkout = Path(__file__).resolve().parents[3] / "bpf" / PROGRAM_NAME
    if checkout.is_file():
        return checkout
    shared = Path(sys.prefix) / "share" / "pressured" / "bpf" / PROGRAM_NAME
    if shared.is_file():
        return shared
    return Path(str(resources.files("pressured") / "bpf" / PROGRAM_NAME))


def kprobe_available(tracefs: str | None, kallsyms: str = "/proc/kallsyms") -> tuple[bool, str]:
    """Whether a kprobe on oom_kill_process can be tried, and why not."""
    pmu = "/sys/bus/event_source/devices/kprobe"
    if not os.path.isdir(pmu) and not (
        tracefs and os.path.exists(os.path.join(tracefs, "kprobe_events"))
    ):
        return False, "kernel without kprobes (no kprobe PMU, no kprobe_events)"
    try:
        with open(kallsyms, encoding="ascii", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2] == KPROBE_FUNCTION:
                    return True, f"{KPROBE_FUNCTION} in {kallsyms}"
    except OSError as exc:
        return False, f"{kallsyms}: {exc.strerror}"
    # a suffixed copy (.isra/.constprop) takes other arguments: not safe to read
    return False, f"{KPROBE_FUNCTION} is not in {kallsyms} (inlined or renamed)"


def merge_events(kp: dict[str, Any] | None, mv: dict[str, Any] | None) -> dict[str, Any]:
    """One kill's fields from the kprobe hit and the mark_victim hit (either may be None)."""
    out: dict[str, Any] = {}
    if kp is not None:
        out.update(
            pid=kp["pid"],
            tgid=kp["tgid"],
            comm=kp["comm"] or None,
            totalpages=kp["totalpages"],
            points=kp["points"],
        )
        if kp["have"] & HAVE_MEMCG:
            out["memcg_id"] = kp["memcg_id"]
        if kp["have"] & HAVE_CGROUP:
            out["cgroup_id"] = kp["cgroup_id"] or None
            out["cgroup_name"] = kp["cgroup_name"] or None
            out["parent_cgroup_name"] = kp["parent_cgroup_name"] or None
    if mv is not None:
        # the task actually marked (a thread of the chosen process when its leader had no mm)
        out["pid"] = mv["pid"]
        have = mv["have"]
        if have & HAVE_COMM and mv["comm"]:
            out["comm"] = mv["comm"]
        if have & HAVE_RSS:
            out["rss"] = {k: mv[k] * 1024 for k in _MV_RSS_FIELDS}
            if have & HAVE_PGTABLES:
                out["rss"]["pgtables"] = mv["pgtables"] * 1024
        if have & HAVE_UID:
            out["uid"] = mv["uid"]
        if have & HAVE_ADJ:
            out["oom_score_adj"] = mv["oom_score_adj"]
    return out


class BccProbe:
    """bcc probe for OOM kills (a KillSource once started). ``start()`` never raises for a
    missing feature: ``active`` and ``reason`` (together ``status``) say what happened,
    ``mode`` is "kprobe", "tracepoint" or None."""

    name = SOURCE_BCC

    def __init__(
        self,
        enabled: bool = True,
        *,
        tracefs: str = TRACEFS_CANDIDATES[0],
        program: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        proc: str = "/proc",
        confirm_s: float = 2.0,
        allow_kprobe: bool = True,
    ) -> None:
        self.enabled = enabled
        self._tracefs_pref = tracefs
        self._program = program
        self._clock = clock
        self._wall = wall_clock
        self._proc = proc
        self._confirm_s = confirm_s
        self._allow_kprobe = allow_kprobe
        self.active = False
        self.reason = "not started"
        self.mode: str | None = None
        self.compile_seconds: float | None = None
        self.notes: list[str] = []
        self.lost = 0
        self._bpf: Any = None
        self._raw: list[bytes] = []
        self._pending_kp: list[tuple[float, dict[str, Any]]] = []
        self._recent_mv: dict[int, float] = {}
        self._has_tracepoint = False

    # ------------------------------------------------------------------ start
    def start(self) -> bool:
        if not self.enabled:
            self.reason = "disabled in config (kills.bcc.enabled)"
            return False
        candidates = [self._tracefs_pref] + [
            c for c in TRACEFS_CANDIDATES if c != self._tracefs_pref
        ]
        # bcc looks for tracefs when imported: mount it first
        tracefs, tracefs_note = find_tracefs(candidates, mount=True)
        try:
            import bcc  # noqa: PLC0415  (heavy, optional: Debian's python3-bpfcc)
        except ImportError as exc:
            self.reason = (
                f"bcc is not importable ({exc}); install Debian's python3-bpfcc and make it "
                "visible to this Python"
            )
            return False
        text = self._load_text()
        if text is None:
            return False
        mv_flags: list[str] = []
        if tracefs is None:
            self.notes.append(f"oom:mark_victim unavailable: {tracefs_note}")
        else:
            try:
                fmt = read_format(tracefs, "oom", "mark_victim")
                present = {flag for name, flag in _MV_FLAGS.items() if name in fmt.fields}
                mv_flags = ["-DPK_TRACEPOINT", *sorted(present)]
            except TracepointUnavailable as exc:
                self.notes.append(f"oom:mark_victim unavailable: {exc}")

        kp_ok, kp_why = (
            kprobe_available(tracefs) if self._allow_kprobe else (False, "kprobe not allowed")
        )
        if kp_ok:
            started = time.monotonic()
            try:
                b = bcc.BPF(text=text.encode(), cflags=["-DPK_KPROBE", *mv_flags])
            except Exception as exc:  # bcc raises bare Exception on compile/load failures
                self.notes.append(f"kprobe program did not load: {exc}")
                b = None
            self._add_compile_time(time.monotonic() - started)
            if b is not None:
                try:
                    # bcc wants bytes: str arguments draw a DeprecationWarning
                    b.attach_kprobe(event=KPROBE_FUNCTION.encode(), fn_name=b"pk_oom_kill_process")
                except Exception as exc:
                    self.notes.append(f"kprobe on {KPROBE_FUNCTION} did not attach: {exc}")
                    if mv_flags:
                        # the tracepoint in the same object is attached already: keep it
                        return self._ready(b, "tracepoint", bool(mv_flags))
                    b.cleanup()
                else:
                    return self._ready(b, "kprobe", bool(mv_flags))
        else:
            self.notes.append(kp_why)
        if not mv_flags:
            self.reason = "; ".join(self.notes) or "nothing to attach"
            return False
        started = time.monotonic()
        try:
            b = bcc.BPF(text=text.encode(), cflags=mv_flags)
        except Exception as exc:
            self._add_compile_time(time.monotonic() - started)
            self.reason = "; ".join([*self.notes, f"tracepoint program did not load: {exc}"])
            return False
        self._add_compile_time(time.monotonic() - started)
        return self._ready(b, "tracepoint", True)

    def _add_compile_time(self, seconds: float) -> None:
        self.compile_seconds = (self.compile_seconds or 0.0) + seconds

    def _load_text(self) -> str | None:
        if self._program is not None:
            return self._program
        path = program_path()
        try:
            return path.read_text(encoding="utf-8")
        except OSError as exc:
            self.reason = f"{path}: cannot read the BPF program: {exc.strerror}"
            return None

    def _ready(self, b: Any, mode: str, has_tracepoint: bool) -> bool:
        def on_event(_cpu: int, data: Any, size: int) -> None:
            self._raw.append(ctypes.string_at(data, size))

        def on_lost(count: int) -> None:
            self.lost += count

        b[b"events"].open_perf_buffer(on_event, page_cnt=16, lost_cb=on_lost)
        self._bpf = b
        self.mode = mode
        self._has_tracepoint = has_tracepoint
        self.active = True
        what = {
            "kprobe": f"kprobe on {KPROBE_FUNCTION}"
            + (" confirmed by oom:mark_victim" if has_tracepoint else ""),
            "tracepoint": "BPF on oom:mark_victim",
        }[mode]
        self.reason = f"{what}; compiled in {self.compile_seconds or 0.0:.1f} s"
        if self.notes:
            self.reason += " (" + "; ".join(self.notes) + ")"
        log.info("bcc probe active: %s", self.reason)
        return True

    # ------------------------------------------------------------------ reading
    @property
    def status(self) -> tuple[bool, str]:
        return self.active, self.reason

    @property
    def problems(self) -> dict[str, int]:
        return {"lost": self.lost}

    @property
    def poll_interval(self) -> float | None:
        """Without reader fds nothing wakes the loop for the probe: read it this often."""
        return 0.5 if self._bpf is not None and not self.fds() else None

    def fds(self) -> list[int]:
        """bcc's perf reader fds (one per CPU) to register for EPOLLIN; [] if unavailable."""
        if self._bpf is None:
            return []
        try:
            from bcc.libbcc import lib  # noqa: PLC0415
        except ImportError:
            return []
        readers = getattr(self._bpf, "perf_buffers", {})
        return [int(lib.perf_reader_fd(r)) for r in readers.values()]

    def read(self) -> list[KillRecord]:
        """Read what the perf buffer holds now (never blocks) and return confirmed kills."""
        if self._bpf is None:
            return []
        consume = getattr(self._bpf, "perf_buffer_consume", None)
        try:
            if consume is not None:
                consume()
            else:
                self._bpf.perf_buffer_poll(timeout=0)
        except Exception as exc:  # bcc raises bare Exception; the daemon goes on
            log.warning("bcc perf buffer: %s", exc)
        raw, self._raw = self._raw, []
        return self.handle([decode_event(d) for d in raw if len(d) >= EVENT_LAYOUT.size])

    def handle(self, events: list[dict[str, Any]]) -> list[KillRecord]:
        """Pair kprobe hits with mark_victim hits (in arrival order) into kill records."""
        now = self._clock()
        out: list[KillRecord] = []
        for ev in events:
            if ev["kind"] == KIND_KPROBE:
                if not self._has_tracepoint:
                    out.append(self._record(merge_events(ev, None)))
                elif ev["pid"] in self._recent_mv or ev["tgid"] in self._recent_mv:
                    # mark_victim came first (another CPU's buffer): add what it lacked
                    out.append(self._record(merge_events(ev, None)))
                else:
                    self._pending_kp.append((now, ev))
            elif ev["kind"] == KIND_MARK_VICTIM:
                kp = self._take_kprobe(ev["pid"])
                self._recent_mv[ev["pid"]] = now
                out.append(self._record(merge_events(kp, ev)))
        for t, ev in self._pending_kp:
            if now - t > self._confirm_s:
                log.debug(
                    "oom_kill_process chose pid %d but no task was marked: no kill", ev["pid"]
                )
        self._pending_kp = [(t, ev) for t, ev in self._pending_kp if now - t <= self._confirm_s]
        self._recent_mv = {p: t for p, t in self._recent_mv.items() if now - t <= self._confirm_s}
        return out

    def _take_kprobe(self, pid: int) -> dict[str, Any] | None:
        for i, (_, ev) in enumerate(self._pending_kp):
            if pid in (ev["pid"], ev["tgid"]):
                del self._pending_kp[i]
                return ev
        return None

    def _record(self, fields: dict[str, Any]) -> KillRecord:
        pid = int(fields["pid"])
        extra = {
            k: fields[k]
            for k in (
                "tgid",
                "memcg_id",
                "cgroup_name",
                "parent_cgroup_name",
                "totalpages",
                "points",
            )
            if fields.get(k) is not None
        }
        return KillRecord(
            source=SOURCE_BCC,
            time=self._clock(),
            wall=self._wall(),
            cgroup=pid_cgroup(pid, self._proc),
            cgroup_id=fields.get("cgroup_id"),
            pid=pid,
            comm=fields.get("comm"),
            rss=dict(fields.get("rss", {})),
            uid=fields.get("uid"),
            oom_score_adj=fields.get("oom_score_adj"),
            extra=extra,
        )

    def close(self) -> None:
        if self._bpf is not None:
            with contextlib.suppress(Exception):
                self._bpf.cleanup()
            self._bpf = None
        self.active = False
