"""Kernel interfaces other than the kill readers (those are in pressured.kills.readers):
cgroupfs, procfs, the parsers of their files, the Watcher, child cgroups. Every root (cgroup,
proc) is a parameter."""
