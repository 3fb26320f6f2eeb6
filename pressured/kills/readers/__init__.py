"""The kernel's own reports of OOM kills, one reader per interface: ``kmsg`` (/dev/kmsg, its
records parsed by ``kmsg_parse``), ``tracepoint`` (oom:mark_victim through perf_event_open)
and ``bcc`` (a BPF program through bcc). Each yields :class:`~pressured.model.KillRecord`."""
