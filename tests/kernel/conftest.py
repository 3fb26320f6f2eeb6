"""Kernel tests: real cgroups on this host. Skipped, with the reason, only where no writable
memory cgroup exists (not root, or no memory controller)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator

import pytest

from tests.support.cgroups import Child, own_memory_cgroup

_counter = itertools.count()


@pytest.fixture
def make_cgroup() -> Iterator[Callable[[int | None], Child]]:
    base, why = own_memory_cgroup()
    if base is None:
        pytest.skip(f"no writable memory cgroup here: {why}")
    made: list[Child] = []

    def make(limit_bytes: int | None) -> Child:
        child = Child(f"pressured-test-{os.getpid()}-{next(_counter)}", limit_bytes)
        made.append(child)
        return child

    try:
        yield make
    finally:
        for child in made:
            child.remove()
