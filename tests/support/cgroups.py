"""The kernel tests use the package's own child-cgroup helper (pressured.demo.child)."""

from pressured.demo.child import Child, child_cgroup, leaker_argv, own_memory_cgroup

__all__ = ["Child", "child_cgroup", "leaker_argv", "own_memory_cgroup"]
