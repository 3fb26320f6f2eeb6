"""`pressured demo`: a leaking app in a limited cgroup, watched by the real daemon.

A newcomer sees, in about half a minute: the warn and critical events, the app receiving
SIGUSR1 and SIGUSR2, and the kernel's OOM kill confirmed as an oom_killed event.

Its fixtures, which the kernel tests and the benchmarks use too:

- ``child``: child memory cgroups made by pressured itself (v1, v2, or v1 with a v2 PSI mirror)
- ``leaker``: the app, a process leaking memory at a set rate (``python -m pressured.demo.leaker``)

Nothing in the daemon imports this package. The configuration and the daemon are imported
only when the demo runs, so the leaker starts without them.
"""

from __future__ import annotations

import os
import sys
import time

from pressured.demo.child import Child, leaker_argv, own_memory_cgroup


class DemoUnavailable(Exception):
    """Why the demo cannot run on this machine."""


def run_demo(*, limit_mib: int = 128, rate_mib: float = 8.0) -> int:
    from pressured import config as config_mod  # noqa: PLC0415
    from pressured.daemon import Daemon  # noqa: PLC0415

    base, why = own_memory_cgroup()
    if base is None:
        raise DemoUnavailable(why)
    try:
        child = Child(f"pressured-demo-{os.getpid()}", limit_mib * 1024 * 1024)
    except OSError as exc:
        raise DemoUnavailable(f"cannot create a cgroup under {base}: {exc.strerror}") from exc
    app = None
    try:
        print(
            f"demo: cgroup {child.path} limited to {limit_mib} MiB; "
            f"an app leaks {rate_mib:g} MiB/s "
            "in it and handles SIGUSR1 (warn) and SIGUSR2 (critical).",
            flush=True,
        )
        print(
            "demo: pressured warns at 50%, acts at 75%, and confirms the kernel's OOM kill. "
            "Events are the JSON lines below.\n",
            flush=True,
        )
        cfg = config_mod.load(
            None,
            env={},
            flags={
                "source.cgroup.paths": [child.path],
                "source.machine": False,
                "thresholds.warn_percent": 50.0,
                "thresholds.critical_percent": 75.0,
                "thresholds.cooldown_seconds": 30.0,
                "thresholds.metric": "usage",
                "metrics.enabled": False,
                "log_level": "warning",
            },
        )
        cfg.data["actions"] = [
            {"type": "log"},
            {"type": "signal", "warn": "SIGUSR1", "critical": "SIGUSR2"},
        ]
        daemon = Daemon(cfg)
        app = child.spawn(
            leaker_argv(
                "--rate-mib",
                str(rate_mib),
                "--max-mib",
                str(limit_mib * 4),
                "--print-signals",
                "--start-after",
                "1",
            ),
            stdout=sys.stdout,
        )
        run_for = limit_mib / rate_mib + 12
        start = time.monotonic()
        daemon.run(run_for=run_for)
        status = app.poll()
        took = time.monotonic() - start
        if status == -9:
            print(
                f"\ndemo: the app was OOM-killed by the kernel after {took:.0f}s; "
                "pressured warned before it and confirmed the kill above.",
                flush=True,
            )
        else:
            print(
                f"\ndemo: the app did not get killed within {run_for:.0f}s (status {status}).",
                flush=True,
            )
        return 0
    finally:
        if app is not None and app.poll() is None:
            app.kill()
        child.remove()


__all__ = ["DemoUnavailable", "run_demo"]
