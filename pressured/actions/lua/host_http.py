"""The ``http`` host functions of a script: ``http.fetch``, ``http.download`` and
``http.stream`` (pressured.httpget over one httpx client shared by the scripts of an action).

Every request sends the given headers plus ``User-Agent: pressured/<version>``, must be done
within a deadline for the whole transfer, what is left of the script's time budget
(``opts.timeout_ms`` can only shorten it), and accepts only http:// and https:// URLs. In dry-run
mode only GET and HEAD requests are sent and ``http.download`` stores nothing. A failed transfer
is an answer (``{error=[, status=]}``, the message naming the URL), not a Lua error; a transfer
cut because the script's own time is up ends the script as its timeout.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pressured import __version__, httpget
from pressured.actions.lua.budget import PUSH_SLACK
from pressured.actions.lua.convert import as_text, estimate
from pressured.actions.lua.host import Host, HostAnswer, ScriptMistake, Timeout, log
from pressured.errors import HttpGetError

_CHUNK = 64 * 1024


class HttpApi:
    """The ``http`` table of one script."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.budget = host.budget

    def functions(self) -> dict[str, Callable[..., Any]]:
        """The host functions the prelude wraps, by name."""
        return {"fetch": self.fetch, "download": self.download, "stream": self.stream}

    def _request_args(self, args: tuple[Any, ...], what: str) -> tuple[str, str, dict[str, Any]]:
        if len(args) >= 2 and isinstance(args[1], bytes):
            method, url, opts = (
                as_text(args[0]).upper(),
                as_text(args[1]),
                self.host.opts(args[2] if len(args) > 2 else None, what),
            )
        elif args and isinstance(args[0], bytes):
            url = as_text(args[0])
            opts = self.host.opts(args[1] if len(args) > 1 else None, what)
            method = as_text(opts.get("method", b"GET")).upper()
        else:
            raise ScriptMistake(f"{what}: expected (url [, opts]) or (method, url [, opts])")
        return method, url, opts

    def _settings(self, opts: Mapping[str, Any], what: str) -> dict[str, Any]:
        """httpget keywords (headers, deadline_s, content, follow_redirects) from opts."""
        headers = {"User-Agent": f"pressured/{__version__}"}
        given = opts.get("headers")
        if given is not None:
            if not self.host.convert.is_table(given):
                raise ScriptMistake(f"{what}: opts.headers must be a table")
            for k, v in given.items():
                headers[as_text(k)] = as_text(v) if isinstance(v, bytes) else str(v)
        timeout_ms = opts.get("timeout_ms")
        remaining = self.budget.remaining()
        if remaining <= 0:
            raise Timeout
        deadline = remaining
        if timeout_ms is not None:
            if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int | float):
                raise ScriptMistake(f"{what}: opts.timeout_ms must be a number")
            deadline = min(deadline, max(float(timeout_ms), 1.0) / 1000)
        body = opts.get("body")
        if body is not None and not isinstance(body, bytes):
            body = str(body).encode()
        return {
            "headers": headers,
            "deadline_s": deadline,
            "content": body,
            "follow_redirects": opts.get("follow_redirects") is True,
            "client": self.host.owner.http(),
        }

    def _failed(self, exc: HttpGetError) -> HostAnswer:
        """The answer to a transfer that failed; a Timeout when the script's own time is up."""
        if isinstance(exc, httpget.DeadlineExceeded) and self.budget.expired():
            raise Timeout from exc
        values: dict[str, Any] = {"error": str(exc)}
        if exc.status is not None:
            values["status"] = exc.status
        return self.host.result(values)

    def _dry_request(self, url: str, method: str, what: str) -> HostAnswer | None:
        """Refuse a non-http URL; in dry-run mode, the answer to a request with side effects."""
        if not url.startswith(("http://", "https://")):
            raise ScriptMistake(f"{what}: only http:// and https:// URLs (got {url!r})")
        if self.host.owner.dry_run and method not in ("GET", "HEAD"):
            log.info("%s: dry run: %s %s not sent", self.host.script, method, url)
            return self.host.result({"error": f"dry run: {method} {url} not sent", "dry_run": True})
        return None

    def fetch(self, *args: Any) -> HostAnswer:
        def fetch() -> HostAnswer:
            method, url, opts = self._request_args(args, "http.fetch")
            dry = self._dry_request(url, method, "http.fetch")
            if dry is not None:
                return dry
            settings = self._settings(opts, "http.fetch")
            max_bytes = _positive(opts.get("max_bytes"), "http.fetch: opts.max_bytes")
            try:
                with httpget.stream(
                    url, method=method, max_bytes=max_bytes, statuses=None, **settings
                ) as reply:
                    body = bytearray()
                    for chunk in reply:
                        body += chunk
                        if self.budget.expired():
                            raise Timeout
                        if not self.budget.fits(len(body) + PUSH_SLACK):
                            return self.host.result(
                                {
                                    "error": f"response from {url} does not fit in memory_mb="
                                    f"{self.budget.memory_mb}",
                                    "status": reply.status,
                                }
                            )
                    return self.host.result(
                        {
                            "status": reply.status,
                            "body": bytes(body),
                            "headers": _headers(reply.headers),
                        }
                    )
            except HttpGetError as exc:
                return self._failed(exc)

        return self.host.guard(fetch)

    def download(self, *args: Any) -> HostAnswer:
        def download() -> HostAnswer:
            if len(args) < 2 or not isinstance(args[0], bytes) or not isinstance(args[1], bytes):
                raise ScriptMistake("http.download: expected (url, key [, opts])")
            url, key = as_text(args[0]), as_text(args[1])
            opts = self.host.opts(args[2] if len(args) > 2 else None, "http.download")
            method = as_text(opts.get("method", b"GET")).upper()
            dry = self._dry_request(url, method, "http.download")
            if dry is not None:
                return dry
            if self.host.owner.dry_run:
                log.info(
                    "%s: dry run: would download %s into storage key %r", self.host.script, url, key
                )
                return self.host.result({"status": 0, "bytes": 0, "dry_run": True})
            settings = self._settings(opts, "http.download")
            storage = self.host.owner.storage()
            try:
                with httpget.stream(
                    url, method=method, statuses=range(200, 300), **settings
                ) as reply:
                    writer = storage.open_write(key)
                    try:
                        for chunk in reply:
                            writer.write(chunk)
                            if self.budget.expired():
                                raise Timeout
                    except BaseException:
                        writer.abort()
                        raise
                    writer.close()
                    return self.host.result({"status": reply.status, "bytes": reply.received})
            except httpget.BadStatus as exc:
                return self.host.result({"status": exc.status, "error": f"{exc}; nothing stored"})
            except HttpGetError as exc:
                return self._failed(exc)

        return self.host.guard(download)

    def stream(self, url_arg: Any = None, callback: Any = None, opts_arg: Any = None) -> HostAnswer:
        def stream() -> HostAnswer:
            if not isinstance(url_arg, bytes):
                raise ScriptMistake("http.stream: expected (url, callback [, opts])")
            url = as_text(url_arg)
            opts = self.host.opts(opts_arg, "http.stream")
            method = as_text(opts.get("method", b"GET")).upper()
            dry = self._dry_request(url, method, "http.stream")
            if dry is not None:
                return dry
            settings = self._settings(opts, "http.stream")
            chunk_size = _positive(opts.get("chunk_size"), "http.stream: opts.chunk_size")
            try:
                with httpget.stream(
                    url,
                    method=method,
                    statuses=None,
                    chunk_size=chunk_size or _CHUNK,
                    **settings,
                ) as reply:
                    headers = _headers(reply.headers)
                    self.budget.reserve(estimate(headers))
                    lua_headers = self.host.convert.to_lua(headers)
                    total = 0
                    for chunk in reply:
                        total += len(chunk)
                        self.budget.reserve(len(chunk) + 256)
                        info = self.host.convert.to_lua(
                            {"status": reply.status, "bytes_so_far": total}
                        )
                        info[b"headers"] = lua_headers
                        try:
                            go_on = callback(chunk, info)
                        except Exception as exc:  # lupa's LuaError: the trampoline itself failed
                            if self.budget.expired():
                                raise Timeout from exc
                            raise ScriptMistake(f"http.stream: callback failed: {exc}") from exc
                        self.budget.settle()
                        if self.budget.expired():
                            raise Timeout
                        if go_on is not True:
                            break
                    return self.host.result({"status": reply.status, "bytes": total})
            except HttpGetError as exc:
                return self._failed(exc)

        return self.host.guard(stream)


def _positive(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ScriptMistake(f"{what} must be a positive number")
    return int(value)


def _headers(headers: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in headers.multi_items():
        key = name.lower()
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out
