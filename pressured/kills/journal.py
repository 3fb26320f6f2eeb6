"""The kills this daemon confirmed, kept as JSON lines in ``<state_dir>/kills.jsonl``: what
`pressured diagnose` lists as the kills since boot, with how long before each it warned, and
what a restarted daemon lists again at /v1/state (daemon/state.py ``LiveState.seed_kills``).

Each line is one ``oom_killed`` event's essentials and the boot it happened in
(/proc/sys/kernel/random/boot_id), so a reader can keep this boot's kills only. The file is
bounded: past MAX_BYTES it is rewritten with its newer half (atomically: a temporary file
renamed over kills.jsonl). A line that cannot be read is skipped: the journal informs, it
decides nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from typing import Any, Final

from pressured.model import OomKill

log = logging.getLogger("pressured.kills.journal")

JOURNAL_FILE: Final = "kills.jsonl"
MAX_BYTES: Final = 1 << 20
"""About 4,000 kills: a node's history for days, and a file diagnose reads at once."""
BOOT_ID: Final = "/proc/sys/kernel/random/boot_id"


def boot_id(path: str = BOOT_ID) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip() or None
    except OSError:
        return None


def entry(kill: OomKill, boot: str | None) -> dict[str, Any]:
    doc = kill.to_json()
    keep = (
        "time",
        "cgroup",
        "namespace",
        "pod_name",
        "container_name",
        "pid",
        "comm",
        "oom_kill_count",
        "sources",
        "warned_seconds_before",
        "limit_scope",
        "unreclaimable_bytes",
        "working_set_bytes",
        "decided_by",
        "dry_run",
    )
    return {"boot_id": boot, **{k: doc.get(k) for k in keep}}


class KillJournal:
    def __init__(self, state_dir: str, *, boot: str | None = None) -> None:
        self.path = os.path.join(state_dir, JOURNAL_FILE)
        self.boot = boot if boot is not None else boot_id()

    def append(self, kill: OomKill) -> None:
        """Add one kill; a write that fails is logged, never raised (the event still goes)."""
        line = json.dumps(entry(kill, self.boot), sort_keys=True) + "\n"
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                size = f.tell()
            if size > MAX_BYTES:
                self._keep_newer_half()
        except OSError as exc:
            log.warning("%s: cannot record a kill: %s", self.path, exc.strerror or exc)

    def _keep_newer_half(self) -> None:
        with open(self.path, encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
        fd, tmp = tempfile.mkstemp(prefix=".kills.jsonl.", dir=os.path.dirname(self.path))
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.writelines(lines[len(lines) // 2 :])
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def read_kills(
    state_dir: str, *, boot: str | None = None, every_boot: bool = False
) -> list[dict[str, Any]]:
    """The journal's kills of boot ``boot`` (default: this one; ``every_boot``: all kept),
    oldest first; [] when there is no journal. Lines that are not a JSON object are skipped;
    a journal that cannot be read is OSError."""
    path = os.path.join(state_dir, JOURNAL_FILE)
    want = None if every_boot else boot if boot is not None else boot_id()
    out = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    doc = json.loads(line)
                except ValueError:
                    continue
                if isinstance(doc, dict) and (want is None or doc.get("boot_id") == want):
                    out.append(doc)
    except FileNotFoundError:
        return []
    return out
