"""Profiles from where they are: a file or an http(s) URL (a /debug/pprof/heap endpoint).

    profile = open_profile("http://10.0.0.7:6060/debug/pprof/heap", timeout_s=30)

A URL is read through pressured.httpget: one deadline for the whole download, a gzip body
inflated as it arrives, under the size cap.
"""

from __future__ import annotations

from pressured import httpget
from pressured.errors import HttpGetError, PprofError
from pressured.pprof.decode import MAX_PROFILE_BYTES, Profile, load_profile


def read_source(
    source: str, *, timeout_s: float = 30.0, max_bytes: int = MAX_PROFILE_BYTES
) -> bytes:
    """The bytes of a profile file or http(s) URL; PprofError naming the source on failure.

    A URL must answer 200 within ``timeout_s`` for the whole download; a gzip body is inflated
    as it arrives (pressured.httpget), so neither it nor what it inflates to exceeds ``max_bytes``
    in memory.
    """
    if source.startswith(("http://", "https://")):
        try:
            return httpget.get(
                source,
                deadline_s=timeout_s,
                max_bytes=max_bytes,
                gunzip="auto",
                follow_redirects=True,
            ).body
        except HttpGetError as exc:
            raise PprofError(str(exc)) from exc
    try:
        with open(source, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise PprofError(f"{source}: cannot read: {exc.strerror or exc}") from exc
    if len(data) > max_bytes:
        raise PprofError(f"{source}: more than {max_bytes} bytes; refused")
    return data


def open_profile(source: str, *, timeout_s: float = 30.0) -> Profile:
    """``load_profile`` of a file path or an http(s) URL (e.g. a /debug/pprof/heap endpoint).

    In this process, without limits: for profiles you trust. The CLI and the heapdump action
    read with ``read_source`` and analyse with pressured.pprof.worker.run_top.
    """
    return load_profile(read_source(source, timeout_s=timeout_s), source)
