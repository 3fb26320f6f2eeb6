"""The OOM-risk metric on real workloads in real v1 memory cgroups of this host, watched by
`pressured run` with its defaults (metric unreclaimable): page cache alone and a page-cache
thrash are not warned (the thrash is reported as pressure), anonymous, shmem, mixed and kernel
memory growth are warned before the kernel kills, and every kill was warned first."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.cgroups import Child
from tests.support.oom_risk import SCENARIOS
from tests.support.oom_risk_checks import run

pytestmark = pytest.mark.kernel


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_oom_risk_workload(
    name: str, make_cgroup: Callable[[int | None], Child], tmp_path: Path
) -> None:
    # tmp_path is on this host's disk (ext4): its page cache is real and refaults
    run(name, make_cgroup, tmp_path, str(tmp_path))
