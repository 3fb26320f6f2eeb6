"""Kernel-facing readers and the Watcher. Every root (cgroup, proc, kmsg, tracefs) is a
parameter."""
