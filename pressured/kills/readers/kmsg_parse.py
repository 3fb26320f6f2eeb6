"""/dev/kmsg records and the OOM killer's messages in them, parsed (no I/O here).

A /dev/kmsg read returns one record (Documentation/ABI/testing/dev-kmsg):
``"<prio>,<seq>,<usec>,<flags>[,...];<text>\\n"`` followed by dictionary lines that start
with a space (``" SUBSYSTEM=acpi"``). A jump in sequence numbers says how many records were
lost (overwritten before they were read).

The OOM killer prints, per kill (mm/oom_kill.c):

- ``>= 5.0``: ``"<comm> invoked oom-killer: gfp_mask=..., order=0, oom_score_adj=0"``, the
  report, ``"oom-kill:constraint=...,oom_memcg=<path>,task_memcg=<path>,task=<comm>,pid=<n>,
  uid=<n>"`` (4.19+), then ``"Memory cgroup out of memory: Killed process <pid> (<comm>)
  total-vm:..kB, anon-rss:..kB, file-rss:..kB, shmem-rss:..kB, UID:<n> pgtables:..kB
  oom_score_adj:<n>"`` ("Out of memory: ..." for a global OOM). With memory.oom.group,
  ``"Tasks in <path> are going to be killed due to memory.oom.group set"`` follows and one
  "Killed process" line per member.
- ``< 5.0``: ``"Task in <path> killed as a result of limit of <path>"`` in the report,
  ``"Memory cgroup out of memory: Kill process <pid> (<comm>) score <n> or sacrifice child"``
  and ``"Killed process <pid> (<comm>) total-vm:..."`` (RHEL 7: ``"..., UID 0, total-vm:..."``).
- ``2.6.32`` (RHEL 6): ``"Killed process <pid>, UID <n>, (<comm>) total-vm:..kB, anon-rss:..kB,
  file-rss:..kB"`` (upstream: ``"Killed process <pid> (<comm>) vsz:..kB, ..."``). There kmsg is
  the only source: the kernel keeps no oom_kill counter.

Before 4.19 nothing ties a global OOM's kill to its report by cgroup or pid: the report's
``"<comm> invoked oom-killer"`` line and its stack dump (``"CPU: <n> PID: <pid> Comm: <comm>
..."``, 2.6.32: ``"Pid: <pid>, comm: <comm> ..."``) name the task that triggered it, and the
``"Kill process ... or sacrifice child"`` line that follows joins them: the kill then carries the
trigger as ``extra["trigger"]`` (``{"comm": ..., "pid": ...}``; every tied kill does).

Kept as they are: a kill is reported when its "Killed process" line arrives (the
"oom-kill:" summary alone is not one: it belongs to the rate-limited report), and records of
the user facility (written to /dev/kmsg by user space) are never kills.

The report (everything up to the oom-kill summary) is rate limited (10 per 5 s); the
"Killed process" line is not, so a burst yields kills with pid, comm and rss but no cgroup.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pressured.model import SOURCE_KMSG, KillRecord

KERNEL_FACILITY = 0
"""Only records the kernel printed count: root (or a privileged container) may write
records to /dev/kmsg, and those carry the user facility (prio >= 8)."""

CONTEXT_MAX_USEC = 10_000_000
"""How long after "invoked oom-killer" its report may still name a kill. Printing the task
list to a slow console took seconds on old kernels, whose printk was synchronous."""

GROUP_MAX_GAP_USEC = 1_000_000
"""memory.oom.group members are killed in one loop; a "Killed process" line further than
this from the previous one belongs to another kill."""

_U64 = 1 << 64
_HEADER_NUMBER = re.compile(r"[0-9]{1,20}")
"""The kernel prints prio, seq and usec as unsigned decimal (u8, u64, u64)."""

PID_MAX_LIMIT = 4 * 1024 * 1024
"""No pid is above this (include/linux/threads.h, 64-bit)."""
_UID_MAX = (1 << 32) - 2  # uid_t; (uid_t)-1 is "no uid"
_ADJ_MIN, _ADJ_MAX = -1000, 1000  # OOM_SCORE_ADJ_MIN/MAX
_KB_MAX = (_U64 >> 10) - 1  # the sizes are unsigned long kB: bytes fit in 64 bits


def _bounded(text: str | None, low: int, high: int) -> int | None:
    """An ASCII decimal (the patterns take [0-9] only) if it lies in [low, high], else None.
    The length is checked first: int() refuses strings past 4300 digits by raising."""
    if text is None or len(text.lstrip("-")) > 20:
        return None
    value = int(text)
    return value if low <= value <= high else None


def _cgroup(path: str | None) -> str | None:
    """A cgroup path as the kernel prints it: from the hierarchy's root, so starting with '/'."""
    return path if path and path.startswith("/") else None


@dataclass(frozen=True)
class KmsgRecord:
    prio: int
    seq: int
    usec: int
    flags: str
    text: str
    continuation: tuple[str, ...] = ()
    caller: str | None = None

    @property
    def facility(self) -> int:
        return self.prio >> 3

    @property
    def level(self) -> int:
        return self.prio & 7

    @property
    def fields(self) -> dict[str, str]:
        """The dictionary lines ("KEY=value") of the record."""
        out: dict[str, str] = {}
        for line in self.continuation:
            key, sep, value = line.partition("=")
            if sep:
                out[key] = value
        return out


_ESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})")


def _unescape(text: str) -> str:
    # the kernel writes bytes < 0x20, >= 0x7f and the backslash itself as \xNN
    if "\\x" not in text:
        return text
    raw = _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text)
    return raw.encode("latin-1", "replace").decode("utf-8", "replace")


def parse_kmsg_record(raw: bytes | str) -> KmsgRecord | None:
    """One record as read from /dev/kmsg; None when it is not one (malformed)."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    head, sep, rest = text.partition(";")
    if not sep:
        return None
    parts = head.split(",")
    if len(parts) < 4 or not all(_HEADER_NUMBER.fullmatch(p) for p in parts[:3]):
        return None
    prio, seq, usec = int(parts[0]), int(parts[1]), int(parts[2])
    if max(prio, seq, usec) >= _U64:
        return None
    caller = None
    for extra in parts[4:]:
        if extra.startswith("caller="):
            caller = extra[len("caller=") :]
    lines = rest.split("\n")
    body = lines[0]
    continuation = tuple(
        _unescape(line[1:]) for line in lines[1:] if line.startswith(" ") and len(line) > 1
    )
    return KmsgRecord(prio, seq, usec, parts[3], _unescape(body), continuation, caller)


_INVOKED = re.compile(r"^(?P<comm>.*) invoked oom-killer: (?P<rest>.*)$")
# Numbers are [0-9], not \d: \d takes every script's digits, and int() with them.
_OOM_KILL = re.compile(
    r"^oom-kill:constraint=(?P<constraint>[A-Z_]+),(?P<mid>.*?),?task=(?P<task>.*),"
    r"pid=(?P<pid>[0-9]+),uid=(?P<uid>[0-9]+)\s*$"
)
_TASKS_GROUP = re.compile(
    r"^Tasks in (?P<cgroup>/.*) are going to be killed due to memory\.oom\.group set\s*$"
)
_TASK_IN = re.compile(r"^Task in (?P<task>/.*) killed as a result of limit of (?P<limit>/.*?)\s*$")
_KILL_PROCESS = re.compile(
    r"^(?:(?P<msg>.*?): )?Kill process (?P<pid>[0-9]+) \((?P<comm>.*)\) "
    r"score (?P<score>-?[0-9]+) or sacrifice child\s*$"
)
_KILLED = re.compile(
    r"^(?:(?P<msg>.*?): )?Killed process (?P<pid>[0-9]+) \((?P<comm>.*)\)(?P<rest>[^)]*)$"
)
_KILLED_UID_FIRST = re.compile(
    r"^(?:(?P<msg>.*?): )?Killed process (?P<pid>[0-9]+), UID (?P<uid>[0-9]+), "
    r"\((?P<comm>.*)\)(?P<rest>[^)]*)$"
)
"""2.6.32 (RHEL 6): the uid comes before the comm."""
_STACK_HEAD = re.compile(
    r"^(?:CPU: [0-9]+ (?:UID: [0-9]+ )?PID: (?P<pid>[0-9]+) Comm: |"
    r"Pid: (?P<old_pid>[0-9]+), comm: )(?P<comm>.*?) (?:Not tainted|Tainted)"
)
"""The first line of the trigger's stack dump (dump_stack), ``Pid: ..., comm:`` before 3.x."""
_RSS_FIELDS = {
    "total_vm": re.compile(r"(?:total-vm|vsz):([0-9]+)kB"),
    "anon_rss": re.compile(r"anon-rss:([0-9]+)kB"),
    "file_rss": re.compile(r"file-rss:([0-9]+)kB"),
    "shmem_rss": re.compile(r"shmem-rss:([0-9]+)kB"),
    "pgtables": re.compile(r"pgtables:([0-9]+)kB"),
}
_UID = re.compile(r"UID[: ]([0-9]+)")
_ADJ = re.compile(r"oom_score_adj:(-?[0-9]+)")


@dataclass
class _Context:
    """What the report of one OOM invocation said, until its "Killed process" line."""

    usec: int
    invoker: str | None = None
    invoker_pid: int | None = None
    cgroup: str | None = None
    oom_memcg: str | None = None
    constraint: str | None = None
    pid: int | None = None
    comm: str | None = None
    uid: int | None = None
    chose_pid: int | None = None
    used: bool = False
    group: str | None = None
    group_usec: int = 0


@dataclass
class _Fragment:
    record: KmsgRecord
    text: str


@dataclass
class KmsgOomParser:
    """Stateful across records: turns a stream of KmsgRecords into KillRecords.

    ``gaps`` counts records missed (sequence numbers skipped: overwritten before read).
    """

    gaps: int = 0
    ignored_user: int = 0
    _last_seq: int | None = None
    _ctx: _Context | None = None
    _frag: _Fragment | None = field(default=None, repr=False)

    def feed(self, record: KmsgRecord, *, time: float, wall: float) -> list[KillRecord]:
        if self._last_seq is not None and record.seq > self._last_seq + 1:
            self.gaps += record.seq - self._last_seq - 1
            # what was lost may have been this context's kill or its continuation
            self._ctx = None
            self._frag = None
        if self._last_seq is None or record.seq > self._last_seq:
            self._last_seq = record.seq
        if record.facility != KERNEL_FACILITY:
            self.ignored_user += 1
            return []
        out: list[KillRecord] = []
        frag = self._frag
        if frag is not None:
            if "+" in record.flags:
                # before 4.9 every later fragment is '+', the last one too: the line ends
                # only when a record that is not '+' arrives
                frag.text += record.text
                return out
            if self._continues(frag, record):
                # since 5.10 every unterminated fragment is 'c' and the last one '-'
                frag.text += record.text
                if "c" in record.flags:
                    return out
                self._frag = None
                return self._line(frag.record, frag.text, time, wall)
            self._frag = None
            out += self._line(frag.record, frag.text, time, wall)
        if "c" in record.flags:
            self._frag = _Fragment(record, record.text)
            return out
        out += self._line(record, record.text, time, wall)
        return out

    def flush(self, *, time: float, wall: float) -> list[KillRecord]:
        """Process a fragment still waiting for its continuation (end of input)."""
        frag, self._frag = self._frag, None
        return [] if frag is None else self._line(frag.record, frag.text, time, wall)

    @staticmethod
    def _continues(frag: _Fragment, record: KmsgRecord) -> bool:
        # dev-kmsg: the continuation hints are not always right and other CPUs may print in
        # between; join only what looks like the rest of the same line
        if frag.record.caller and record.caller and frag.record.caller != record.caller:
            return False
        return frag.text.endswith(("=", " ", ",")) or record.text.startswith((",", " "))

    def _line(self, rec: KmsgRecord, text: str, now: float, wall: float) -> list[KillRecord]:
        text = text.rstrip("\n")
        if "Killed process" in text:
            m = _KILLED.match(text) or _KILLED_UID_FIRST.match(text)
            kill = self._killed(rec, m, now, wall) if m else None
            return [] if kill is None else [kill]
        if "invoked oom-killer" in text:
            m = _INVOKED.match(text)
            if m:
                self._ctx = _Context(rec.usec, invoker=m.group("comm"))
            return []
        if text.startswith(("CPU: ", "Pid: ")):
            self._stack_head(rec, text)
            return []
        if text.startswith("oom-kill:"):
            self._oom_kill(rec, text)
            return []
        if text.startswith("Task in "):
            m = _TASK_IN.match(text)
            if m:
                ctx = self._ctx_for(rec, starts_report=True)
                ctx.cgroup, ctx.oom_memcg = m.group("task"), m.group("limit")
            return []
        if text.startswith("Tasks in "):
            m = _TASKS_GROUP.match(text)
            if m:
                ctx = self._ctx_for(rec, starts_report=False)
                ctx.group, ctx.group_usec = m.group("cgroup"), rec.usec
            return []
        if "Kill process" in text:
            m = _KILL_PROCESS.match(text)
            chose = _bounded(m.group("pid"), 1, PID_MAX_LIMIT) if m else None
            if chose is not None:
                ctx = self._ctx_for(rec, starts_report=False)
                ctx.chose_pid = chose
        return []

    def _ctx_for(self, rec: KmsgRecord, *, starts_report: bool) -> _Context:
        """The context a report line belongs to. A line that only a report prints
        (``starts_report``) opens a new one after a used context; a line printed for every
        kill (rate-limited case) gets a used one, so it names no cgroup by itself."""
        ctx = self._ctx
        if ctx is None or rec.usec - ctx.usec > CONTEXT_MAX_USEC:
            ctx = _Context(rec.usec, used=not starts_report)
            self._ctx = ctx
        elif ctx.used and starts_report:
            ctx = _Context(rec.usec)
            self._ctx = ctx
        return ctx

    def _stack_head(self, rec: KmsgRecord, text: str) -> None:
        """The pid of the task that invoked the OOM killer, from its stack dump."""
        ctx = self._ctx
        m = _STACK_HEAD.match(text)
        if (
            m is None
            or ctx is None
            or ctx.used
            or ctx.invoker_pid is not None
            or ctx.invoker != m.group("comm")
            or rec.usec - ctx.usec > CONTEXT_MAX_USEC
        ):
            return
        ctx.invoker_pid = _bounded(m.group("pid") or m.group("old_pid"), 1, PID_MAX_LIMIT)

    def _oom_kill(self, rec: KmsgRecord, text: str) -> None:
        m = _OOM_KILL.match(text)
        if not m:
            return
        pid = _bounded(m.group("pid"), 1, PID_MAX_LIMIT)
        uid = _bounded(m.group("uid"), 0, _UID_MAX)
        if pid is None or uid is None:
            return  # not what the kernel prints: the line is garbled
        ctx = self._ctx
        if ctx is None or ctx.used or rec.usec - ctx.usec > CONTEXT_MAX_USEC:
            ctx = _Context(rec.usec)
            self._ctx = ctx
        ctx.constraint = m.group("constraint")
        ctx.pid = pid
        ctx.comm = m.group("task")
        ctx.uid = uid
        mid = m.group("mid")
        # cgroup names may hold commas: take the memcg paths by their keys, not by splitting
        task_at = mid.rfind("task_memcg=")
        if task_at >= 0:
            ctx.cgroup = _cgroup(mid[task_at + len("task_memcg=") :].rstrip(","))
            head = mid[:task_at].rstrip(",")
        else:
            head = mid
        oom_at = head.rfind("oom_memcg=")
        if oom_at >= 0:
            ctx.oom_memcg = _cgroup(head[oom_at + len("oom_memcg=") :])

    def _killed(
        self, rec: KmsgRecord, m: re.Match[str], now: float, wall: float
    ) -> KillRecord | None:
        pid = _bounded(m.group("pid"), 1, PID_MAX_LIMIT)
        if pid is None:
            return None  # not a pid: the line is garbled
        comm = m.group("comm")
        rest = m.group("rest")
        rss = {}
        for name, rx in _RSS_FIELDS.items():
            f = rx.search(rest)
            kb = _bounded(f.group(1), 0, _KB_MAX) if f else None
            if kb is not None:
                rss[name] = kb * 1024
        uid_text = m.groupdict().get("uid")
        if uid_text is None and (uid_m := _UID.search(rest)) is not None:
            uid_text = uid_m.group(1)
        adj_m = _ADJ.search(rest)
        extra: dict[str, object] = {"kmsg_seq": rec.seq, "kmsg_usec": rec.usec}
        if m.group("msg"):
            extra["message"] = m.group("msg")
        cgroup: str | None = None
        ctx = self._ctx
        if (
            ctx is not None
            and rec.usec - ctx.usec <= CONTEXT_MAX_USEC
            and not ctx.used
            and (ctx.pid == pid or ctx.pid is None or ctx.chose_pid is not None)
            and (
                ctx.cgroup is not None
                or ctx.pid == pid
                # before 4.19, a global OOM: its report chose a victim, this is the kill
                or (ctx.invoker is not None and ctx.chose_pid is not None)
            )
        ):
            ctx.used = True
            cgroup = ctx.cgroup
            for name in ("oom_memcg", "constraint", "invoker"):
                value = getattr(ctx, name)
                if value is not None:
                    extra[name] = value
            if ctx.invoker is not None:
                extra["trigger"] = {"comm": ctx.invoker, "pid": ctx.invoker_pid}
            if ctx.pid is not None and ctx.pid != pid:
                extra["chosen_pid"] = ctx.pid
            elif ctx.pid is None and ctx.chose_pid is not None and ctx.chose_pid != pid:
                extra["chosen_pid"] = ctx.chose_pid
        elif (
            ctx is not None
            and ctx.group is not None
            and rec.usec - ctx.group_usec <= (GROUP_MAX_GAP_USEC)
        ):
            cgroup = ctx.group
            ctx.group_usec = rec.usec
            extra["oom_group"] = ctx.group
        return KillRecord(
            source=SOURCE_KMSG,
            time=now,
            wall=wall,
            cgroup=cgroup,
            pid=pid,
            comm=comm,
            rss=rss,
            uid=_bounded(uid_text, 0, _UID_MAX),
            oom_score_adj=_bounded(adj_m.group(1), _ADJ_MIN, _ADJ_MAX) if adj_m else None,
            extra=extra,
        )
