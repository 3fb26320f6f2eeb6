"""The OOM-risk metric on real workloads in real cgroup v2 cgroups of the guest (memory.stat's
anon, file, shmem, kernel, ...), watched by `pressured run` with its defaults: the same
scenarios and checks as tests/kernel/test_oom_risk_kernel.py on the host's v1."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pressured.demo.child import Child
from tests.support.oom_risk import SCENARIOS
from tests.support.oom_risk_checks import run
from tests.vm.conftest import EXT4_MIB, ext4_mount

pytestmark = pytest.mark.vm


@pytest.fixture
def v2_cgroup() -> Iterator[Callable[[int | None], Child]]:
    made: list[Child] = []

    def make(limit: int | None) -> Child:
        c = Child(f"pressured-vm-risk-{os.getpid()}-{len(made)}", limit)
        assert c.v2, "the guest must be pure cgroup v2"
        made.append(c)
        return c

    yield make
    for c in made:
        c.remove()


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_oom_risk_workload_v2(
    name: str, v2_cgroup: Callable[[int | None], Child], tmp_path: Path
) -> None:
    data = Path(ext4_mount(EXT4_MIB)) / f"risk-{name}"
    data.mkdir(exist_ok=True)
    run(name, v2_cgroup, tmp_path, str(data))
