"""The client side of HotSpot's attach protocol, run in a short-lived helper process.

HotSpot admits on its attach socket only a peer with its own effective uid and gid (it reads
SO_PEERCRED), and starts its attach listener only for an ``.attach_pid<pid>`` file owned by
its own effective uid. So this module runs as ``python -I -S -c <this file> --as UID GID ...``
(pressured.runtimes.jvm starts it) and, before anything else, takes on the JVM's uid and gid
(real, effective and saved; supplementary groups dropped). It is started with the daemon's
own rights and changes after exec, so the JVM's user needs no access to the interpreter or
to pressured's files; it uses the standard library only.

The protocol, as jcmd and jattach speak it on Linux:

1. The socket is ``/tmp/.java_pid<nspid>`` in the JVM's mount namespace; <nspid> is the JVM's
   pid in its own pid namespace (the last NSpid field of /proc/PID/status).
2. No socket yet: create ``.attach_pid<nspid>`` in the JVM's working directory (or its /tmp
   when that is not writable), send SIGQUIT, and wait for the socket; the JVM's signal thread
   sees the file and starts the listener. The file is removed afterwards. SIGQUIT goes through
   the pidfd the daemon passes (``--pidfd``, held since before it read /proc), so a JVM that
   exited meanwhile is signalled nowhere: never the process that took its pid (SIGQUIT would
   end it). Only with ``--pidfd -1`` (a kernel without pidfds) is it sent to the pid number.
3. Send ``1\\0`` (protocol version), the command and three arguments, each NUL-terminated:
   here ``jcmd\\0<diagnostic command line>\\0\\0\\0``.
4. The reply is a decimal result code on the first line (0: done), then the command's output,
   up to EOF.

The JVM's files are reached inside its mount namespace: a helper started as root first enters
it (setns), as jattach does, so that every path (/tmp, the socket, the heap dump) resolves in
the container, whatever symlinks the container holds. A helper that may not (not root) reaches
them through ``/proc/PID/root``, with the rights of the JVM's own user only.

Usage (argv after the source):

    --as UID GID --jvm PROC_ROOT PID NSPID [--pidfd FD] COMMAND...
    COMMAND: jcmd <timeout_s> <command line>   the reply on stdout, as sent
             take <path in the JVM>            the file on stdout, then unlinked
             remove <path in the JVM>          unlink, if it exists

On failure it prints one line to stderr and exits 2; the caller turns it into an error naming
the process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import stat
import sys
import time

CHUNK = 64 * 1024
EXIT_FAILED = 2


class AttachFailed(Exception):
    pass


CLONE_NEWNS = 0x00020000


def socket_path(proc_root: str, pid: int, nspid: int) -> str:
    """The attach socket of a JVM, as seen from outside its mount namespace."""
    return f"{proc_root}/{pid}/root/tmp/.java_pid{nspid}"


class Jvm:
    """Where the JVM's files are, from this helper: inside its mount namespace once entered,
    else through /proc/PID/root."""

    def __init__(self, proc_root: str, pid: int, nspid: int, pidfd: int | None = None) -> None:
        self.proc_root = proc_root
        self.pid = pid
        self.nspid = nspid
        self.pidfd = pidfd
        self.entered = False

    def quit(self) -> None:
        """SIGQUIT to the JVM: through its pidfd when there is one, else to its pid."""
        try:
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, signal.SIGQUIT)
            else:
                os.kill(self.pid, signal.SIGQUIT)
        except ProcessLookupError as exc:
            raise AttachFailed(f"pid {self.pid} is gone; no SIGQUIT sent") from exc

    def enter(self) -> None:
        """Enter the JVM's mount namespace when this helper may (root) and it is another."""
        ns = f"{self.proc_root}/{self.pid}/ns/mnt"
        if os.geteuid() != 0:
            return
        try:
            if os.stat(ns).st_ino == os.stat("/proc/self/ns/mnt").st_ino:
                self.entered = True  # the same one: its paths are ours
                return
            import ctypes  # noqa: PLC0415 - only when entering
            import ctypes.util  # noqa: PLC0415

            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            fd = os.open(ns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if libc.setns(fd, CLONE_NEWNS) != 0:
                    return  # no CAP_SYS_ADMIN: /proc/PID/root it is
            finally:
                os.close(fd)
        except OSError:
            return
        self.entered = True

    def path(self, inside: str) -> str:
        """``inside`` (an absolute path in the JVM's mount namespace) from here."""
        if self.entered:
            return inside
        root = f"{self.proc_root}/{self.pid}/root"
        if os.path.islink(f"{root}/tmp"):
            raise AttachFailed(f"{root}/tmp is a symbolic link: refused outside the container")
        return root + inside

    def trigger_dirs(self) -> list[str]:
        """Where HotSpot looks for .attach_pid: its working directory first, then /tmp."""
        if self.entered:
            return [f"/proc/{self.nspid}/cwd", "/tmp"]
        return [f"{self.proc_root}/{self.pid}/cwd", self.path("/tmp")]


def _socket_inode(path: str) -> int | None:
    """The inode of the socket at ``path``, None when there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino if stat.S_ISSOCK(st.st_mode) else None


def _make_trigger(jvm: Jvm) -> str:
    """The .attach_pid file, in the JVM's cwd first (where HotSpot looks first), else /tmp."""
    errors = []
    for directory in jvm.trigger_dirs():
        path = f"{directory}/.attach_pid{jvm.nspid}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            errors.append(f"{path}: {exc.strerror}")
            continue
        os.close(fd)
        return path
    raise AttachFailed("cannot create the attach trigger file: " + "; ".join(errors))


def connect(jvm: Jvm, timeout_s: float) -> socket.socket:
    """A connected attach socket, the listener started first when it is not running."""
    deadline = time.monotonic() + timeout_s
    path = jvm.path(f"/tmp/.java_pid{jvm.nspid}")
    stale = _socket_inode(path)
    if stale is not None:
        try:
            return _connect(path, deadline)
        except ConnectionRefusedError:
            # left by an earlier JVM with this pid (pid 1 of a restarted container whose /tmp
            # is a volume): this one starts its listener on a new socket in its place
            pass
    trigger = _make_trigger(jvm)
    try:
        jvm.quit()
        pause = 0.01
        # HotSpot has no notification to wait on: the socket appears when its signal thread
        # has started the listener (a few ms on an idle JVM)
        while _socket_inode(path) in (None, stale):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AttachFailed(
                    f"no attach socket {path} after SIGQUIT within {timeout_s:g} s (attach "
                    "disabled with -XX:+DisableAttachMechanism, or the JVM is hung)"
                )
            time.sleep(min(pause, left))
            pause = min(pause * 2, 0.2)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(trigger)
    try:
        return _connect(path, deadline)
    except ConnectionRefusedError as exc:
        raise AttachFailed(f"connect {path}: refused by the new listener") from exc


def _connect(path: str, deadline: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(max(0.001, deadline - time.monotonic()))
    try:
        sock.connect(path)
    except ConnectionRefusedError:
        sock.close()
        raise
    except OSError as exc:
        sock.close()
        raise AttachFailed(f"connect {path}: {exc.strerror or exc}") from exc
    return sock


def request(command: str, *args: str) -> bytes:
    parts = ["1", command, *args, *[""] * (3 - len(args))]
    return b"".join(p.encode() + b"\0" for p in parts)


def jcmd(jvm: Jvm, timeout_s: float, line: str) -> None:
    deadline = time.monotonic() + timeout_s
    sock = connect(jvm, timeout_s)
    with sock:
        sock.sendall(request("jcmd", line))
        out = sys.stdout.buffer
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AttachFailed(f"the JVM did not finish {line!r} within {timeout_s:g} s")
            sock.settimeout(left)
            try:
                chunk = sock.recv(CHUNK)
            except TimeoutError as exc:
                raise AttachFailed(
                    f"the JVM did not finish {line!r} within {timeout_s:g} s"
                ) from exc
            if not chunk:
                break
            out.write(chunk)
        out.flush()


def take(path: str) -> None:
    try:
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as f:
            out = sys.stdout.buffer
            while chunk := f.read(CHUNK):
                out.write(chunk)
            out.flush()
    except OSError as exc:
        raise AttachFailed(f"read {path}: {exc.strerror or exc}") from exc
    finally:
        remove(path)


def remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise AttachFailed(f"remove {path}: {exc.strerror or exc}") from exc


def become(uid: int, gid: int) -> None:
    """Take on ``uid``/``gid`` for good (a no-op when they are already ours)."""
    if (os.geteuid(), os.getegid()) == (uid, gid) and os.getuid() == uid:
        return
    try:
        if os.geteuid() == 0:
            os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    except OSError as exc:
        raise AttachFailed(
            f"cannot take on the JVM's uid {uid} gid {gid}: {exc.strerror} (needs root, or "
            "CAP_SETUID and CAP_SETGID, or to run as the JVM's user)"
        ) from exc


def main(argv: list[str]) -> int:
    try:
        if len(argv) < 9 or argv[0] != "--as" or argv[3] != "--jvm":
            raise AttachFailed(
                f"usage: --as UID GID --jvm PROC PID NSPID [--pidfd FD] COMMAND (got {argv!r})"
            )
        command = argv[7:]
        pidfd = None
        if command[0] == "--pidfd" and len(command) > 1:
            pidfd = int(command[1]) if int(command[1]) >= 0 else None
            command = command[2:]
        jvm = Jvm(argv[4], int(argv[5]), int(argv[6]), pidfd)
        jvm.enter()  # first, while root: setns needs CAP_SYS_ADMIN
        become(int(argv[1]), int(argv[2]))
        if len(command) == 3 and command[0] == "jcmd":
            jcmd(jvm, float(command[1]), command[2])
        elif len(command) == 2 and command[0] == "take":
            take(jvm.path(command[1]))
        elif len(command) == 2 and command[0] == "remove":
            remove(jvm.path(command[1]))
        else:
            raise AttachFailed(f"usage: jcmd|take|remove ... (got {command!r})")
    except (AttachFailed, OSError, ValueError) as exc:
        sys.stderr.write(f"{exc}\n")
        return EXIT_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
