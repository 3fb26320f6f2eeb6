"""Profile analysis in a separate process, bounded in time and memory.

    report = run_top(data, "heap.pb.gz", n=20, limits=Limits(seconds=5, memory_mib=512))
    report = run_diff(base, "heap-1.pb.gz", data, "heap-2.pb.gz")  # pressured.pprof.diff
    report.text        # the report of `go tool pprof -top`
    report.data        # TopResult.to_json(): plain data
    report.summary     # summarize_top(result, k=summary_k), for events
    report.warnings    # what was ignored as go tool pprof ignores it

A profile fetched from a pod is written by the pod's owner. Decoding it and computing top runs
here in a child process, so a profile built to be slow or big can neither stall the caller (the
daemon's action thread only waits on a pipe, without the GIL) nor exhaust its memory:

- the child sets its own limits before it reads a byte of the profile: RLIMIT_AS (the memory
  limit), RLIMIT_CPU (the time limit rounded up: a backstop should the parent be gone), no core
  files, and oom_score_adj 1000 so that when memory runs out the kernel's OOM killer takes it
  first, not the daemon (which lowers its own to -900, inherited here) nor a tenant's container;
  the limits are set by the child itself because preexec_fn is not safe in a threaded parent
  such as the daemon;
- its environment is the caller's reduced to what Python, the time zone and protobuf look at: a
  credential of the daemon's (storage keys, say) is not in the process that parses hostile data;
- the parent kills the child (SIGKILL) at the wall-clock deadline;
- the request travels as one JSON argument, the profile on stdin, the answer as one JSON object
  on stdout; any failure is a PprofError, e.g.
  "heap.pb.gz: profile analysis exceeded 5 s / 512 MiB: killed (out of memory)".

The child is ``python -P -c ...`` importing only pressured.pprof (decode, top, format; protobuf,
numpy, and re2 when the profile needs them): about 0.2 s of start-up. ``-P`` keeps the working
directory off sys.path; the package's own directory is appended to it, so the child runs the
caller's pressured even from a source tree that is not installed.

Running this module (``python -m pressured.pprof.worker --max-seconds S --max-memory-mib M
REQUEST``) is the child's side.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from pressured.errors import PprofError

EXIT_OUT_OF_MEMORY = 3
"""The child's exit status after a MemoryError (it writes nothing then: writing needs memory)."""
_STDERR_CHARS = 500


@dataclass(frozen=True)
class Limits:
    """What one analysis may use: wall-clock seconds (from the child's start) and address space."""

    seconds: float = 5.0
    memory_mib: int = 512

    def __post_init__(self) -> None:
        if not self.seconds > 0:
            raise ValueError(f"Limits.seconds must be positive (got {self.seconds!r})")
        if self.memory_mib < 1:
            raise ValueError(f"Limits.memory_mib must be at least 1 (got {self.memory_mib!r})")

    @property
    def cpu_seconds(self) -> int:
        return max(1, math.ceil(self.seconds))

    def __str__(self) -> str:
        return f"{self.seconds:g} s / {self.memory_mib} MiB"


DAEMON_LIMITS = Limits(seconds=5.0, memory_mib=512)
"""The heapdump action's default. Measured with bench/pprof_top.py's synthetic profiles, shaped
like a big Go service's: 21 MB (gzip, 560,000 samples) take about 3 s of CPU (decode 1.8, top
0.9) and fit in 512 MiB of address space (340 MiB resident at most); a diff reads two."""


class ProfileLimitError(PprofError):
    """The analysis was stopped at one of its limits (the profile may be fine, only too big)."""


@dataclass(frozen=True)
class TopReport:
    """pprof top of one profile, as plain data (what came back from the worker)."""

    data: dict[str, Any]
    text: str
    summary: list[dict[str, Any]]
    warnings: tuple[str, ...] = field(default=())


def run_top(
    data: bytes,
    source: str,
    *,
    sample_index: str | None = None,
    n: int = 20,
    sort_cum: bool = False,
    node_fraction: float = 0.0,
    summary_k: int = 3,
    limits: Limits = DAEMON_LIMITS,
) -> TopReport:
    """``top`` of the profile ``data`` (gzip or raw), computed in a bounded worker process.

    PprofError (naming ``source``) for a profile that is not one, an unknown sample index, a
    worker killed at a limit or dead for any other reason. The calling process is never at risk.
    """
    request = {
        "source": source,
        "sample_index": sample_index,
        "n": n,
        "sort_cum": sort_cum,
        "node_fraction": node_fraction,
        "summary_k": summary_k,
    }
    return _run(request, data, source, limits)


def run_diff(
    base: bytes,
    base_source: str,
    new: bytes,
    new_source: str,
    *,
    sample_index: str | None = None,
    n: int = 20,
    sort_cum: bool = False,
    node_fraction: float = 0.0,
    summary_k: int = 3,
    grown_only: bool = False,
    limits: Limits = DAEMON_LIMITS,
) -> TopReport:
    """``new`` minus ``base`` (pressured.pprof.diff) in a bounded worker process, as run_top.

    One worker for both profiles: the limits hold for the pair. ``grown_only``: the summary
    lists only functions whose flat value grew.
    """
    request = {
        "op": "diff",
        "source": new_source,
        "base_source": base_source,
        "base_bytes": len(base),
        "sample_index": sample_index,
        "n": n,
        "sort_cum": sort_cum,
        "node_fraction": node_fraction,
        "summary_k": summary_k,
        "grown_only": grown_only,
    }
    return _run(request, base + new, f"{base_source} -> {new_source}", limits)


def _run(request: dict[str, Any], data: bytes, source: str, limits: Limits) -> TopReport:
    import subprocess  # noqa: PLC0415 - the child does not need it

    cmd = [
        sys.executable,
        "-P",
        "-c",
        _BOOT,
        _package_root(),
        "--max-seconds",
        repr(limits.seconds),
        "--max-memory-mib",
        str(limits.memory_mib),
        json.dumps(request),
    ]
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd="/",
            env={**worker_env(), **_TUNING},
        )
    except OSError as exc:
        raise PprofError(f"{source}: profile analysis could not start: {exc}") from exc
    try:
        out, err = proc.communicate(data, timeout=limits.seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise ProfileLimitError(
            f"{source}: profile analysis exceeded {limits}: killed "
            f"(still running after {limits.seconds:g} s)"
        ) from None
    finally:
        if proc.poll() is None:  # interrupted (KeyboardInterrupt): never leave it running
            proc.kill()
            proc.wait()
        if proc.stdin is not None and not proc.stdin.closed:
            # killed while its input was still being written: the pipe is broken
            with contextlib.suppress(OSError):
                proc.stdin.close()
    return _reply(proc.returncode, out, err, source, limits)


def _reply(rc: int, out: bytes, err: bytes, source: str, limits: Limits) -> TopReport:
    import signal  # noqa: PLC0415

    if rc == EXIT_OUT_OF_MEMORY:
        raise ProfileLimitError(
            f"{source}: profile analysis exceeded {limits}: killed (out of memory)"
        )
    if rc == -signal.SIGXCPU:
        raise ProfileLimitError(
            f"{source}: profile analysis exceeded {limits}: killed "
            f"(out of CPU time: {limits.cpu_seconds} s)"
        )
    if rc < 0:
        name = signal.Signals(-rc).name if -rc in signal.valid_signals() else str(-rc)
        # SIGKILL from someone else: the CPU hard limit, or a cgroup's OOM killer
        raise PprofError(f"{source}: profile analysis failed: worker killed by {name} ({limits})")
    # the last line of what it printed: a traceback's exception
    lines = err.decode("utf-8", "replace").strip().splitlines()
    tail = lines[-1][-_STDERR_CHARS:] if lines else ""
    if rc != 0:
        raise PprofError(
            f"{source}: profile analysis failed: worker exited with status {rc}"
            + (f": {tail}" if tail else "")
        )
    try:
        reply = json.loads(out)
        if not reply["ok"]:
            raise PprofError(str(reply["error"]))
        return TopReport(
            data=dict(reply["data"]),
            text=str(reply["text"]),
            summary=list(reply["summary"]),
            warnings=tuple(str(w) for w in reply["warnings"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise PprofError(
            f"{source}: profile analysis failed: unreadable worker reply ({exc})"
            + (f": {tail}" if tail else "")
        ) from exc


_ENV_KEPT = frozenset(
    {
        "PATH",
        "TZ",  # the report's Time: line is in local time, as go tool pprof's
        "LANG",
        "LANGUAGE",
        "PYTHONPATH",
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONUTF8",
        "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION",
    }
)


_ONE_THREAD = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
_TUNING = {
    **dict.fromkeys(_ONE_THREAD, "1"),
    # glibc malloc keeps the memory of freed arrays for the next ones instead of returning it
    # and faulting it in again: a quarter of the CPU time on a 21 MB profile was page faults
    # (bench/pprof_top.py: 0.8 s of system time, 0.2 s with these). The worker is short-lived
    # and RLIMIT_AS still bounds it; its peak is unchanged.
    "MALLOC_MMAP_THRESHOLD_": str(1 << 30),
    "MALLOC_TRIM_THRESHOLD_": str(1 << 30),
}


def worker_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The worker's environment: ``environ`` (os.environ) less all but a few known names."""
    env = dict(os.environ if environ is None else environ)
    return {k: v for k, v in env.items() if k in _ENV_KEPT or k.startswith("LC_")}


def _package_root() -> str:
    import pressured  # noqa: PLC0415

    return os.path.dirname(os.path.dirname(os.path.abspath(pressured.__file__)))


# The child's first statements: only after them does it import pressured (from sys.path, or
# failing that from the caller's own tree, given as argv[1]).
_BOOT = (
    "import sys; sys.path.append(sys.argv.pop(1)); "
    "from pressured.pprof.worker import main; sys.exit(main(sys.argv[1:]))"
)


# --------------------------------------------------------------------------------------------
# the child


def main(argv: list[str]) -> int:
    """The worker: limits first, then the profile from stdin, the answer on stdout."""
    try:
        opts = dict(zip(argv[0:-1:2], argv[1:-1:2], strict=True))
        seconds = float(opts["--max-seconds"])
        memory_mib = int(opts["--max-memory-mib"])
        request = json.loads(argv[-1])
    except (ValueError, KeyError, IndexError) as exc:
        print(
            "usage: python -m pressured.pprof.worker --max-seconds S --max-memory-mib M REQUEST"
            f" ({exc})",
            file=sys.stderr,
        )
        return 2
    # One BLAS thread: numpy's OpenBLAS would otherwise reserve address space for a thread pool
    # per CPU at import (40 MiB on 2 CPUs, measured), counted against RLIMIT_AS; nothing here
    # uses BLAS.
    for name in _ONE_THREAD:
        os.environ[name] = "1"
    _set_limits(Limits(seconds, memory_mib))
    try:
        data = sys.stdin.buffer.read()
        reply = _analyze(data, request)
        del data
        text = json.dumps(reply)
    except MemoryError:
        os._exit(EXIT_OUT_OF_MEMORY)  # no clean-up: it could need the memory that is lacking
    sys.stdout.write(text)
    sys.stdout.flush()
    return 0


def _set_limits(limits: Limits) -> None:
    import resource  # noqa: PLC0415

    def lower(which: int, soft: int, hard: int) -> None:
        _, old_hard = resource.getrlimit(which)
        if old_hard != resource.RLIM_INFINITY:  # a limit can only be lowered
            soft, hard = min(soft, old_hard), min(hard, old_hard)
        resource.setrlimit(which, (soft, hard))

    lower(resource.RLIMIT_CORE, 0, 0)
    try:  # raising it needs no privilege
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass  # no /proc: nothing to be first in line for
    memory = limits.memory_mib << 20
    lower(resource.RLIMIT_AS, memory, memory)
    # past the soft limit SIGXCPU (reported as such), past the hard one SIGKILL
    lower(resource.RLIMIT_CPU, limits.cpu_seconds, limits.cpu_seconds + 1)


def _analyze(data: bytes, request: dict[str, Any]) -> dict[str, Any]:
    source = str(request.get("source", "profile"))
    try:
        from pressured.pprof.decode import load_profile  # noqa: PLC0415
        from pressured.pprof.format import format_top  # noqa: PLC0415
        from pressured.pprof.top import summarize_top, top  # noqa: PLC0415

        n = int(request.get("n", 20))
        sort_cum = bool(request.get("sort_cum", False))
        node_fraction = float(request.get("node_fraction", 0.0))
        if request.get("op") == "diff":
            from pressured.pprof.diff import diff, load_diff  # noqa: PLC0415

            split = int(request["base_bytes"])
            base_source = str(request.get("base_source", "base"))
            source = f"{base_source} -> {source}"
            base, new = load_diff(data[:split], base_source, data[split:], str(request["source"]))
            del data
            result = diff(
                base, new, request.get("sample_index"), n, sort_cum, node_fraction=node_fraction
            )
        else:
            profile = load_profile(data, source)
            del data
            result = top(
                profile, request.get("sample_index"), n, sort_cum, node_fraction=node_fraction
            )
        return {
            "ok": True,
            "data": result.to_json(),
            "text": format_top(result),
            "summary": summarize_top(
                result,
                k=int(request.get("summary_k", 3)),
                grown_only=bool(request.get("grown_only", False)),
            ),
            "warnings": list(result.profile.warnings),
        }
    except PprofError as exc:
        return {"ok": False, "error": str(exc)}
    except ImportError as exc:
        return {
            "ok": False,
            "error": f"{source}: reading profiles needs pressured[pprof] ({exc})",
        }
    except MemoryError:
        raise
    except Exception as exc:  # a defect here must still come back as an answer
        return {
            "ok": False,
            "error": f"{source}: profile analysis failed: {type(exc).__name__}: {exc}",
        }


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
