"""`pressured top`: a live terminal view of a running daemon, redrawn on the daemon's own
wake-ups.

No timer: a reader thread long-polls the daemon's ``/v1/state?after=GENERATION&wait=S``
(daemon/state.py), which answers as soon as a loop turn changed something; each answer (and
each key) redraws the screen. A daemon with nothing to say costs one request per MAX_WAIT_S.

Each target's deciding figure (``decided_by``: the OOM-risk figure, unreclaimable, by default;
the working set where a source has none) against its limit, with its percent as a bar, growth,
ETA, PSI and severity; below, the last events.

Keys: ``s`` next sort (headroom, usage %, growth, ETA, name), ``r`` reverse, ``/`` filter by
text (Enter keeps it, Esc drops it), ``c`` clears the filter, ``q`` quits.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import termios
import threading
import tty
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from pressured import httpget
from pressured.errors import HttpGetError
from pressured.model import METRIC_FIELDS, METRIC_SHORT

if TYPE_CHECKING:
    from rich.console import RenderableType

WAIT_S: Final = 25.0
"""How long one request waits for a change (below the daemon's MAX_WAIT_S)."""
COALESCE_S: Final = 0.2
"""After an answer the next request waits this long first: a burst of wake-ups (a leak read
every 50 ms) is one redraw, not twenty, and costs the daemon one answer."""
MAX_BYTES: Final = 16 << 20
SORTS: Final = ("headroom", "percent", "growth", "eta", "name")
EVENTS_SHOWN: Final = 8


@dataclass
class View:
    """What the screen shows besides the daemon's state: the keys' effects."""

    sort: str = "headroom"
    reverse: bool = False
    filter: str = ""
    typing: str | None = None
    """The filter being typed after ``/``; None when not typing."""
    quit: bool = False

    def key(self, ch: str) -> None:
        if self.typing is not None:
            if ch in ("\r", "\n"):
                self.filter, self.typing = self.typing, None
            elif ch == "\x1b":
                self.typing = None
            elif ch in ("\x7f", "\b"):
                self.typing = self.typing[:-1]
            elif ch.isprintable():
                self.typing += ch
            return
        if ch in ("q", "\x03"):
            self.quit = True
        elif ch == "s":
            self.sort = SORTS[(SORTS.index(self.sort) + 1) % len(SORTS)]
        elif ch == "r":
            self.reverse = not self.reverse
        elif ch == "/":
            self.typing = ""
        elif ch == "c":
            self.filter = ""


def _name(row: Mapping[str, Any]) -> str:
    """namespace/pod/container, else the cgroup's last two path parts (the rest is the same
    for every target of a machine)."""
    if row.get("pod"):
        return f"{row.get('namespace')}/{row['pod']}/{row.get('container') or '-'}"
    path = str(row.get("cgroup") or row.get("key") or "-")
    parts = path.rstrip("/").split("/")
    return path if len(parts) <= 3 else ".../" + "/".join(parts[-2:])


def _sort_key(sort: str) -> Any:
    def num(row: Mapping[str, Any], key: str) -> tuple[bool, float]:
        v = row.get(key)
        return (not isinstance(v, int | float), float(v) if isinstance(v, int | float) else 0.0)

    if sort == "name":
        return _name
    if sort == "percent":
        return lambda r: (num(r, "percent")[0], -num(r, "percent")[1])
    if sort == "growth":
        return lambda r: (num(r, "growth_bytes_per_s")[0], -num(r, "growth_bytes_per_s")[1])
    if sort == "eta":
        return lambda r: num(r, "eta_seconds")
    return lambda r: num(r, "headroom_bytes")


def rows(state: Mapping[str, Any], view: View) -> list[dict[str, Any]]:
    """The targets shown: filtered by ``view.filter`` (a substring of the name), sorted."""
    targets = [r for r in state.get("targets") or [] if isinstance(r, dict)]
    needle = (view.typing if view.typing is not None else view.filter).lower()
    if needle:
        targets = [r for r in targets if needle in f"{_name(r)} {r.get('cgroup') or ''}".lower()]
    return sorted(targets, key=_sort_key(view.sort), reverse=view.reverse)


def _mib(v: Any) -> str:
    return "-" if not isinstance(v, int | float) else f"{v / 1048576:.1f}Mi"


def _deciding(row: Mapping[str, Any]) -> tuple[Any, str]:
    """The bytes the row's percent, headroom and ETA rest on, and the metric's short name
    (the working set for a daemon that does not say)."""
    metric = row.get("decided_by")
    if metric not in METRIC_FIELDS:
        metric = "working_set"
    return row.get(METRIC_FIELDS[metric]), METRIC_SHORT[metric]


def _bar(percent: Any, width: int = 20) -> str:
    if not isinstance(percent, int | float):
        return " " * width
    filled = max(0, min(width, round(width * percent / 100)))
    return "#" * filled + "." * (width - filled)


def render(state: Mapping[str, Any] | None, view: View, error: str | None) -> RenderableType:
    from rich.console import Group  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415

    parts: list[RenderableType] = []
    order = f"sort: {view.sort}{' (reversed)' if view.reverse else ''}"
    shown_filter = view.typing if view.typing is not None else view.filter
    head = Text(f"pressured top  {order}  filter: {shown_filter or '-'}")
    if view.typing is not None:
        head.append("_  (Enter keeps, Esc drops)")
    parts.append(head)
    if state is None:
        parts.append(Text(error or "waiting for the daemon ...", style="red" if error else ""))
        return Group(*parts)
    own = state.get("self") if isinstance(state.get("self"), dict) else {}
    assert isinstance(own, dict)
    health = "; ".join(own.get("degraded") or []) or "ok"
    parts.append(
        Text(
            f"node {state.get('node') or '-'}  updates: {state.get('generation')}  "
            f"own RSS {_mib(own.get('rss_bytes'))}  health: {health}",
            style="yellow" if health != "ok" else "",
        )
    )
    if error:
        parts.append(Text(f"(stale) {error}", style="red"))
    table = Table(expand=False, pad_edge=False)
    for col in ("target", "deciding / limit", "", "%", "growth/s", "ETA", "PSI some/full", "sev"):
        table.add_column(col, overflow="fold" if col == "target" else "ellipsis")
    for r in rows(state, view):
        pct = r.get("percent")
        style = None
        if r.get("severity") == "critical":
            style = "red"
        elif r.get("severity") == "warn":
            style = "yellow"
        psi = "-"
        if isinstance(r.get("psi_some_avg10"), int | float):
            psi = f"{r['psi_some_avg10']:.2f}/{r.get('psi_full_avg10') or 0:.2f}"
        eta = r.get("eta_seconds")
        value, metric = _deciding(r)
        table.add_row(
            Text(_name(r)),
            f"{_mib(value)} {metric} / {_mib(r.get('limit_bytes'))}",
            _bar(pct),
            "-" if not isinstance(pct, int | float) else f"{pct:.1f}",
            _mib(r.get("growth_bytes_per_s")),
            "-" if not isinstance(eta, int | float) else f"{eta:.0f}s",
            psi,
            str(r.get("severity") or "-"),
            style=style,
        )
    parts.append(table)
    events = [e for e in state.get("events") or [] if isinstance(e, dict)][-EVENTS_SHOWN:]
    parts.append(Text("last events:" if events else "last events: none yet"))
    for e in reversed(events):
        line = f"  {e.get('time')}  {e.get('severity'):<10} {_name(e)}"
        if e.get("event_type") == "oom_killed":
            warned = e.get("warned_seconds_before")
            line += f"  victim {e.get('victim')}[{e.get('pid')}]  warned " + (
                f"{warned:.1f}s before" if isinstance(warned, int | float) else "never"
            )
        elif isinstance(e.get("usage_percent"), int | float):
            line += f"  {e['usage_percent']:.1f}%  {e.get('rule') or ''}"
        parts.append(Text(line))
    parts.append(Text("keys: s sort  r reverse  / filter  c clear  q quit", style="dim"))
    return Group(*parts)


@dataclass
class _Shared:
    state: dict[str, Any] | None = None
    error: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


def _reader(url: str, shared: _Shared, wake_w: int, stop: threading.Event) -> None:
    generation: int | None = None
    while not stop.is_set():
        query = "" if generation is None else f"?after={generation}&wait={WAIT_S:g}"
        try:
            got = httpget.get(
                url + query, deadline_s=WAIT_S + 10, max_bytes=MAX_BYTES, trust_env=False
            )
            import json  # noqa: PLC0415

            doc = json.loads(got.body)
            if not isinstance(doc, dict) or not isinstance(doc.get("targets"), list):
                raise ValueError("not a pressured state (no targets list)")
        except (HttpGetError, ValueError) as exc:
            with shared.lock:
                shared.error = str(exc)
            with contextlib.suppress(OSError):
                os.write(wake_w, b"e")
            stop.wait(2.0)  # the daemon is away: ask again, without hammering it
            continue
        generation = doc.get("generation") if isinstance(doc.get("generation"), int) else None
        with shared.lock:
            shared.state, shared.error = doc, None
        with contextlib.suppress(OSError):
            os.write(wake_w, b"s")
        stop.wait(COALESCE_S)


@contextlib.contextmanager
def _raw_keys(fd: int) -> Iterator[None]:
    """Keys one by one, unechoed (cbreak); the terminal as it was afterwards."""
    old = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, old)


def run_top(base_url: str) -> int:
    """Show the daemon whose metrics port is at ``base_url`` until ``q``; an exit code."""
    from rich.console import Console  # noqa: PLC0415
    from rich.live import Live  # noqa: PLC0415

    from pressured.daemon.state import STATE_PATH  # noqa: PLC0415

    url = base_url.rstrip("/") + STATE_PATH

    try:
        stdin = sys.stdin.fileno()
    except (OSError, ValueError):  # io.UnsupportedOperation: not a file at all
        stdin = -1
    if stdin < 0 or not os.isatty(stdin):
        raise OSError("pressured top needs a terminal (stdin is not one)")
    shared = _Shared()
    view = View()
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    stop = threading.Event()
    reader = threading.Thread(
        target=_reader, args=(url, shared, wake_w, stop), name="pressured-top", daemon=True
    )
    reader.start()
    console = Console()

    def resized(_signum: int, _frame: object) -> None:
        with contextlib.suppress(OSError):
            os.write(wake_w, b"w")

    old_winch = signal.signal(signal.SIGWINCH, resized)
    try:
        with (
            _raw_keys(stdin),
            Live(
                render(None, view, None), console=console, auto_refresh=False, screen=True
            ) as live,
        ):
            while not view.quit:
                ready, _, _ = select.select([stdin, wake_r], [], [])
                if wake_r in ready:
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_r, 4096)
                if stdin in ready:
                    for ch in os.read(stdin, 64).decode(errors="replace"):
                        view.key(ch)
                with shared.lock:
                    state, error = shared.state, shared.error
                live.update(render(state, view, error), refresh=True)
    except KeyboardInterrupt:
        pass  # Ctrl-C leaves as q does
    finally:
        signal.signal(signal.SIGWINCH, old_winch)
        stop.set()
        os.close(wake_r)
        os.close(wake_w)
    return 0
