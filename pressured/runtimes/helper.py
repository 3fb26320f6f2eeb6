"""Short-lived helper processes: a child that takes on another identity (a JVM's uid and gid)
or enters another network namespace (a pod's, for its Node.js inspector) so that the daemon
itself never changes either.

A helper writes its result to stdout and, on failure, one line to stderr with exit status 2.
``run`` streams stdout to a sink within a deadline and a byte cap, and kills the helper
past either: what a target's runtime sends costs the daemon at most that.
"""

from __future__ import annotations

import os
import selectors
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence

from pressured.errors import ActionError

STDERR_KEEP = 4096
_CHUNK = 64 * 1024


class HelperFailed(ActionError):
    """The helper failed, timed out or sent more than allowed; the message says which."""


class TooLarge(HelperFailed):
    pass


def run(
    argv: Sequence[str],
    *,
    what: str,
    deadline_s: float,
    max_bytes: int,
    sink: Callable[[bytes], None],
    env: Mapping[str, str] | None = None,
    pass_fds: Sequence[int] = (),
) -> int:
    """Run ``argv``, give its stdout to ``sink`` chunk by chunk; the number of bytes given.

    The helper changes its own identity or namespace after exec (so it starts with this
    process's rights, whatever the target's user may read or run). It inherits no descriptor
    but ``pass_fds`` (a pidfd on its target) and its standard streams.
    """
    deadline = time.monotonic() + deadline_s
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            close_fds=True,
            pass_fds=tuple(pass_fds),
            cwd="/",
            env=env,
        )
    except OSError as exc:
        raise HelperFailed(f"{what}: cannot start a helper: {exc}") from exc
    try:
        received, err = _pump(proc, what, deadline_s, max_bytes, sink)
        code = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    if code != 0:
        message = err.decode("utf-8", "replace").strip().splitlines()
        reason = message[-1] if message else f"exit status {code}"
        raise HelperFailed(f"{what}: {reason}")
    return received


def _pump(
    proc: subprocess.Popen[bytes],
    what: str,
    deadline_s: float,
    max_bytes: int,
    sink: Callable[[bytes], None],
) -> tuple[int, bytes]:
    assert proc.stdout is not None
    assert proc.stderr is not None
    deadline = time.monotonic() + deadline_s
    received = 0
    err = bytearray()
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ, "out")
        sel.register(proc.stderr, selectors.EVENT_READ, "err")
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                raise HelperFailed(f"{what}: no answer within {deadline_s:g} s; helper killed")
            for key, _ in sel.select(left):
                chunk = os.read(key.fd, _CHUNK)
                if not chunk:
                    sel.unregister(key.fileobj)
                elif key.data == "err":
                    err += chunk[: max(0, STDERR_KEEP - len(err))]
                else:
                    received += len(chunk)
                    sink(chunk)  # first: a sink that caps its own part says so exactly
                    if received > max_bytes:
                        raise TooLarge(f"{what}: more than max_bytes {max_bytes}; aborted")
    return received, bytes(err)
