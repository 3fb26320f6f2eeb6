"""What the live views cost the daemon: its /v1/state answer for many targets (the growth fits,
the JSON), what each sample adds to the loop, and one reading of its own cgroup.

N targets with FIT_POINTS readings each, built in this process; the answer is timed cold
(every target read since the last answer: every fit redone) and warm (nothing read since:
the answer of that generation is reused), over HTTP through the daemon's own server. Also the
start-up cost of listing the kill journal's kills again: a journal written to its bound
(kills/journal.py MAX_BYTES) read and seeded. Prints one JSON object.

    python bench/live_state.py [--targets 1000] [--rounds 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import httpx

from pressured.daemon.selfwatch import SelfWatch
from pressured.daemon.state import FIT_POINTS, STATE_PATH, LiveState
from pressured.kills.journal import MAX_BYTES, KillJournal, read_kills
from pressured.metrics import Metrics, start_http
from pressured.model import Identity, OomKill, Psi, Sample

MiB = 1024 * 1024


def ms(values: list[float]) -> dict[str, float]:
    s = sorted(values)
    return {
        "median_ms": round(statistics.median(s) * 1000, 3),
        "p99_ms": round(s[min(len(s) - 1, round(0.99 * (len(s) - 1)))] * 1000, 3),
    }


def feed(live: LiveState, n: int, t: float) -> None:
    for i in range(n):
        value = (100 + i % 50) * MiB + int(t * 1000)
        sample = Sample(f"k{i}", t, value, value, 1024 * MiB, memory_psi=Psi())
        ident = Identity(namespace="ns", pod_name=f"pod-{i}", container_name="app")
        live.sample(f"k{i}", f"/kubepods/pod{i}/c", ident, sample, value=value, severity="ok")


def seed_full_journal(rounds: int = 20) -> dict[str, float]:
    """A journal at its bound (the last append before the rewrite to its newer half), read
    and seeded into a new LiveState, as the daemon does at start."""
    with tempfile.TemporaryDirectory() as tmp:
        journal = KillJournal(tmp, boot="bench")
        ident = Identity(namespace="shop", pod_name="cart-1", container_name="app")
        kill = OomKill(1.7e9, "/kubepods/burstable/podU/c1", 4242, "java", 1, ("kmsg",), 3.5,
                       identity=ident, extra={"limit_scope": "container"})  # fmt: skip
        journal.append(kill)
        for _ in range(MAX_BYTES // os.path.getsize(journal.path) - 1):
            journal.append(kill)
        lines = len(read_kills(tmp, every_boot=True))
        took: list[float] = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            LiveState("bench").seed_kills(read_kills(tmp, every_boot=True))
            took.append(time.perf_counter() - t0)
        return {**ms(took), "journal_bytes": os.path.getsize(journal.path), "kills": lines}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--targets", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    live = LiveState("bench-node")
    for k in range(FIT_POINTS):
        feed(live, args.targets, float(k))
    per_sample: list[float] = []
    cold: list[float] = []
    warm: list[float] = []
    size = 0
    with (
        start_http(
            Metrics(node="bench").registry, "127.0.0.1", 0, routes={STATE_PATH: live.route}
        ) as srv,
        httpx.Client(base_url=f"http://127.0.0.1:{srv.port}", trust_env=False) as client,
    ):
        for r in range(args.rounds):
            t0 = time.perf_counter()
            feed(live, args.targets, float(FIT_POINTS + r))
            per_sample.append((time.perf_counter() - t0) / args.targets)
            live.turn()  # the loop's turn ends: a new generation, the cached answer is old
            t0 = time.perf_counter()
            body = client.get(STATE_PATH).content
            cold.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            client.get(STATE_PATH)
            warm.append(time.perf_counter() - t0)
            size = len(body)
    own = SelfWatch(degraded_percent=85, shed_percent=90, clock=time.monotonic)
    reads: list[float] = []
    for i in range(200):
        t0 = time.perf_counter()
        own.observe(float(i), force=True)
        reads.append(time.perf_counter() - t0)
    print(
        json.dumps(
            {
                "targets": args.targets,
                "fit_points": FIT_POINTS,
                "state_answer_cold": ms(cold),
                "state_answer_warm": ms(warm),
                "state_bytes": size,
                "loop_cost_per_sample_us": round(statistics.median(per_sample) * 1e6, 2),
                "self_reading": {**ms(reads), "cgroup": own.cgroup},
                "seed_full_journal": seed_full_journal(),
            }
        )
    )


if __name__ == "__main__":
    main()
