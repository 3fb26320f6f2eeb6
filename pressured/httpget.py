"""Bounded HTTP transfers: a streaming GET with a size cap, a deadline for the whole transfer,
and gzip inflated as it streams under a cap of its own.

    with httpget.stream(url, deadline_s=10, max_bytes=256 << 20, client=client) as reply:
        for chunk in reply:                     # the body, chunk by chunk, within every limit
            writer.write(chunk)
    got = httpget.get(url, deadline_s=30, max_bytes=1 << 30, gunzip="auto")  # the whole body

Every failure is an HttpGetError whose message starts with the method and the URL and says what
went wrong or which limit was exceeded (bad data is quoted by a short prefix, never whole):

- DeadlineExceeded: ``deadline_s`` bounds the whole transfer (connection, headers, every chunk),
  not each read. A monotonic deadline is checked between chunks, and httpx's timeouts are set to
  the time left when the request starts: a server that stalls is cut by those timeouts, one that
  trickles is cut at its first chunk after the deadline, so a call returns within twice
  ``deadline_s`` at worst, a little after ``deadline_s`` in the trickling case.
- TooLarge: ``max_bytes`` caps the body (after any Content-Encoding is decoded). A Content-Length
  above it is refused before anything is read; a body that grows past it is cut.
  ``max_inflated`` caps the output of ``gunzip`` (default: ``max_bytes``).
- BadStatus: a status outside ``statuses`` (default: 200 only; None accepts every status).
- BadBody: gzip data that is corrupt or truncated, a body that should be gzip and is not, a
  Content-Encoding other than gzip.
- TransferFailed: the transport failed (refused connection, reset, protocol error, a malformed
  URL); the message names the httpx error class.

gzip is inflated chunk by chunk (``zlib.decompressobj`` with ``max_length``): at most CHUNK_BYTES
are made per step and the inflation stops as soon as the output passes its cap, so a gzip bomb
costs no more memory than the cap plus a chunk. This applies to the body when asked
(``gunzip=True``: the body must be gzip; ``"auto"``: it is inflated when it starts with the gzip
magic, passed through otherwise) and to a reply sent with ``Content-Encoding: gzip``, the only
encoding asked for (``Accept-Encoding: gzip`` unless the caller's headers say otherwise).

httpx is imported on first use. Without a ``client`` each call makes its own and closes it.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Container, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from pressured.errors import HttpGetError

if TYPE_CHECKING:
    import httpx

CHUNK_BYTES = 64 * 1024
"""The most gzip inflation makes in one step."""
GZIP_MAGIC = b"\x1f\x8b"
PREFIX_BYTES = 32
"""How much of a bad value an error message quotes."""

Gunzip = bool | Literal["auto"]


class TransferFailed(HttpGetError):
    """The transport failed: no connection, a reset, a protocol error, a malformed URL."""


class DeadlineExceeded(HttpGetError):
    """The transfer was not done within its deadline."""


class BadStatus(HttpGetError):
    """A reply whose status is not one of those accepted."""


class TooLarge(HttpGetError):
    """A body (or its inflated form) above its cap."""


class BadBody(HttpGetError):
    """A body that cannot be decoded: bad gzip data, an unsupported Content-Encoding."""


@dataclass(frozen=True)
class Fetched:
    """A whole reply, as ``get`` returns it."""

    url: str
    status: int
    reason: str
    headers: httpx.Headers
    body: bytes


def get(url: str, **options: Any) -> Fetched:
    """The whole body of ``url``; ``options`` are those of ``stream``."""
    with stream(url, **options) as reply:
        body = b"".join(reply)
        return Fetched(url, reply.status, reply.reason, reply.headers, body)


def stream(
    url: str,
    *,
    deadline_s: float,
    max_bytes: int | None = None,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    content: bytes | None = None,
    statuses: Container[int] | None = (200,),
    gunzip: Gunzip = False,
    max_inflated: int | None = None,
    chunk_size: int | None = None,
    client: httpx.Client | None = None,
    follow_redirects: bool = False,
    trust_env: bool = True,
) -> Stream:
    """A reply to read chunk by chunk, within the limits; use it as a context manager.

    ``chunk_size`` makes every chunk but the last exactly that long (default: as they come,
    at most CHUNK_BYTES once inflated). ``trust_env`` (proxy variables) applies only to the
    client made when none is given.
    """
    return Stream(
        url,
        method=method.upper(),
        headers=headers,
        content=content,
        deadline_s=deadline_s,
        max_bytes=max_bytes,
        statuses=statuses,
        gunzip=gunzip,
        max_inflated=max_bytes if max_inflated is None else max_inflated,
        chunk_size=chunk_size,
        client=client,
        follow_redirects=follow_redirects,
        trust_env=trust_env,
    )


class Stream:
    """One transfer: the status and headers once entered, then the body by iteration."""

    def __init__(
        self,
        url: str,
        *,
        method: str,
        headers: Mapping[str, str] | None,
        content: bytes | None,
        deadline_s: float,
        max_bytes: int | None,
        statuses: Container[int] | None,
        gunzip: Gunzip,
        max_inflated: int | None,
        chunk_size: int | None,
        client: httpx.Client | None,
        follow_redirects: bool,
        trust_env: bool,
    ) -> None:
        if chunk_size is not None and chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive (got {chunk_size})")
        self.url = url
        self.method = method
        self.deadline_s = deadline_s
        self.max_bytes = max_bytes
        self.max_inflated = max_inflated
        self.received = 0
        """Bytes of body delivered so far (inflated when ``gunzip`` inflates)."""
        self._headers = dict(headers or {})
        self._content = content
        self._statuses = statuses
        self._gunzip = gunzip
        self._chunk_size = chunk_size
        self._client = client
        self._own_client: httpx.Client | None = None
        self._follow_redirects = follow_redirects
        self._trust_env = trust_env
        self._deadline = 0.0
        self._request: Any = None
        self._response: httpx.Response | None = None
        self._gzip_body = False

    # -- the reply ---------------------------------------------------------------------------
    @property
    def response(self) -> httpx.Response:
        if self._response is None:
            raise RuntimeError("httpget: the stream is not open (use it in a with statement)")
        return self._response

    @property
    def status(self) -> int:
        return self.response.status_code

    @property
    def reason(self) -> str:
        return self.response.reason_phrase

    @property
    def headers(self) -> httpx.Headers:
        return self.response.headers

    # -- opening and closing -----------------------------------------------------------------
    def __enter__(self) -> Stream:
        import httpx  # noqa: PLC0415 - heavy, and most callers never fetch anything

        self._deadline = time.monotonic() + self.deadline_s
        client = self._client
        if client is None:
            client = self._own_client = httpx.Client(trust_env=self._trust_env)
        headers = self._headers
        if not any(k.lower() == "accept-encoding" for k in headers):
            headers = {**headers, "Accept-Encoding": "gzip"}
        try:
            try:
                request = client.stream(
                    self.method,
                    self.url,
                    headers=headers,
                    content=self._content,
                    timeout=httpx.Timeout(self._left()),
                    follow_redirects=self._follow_redirects,
                )
                self._response = request.__enter__()
                self._request = request
            except httpx.TimeoutException as exc:
                raise self._timed_out(exc) from exc
            except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
                # ValueError: a header value httpx cannot encode, a URL it cannot parse
                raise self._error(TransferFailed, _transport(exc)) from exc
            self._check_reply()
        except BaseException:
            self._close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._close()

    def _close(self) -> None:
        request, self._request = self._request, None
        try:
            if request is not None:
                request.__exit__(None, None, None)
        finally:
            if self._own_client is not None:
                self._own_client.close()
                self._own_client = None

    def _check_reply(self) -> None:
        resp = self.response
        if self._statuses is not None and resp.status_code not in self._statuses:
            raise self._error(BadStatus, f"HTTP {resp.status_code} {resp.reason_phrase}".rstrip())
        encoding = resp.headers.get("content-encoding", "identity").strip().lower()
        if encoding in ("gzip", "x-gzip"):
            self._gzip_body = True
        elif encoding not in ("identity", ""):
            raise self._error(BadBody, f"Content-Encoding {_prefix(encoding)} is not supported")
        length = resp.headers.get("content-length", "")
        if (
            self.max_bytes is not None
            and self.method != "HEAD"  # the length of a body that is not sent
            and not self._gzip_body
            and length.isdigit()
            and int(length) > self.max_bytes
        ):
            raise self._error(
                TooLarge, f"Content-Length {length} is more than max_bytes={self.max_bytes}"
            )
        self._check_deadline()

    # -- the body ----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[bytes]:
        pieces = self._body()
        if self._gunzip:
            pieces = self._inflate_body(pieces)
        if self._chunk_size is not None:
            pieces = _rechunk(pieces, self._chunk_size)
        for piece in pieces:
            self._check_deadline()
            self.received += len(piece)
            yield piece

    def _wire(self) -> Iterator[bytes]:
        import httpx  # noqa: PLC0415

        raw = self.response.iter_raw()
        while True:
            self._check_deadline()
            try:
                chunk = next(raw)
            except StopIteration:
                return
            except httpx.TimeoutException as exc:
                raise self._timed_out(exc) from exc
            except httpx.HTTPError as exc:
                raise self._error(TransferFailed, _transport(exc)) from exc
            if chunk:
                yield chunk

    def _body(self) -> Iterator[bytes]:
        """The body with its Content-Encoding decoded, within max_bytes."""
        pieces = self._wire()
        if self._gzip_body:
            pieces = self._inflate(pieces, self.max_bytes, "max_bytes", "(Content-Encoding gzip)")
        size = 0
        for piece in pieces:
            size += len(piece)
            if self.max_bytes is not None and size > self.max_bytes:
                raise self._error(TooLarge, f"body is more than max_bytes={self.max_bytes} bytes")
            yield piece

    def _inflate_body(self, pieces: Iterator[bytes]) -> Iterator[bytes]:
        """The body inflated when ``gunzip`` asks for it (after a look at its first bytes)."""
        head = b""
        for piece in pieces:
            head += piece
            if len(head) >= len(GZIP_MAGIC):
                break
        if not head.startswith(GZIP_MAGIC):
            if self._gunzip is True:
                what = f"the body starts with {_prefix(head)}" if head else "the body is empty"
                raise self._error(BadBody, f"not gzip data ({what})")
            if head:
                yield head
            yield from pieces
            return
        yield from self._inflate(_prepend(head, pieces), self.max_inflated, "max_inflated", "")

    def _inflate(
        self, pieces: Iterator[bytes], cap: int | None, cap_name: str, note: str
    ) -> Iterator[bytes]:
        inflater = _Inflater(cap)
        note = f" {note}" if note else ""
        try:
            for piece in pieces:
                yield from inflater.feed(piece)
            inflater.finish()
        except _Overflow:
            raise self._error(
                TooLarge, f"body inflates to more than {cap_name}={cap} bytes{note}"
            ) from None
        except zlib.error as exc:
            raise self._error(BadBody, f"bad gzip data{note}: {exc}") from None
        except _Truncated:
            raise self._error(BadBody, f"bad gzip data{note}: truncated") from None

    # -- limits ------------------------------------------------------------------------------
    def _left(self) -> float:
        # httpx treats 0 as "fail at once"; a deadline already gone still gets a try at that
        return max(self._deadline - time.monotonic(), 0.001)

    def _check_deadline(self) -> None:
        if time.monotonic() > self._deadline:
            raise self._error(
                DeadlineExceeded,
                f"deadline of {self.deadline_s:g} s exceeded after {self.received} bytes",
            )

    def _timed_out(self, exc: Exception) -> HttpGetError:
        # httpx's timeouts are the time that was left: one firing means the deadline has passed
        return self._error(
            DeadlineExceeded,
            f"deadline of {self.deadline_s:g} s exceeded after {self.received} bytes "
            f"({_transport(exc)})",
        )

    def _error(self, cls: type[HttpGetError], detail: str) -> HttpGetError:
        status = self._response.status_code if self._response is not None else None
        return cls(self.method, self.url, detail, status=status)


# ------------------------------------------------------------------------------------------------
# gzip, inflated a step at a time


class _Overflow(Exception):
    pass


class _Truncated(Exception):
    pass


class _Inflater:
    """Inflates gzip data fed in pieces, making at most CHUNK_BYTES per step and never more than
    ``cap`` bytes in all (plus the one byte that shows the cap is passed).

    As Python's gzip module: members may follow one another, zero bytes may pad between them.
    """

    def __init__(self, cap: int | None) -> None:
        self.cap = cap
        self.out = 0
        self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._member_done = False
        self._fed = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        self._fed = self._fed or bool(data)
        while True:
            if self._member_done:
                data = data.lstrip(b"\0")
                if not data:
                    return
                self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
                self._member_done = False
            step = CHUNK_BYTES if self.cap is None else min(CHUNK_BYTES, self.cap - self.out + 1)
            piece = self._z.decompress(data, step)
            self.out += len(piece)
            if self.cap is not None and self.out > self.cap:
                raise _Overflow
            if piece:
                yield piece
            if self._z.eof:
                self._member_done = True
                data = self._z.unused_data
                continue
            data = self._z.unconsumed_tail
            if not data and len(piece) < step:
                return  # all input taken and no output held back

    def finish(self) -> None:
        """Raise _Truncated when the data stopped inside a member (no data at all is fine)."""
        if self._fed and not self._member_done:
            raise _Truncated


# ------------------------------------------------------------------------------------------------


def _rechunk(pieces: Iterator[bytes], size: int) -> Iterator[bytes]:
    buf = bytearray()
    for piece in pieces:
        buf += piece
        while len(buf) >= size:
            yield bytes(buf[:size])
            del buf[:size]
    if buf:
        yield bytes(buf)


def _prepend(head: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield head
    yield from rest


def _prefix(data: bytes | str) -> str:
    """A bad value as an error quotes it: its first PREFIX_BYTES bytes (or characters)."""
    if len(data) <= PREFIX_BYTES:
        return repr(data)
    return f"{data[:PREFIX_BYTES]!r}..."


def _transport(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc or 'failed'}"
