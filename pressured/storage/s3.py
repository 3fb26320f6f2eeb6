"""S3 (and S3-compatible) storage through boto3.

Credentials are never part of the configuration: the client uses boto3's default chain, in its
order: environment (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``), the
shared files, web identity (IRSA on EKS: ``AWS_ROLE_ARN`` + ``AWS_WEB_IDENTITY_TOKEN_FILE``),
container credentials (EKS Pod Identity / ECS: ``AWS_CONTAINER_CREDENTIALS_FULL_URI``) and
finally the instance metadata service. Nothing here logs the client, its config or its
credentials; botocore's own DEBUG records carry the session token (request headers, STS replies),
so a redacting filter is put on botocore's loggers when the client is built.

A write streams: bytes are buffered up to ``part_size`` and sent as one multipart part, so the
memory of a 10 GiB heap dump is O(part_size), not O(object). Objects smaller than one part go
in a single PutObject. A failed or aborted multipart upload is aborted on the server so no
orphaned parts keep costing storage.
"""

from __future__ import annotations

import io
import logging
import re
import threading
from collections.abc import Callable, Iterator
from typing import IO, Any

from pressured.errors import StorageError, quote
from pressured.storage.base import Destination, Storage, Writer, validate_key

log = logging.getLogger("pressured.storage.s3")

MIB = 1024 * 1024
# S3 refuses parts under 5 MiB except the last one (AWS "Amazon S3 multipart upload limits").
MIN_PART_SIZE = 5 * MIB
DEFAULT_PART_SIZE = 8 * MIB
MAX_PARTS = 10_000

# What botocore writes at DEBUG that is a credential: the session token in signed request
# headers and canonical requests, and the secret/token in STS and container-credential replies.
# (These are the names of secrets to mask, not secrets.)
_SECRET_NAMES = "|".join(
    (
        r"x-amz-security-token",
        r"(?:aws_)?secret_access_key",
        r"(?:aws_)?session_token",
        r"secretaccesskey",
        r"sessiontoken",
        r"\"token\"",
    )
)
_KEY_VALUE = re.compile(
    rf"(?i)({_SECRET_NAMES})(['\"]?\s*[:=]\s*b?['\"]?)([^\s'\",&<>]+)",
)
_XML_ELEMENT = re.compile(r"(?i)(<(SecretAccessKey|SessionToken|Token)>)[^<]*(</)")
REDACTED = "<redacted>"


def redact(text: str) -> str:
    """Mask credential values in ``text`` (log lines, error messages)."""
    text = _XML_ELEMENT.sub(rf"\1{REDACTED}\3", text)
    return _KEY_VALUE.sub(rf"\1\2{REDACTED}", text)


class _RedactCredentials(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken record is the logging module's problem, not ours
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg = cleaned
            record.args = None
        return True


_REDACTOR = _RedactCredentials()
# A logger's filters see only records created on that very logger, not its children's, so the
# filter goes on each logger that emits request or response dumps (botocore 1.3x).
_CHATTY_LOGGERS = (
    "botocore.auth",
    "botocore.awsrequest",
    "botocore.credentials",
    "botocore.endpoint",
    "botocore.handlers",
    "botocore.hooks",
    "botocore.httpsession",
    "botocore.parsers",
    "botocore.retries.standard",
    "botocore.retryhandler",
    "botocore.utils",
    "urllib3.connectionpool",
)
_CHATTY_PREFIXES = ("boto3", "botocore", "s3transfer", "urllib3")


def install_log_redaction() -> None:
    """Put the credential-redacting filter on botocore's loggers (idempotent)."""
    names = set(_CHATTY_LOGGERS) | set(_CHATTY_PREFIXES)
    names.update(
        name
        for name in list(logging.root.manager.loggerDict)
        if name.split(".", 1)[0] in _CHATTY_PREFIXES
    )
    for name in names:
        logging.getLogger(name).addFilter(_REDACTOR)


_DESCRIBE_LIMIT = 200
"""Characters of an object's s3:// URL an error message shows whole."""


def _join(prefix: str, key: str) -> str:
    return f"{prefix}/{key}" if prefix else key


class _BodyReader(io.RawIOBase):
    """A GetObject body whose read errors come out as StorageError."""

    def __init__(self, body: Any, describe: Callable[[BaseException], StorageError]) -> None:
        self._body = body
        self._describe = describe

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        from botocore.exceptions import BotoCoreError  # noqa: PLC0415

        try:
            data: bytes = self._body.read(len(buffer))
        except (BotoCoreError, OSError) as exc:
            raise self._describe(exc) from exc
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


class S3Writer(Writer):
    """Streaming multipart upload; only the part ETags are kept between parts."""

    def __init__(self, storage: S3Storage, key: str) -> None:
        self._storage = storage
        self._key = key
        self._object_key = storage.object_key(key)
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._done = False

    def _call(self, operation: str, **kwargs: Any) -> Any:
        return self._storage._call(operation, self._key, Bucket=self._storage.bucket, **kwargs)

    def _send_part(self, size: int) -> None:
        if self._upload_id is None:
            reply = self._call("create_multipart_upload", Key=self._object_key)
            self._upload_id = str(reply["UploadId"])
        number = len(self._parts) + 1
        if number > MAX_PARTS:
            raise StorageError(
                f"{self._storage.describe(self._key)}: more than {MAX_PARTS} parts of "
                f"{self._storage.part_size} bytes; raise part_size"
            )
        with memoryview(self._buffer) as view:
            body = bytes(view[:size])
        # Drop the buffered copy before the upload so at most one part is held twice.
        del self._buffer[:size]
        reply = self._call(
            "upload_part",
            Key=self._object_key,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=body,
        )
        self._parts.append({"ETag": reply["ETag"], "PartNumber": number})

    def write(self, data: bytes) -> int:
        if self._done:
            raise StorageError(f"{self._storage.describe(self._key)}: write to a closed writer")
        self._buffer += data
        part_size = self._storage.part_size
        try:
            while len(self._buffer) >= part_size:
                self._send_part(part_size)
        except BaseException:
            self.abort()
            raise
        return len(data)

    def close(self) -> None:
        if self._done:
            return
        try:
            if self._upload_id is None:
                self._call("put_object", Key=self._object_key, Body=bytes(self._buffer))
            else:
                if self._buffer:
                    self._send_part(len(self._buffer))
                self._call(
                    "complete_multipart_upload",
                    Key=self._object_key,
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": self._parts},
                )
        except BaseException:
            self.abort()
            raise
        self._done = True
        self._buffer = bytearray()
        self._parts = []

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._buffer = bytearray()
        self._parts = []
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is None:
            return
        try:
            self._call("abort_multipart_upload", Key=self._object_key, UploadId=upload_id)
        except StorageError as exc:
            # The bucket's lifecycle rule (AbortIncompleteMultipartUpload) is the backstop.
            log.warning("%s (upload %s left for the bucket lifecycle to expire)", exc, upload_id)


class S3Storage(Storage):
    """Objects in ``bucket`` under ``prefix``; see the module docstring for credentials.

    ``endpoint_url`` and ``path_style`` serve S3-compatible stores (MinIO, Ceph RGW, R2).
    ``client`` injects a ready boto3 S3 client; otherwise one is built on first use.
    """

    name = "s3"

    def __init__(
        self,
        bucket: str,
        *,
        region: str | None = None,
        prefix: str = "",
        endpoint_url: str | None = None,
        path_style: bool = False,
        part_size: int = DEFAULT_PART_SIZE,
        client: Any = None,
        max_attempts: int = 3,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size {part_size} is below the S3 minimum of {MIN_PART_SIZE}")
        prefix = prefix.strip("/")
        if prefix:
            validate_key(prefix)
        self.bucket = bucket
        self.region = region
        self.prefix = prefix
        self.endpoint_url = endpoint_url
        self.path_style = path_style
        self.part_size = part_size
        self.max_attempts = max_attempts
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._client = client
        self._client_lock = threading.Lock()

    def __repr__(self) -> str:
        # Deliberately without the client: its repr leads to the session and its credentials.
        return (
            f"S3Storage(bucket={self.bucket!r}, prefix={self.prefix!r}, "
            f"region={self.region!r}, endpoint_url={self.endpoint_url!r})"
        )

    def destination(self) -> Destination:
        return Destination(
            "s3",
            {"bucket": self.bucket, "prefix": self.prefix, "endpoint_url": self.endpoint_url},
            {"region": self.region, "path_style": self.path_style},
        )

    def object_key(self, key: str) -> str:
        return _join(self.prefix, validate_key(key))

    def describe(self, key: str) -> str:
        where = f"s3://{self.bucket}/{_join(self.prefix, key)}"
        return where if len(where) <= _DESCRIBE_LIMIT else quote(where, _DESCRIBE_LIMIT)

    @property
    def client(self) -> Any:
        with self._client_lock:
            if self._client is None:
                self._client = self._build_client()
            return self._client

    def _build_client(self) -> Any:
        try:
            import boto3.session  # noqa: PLC0415
            from botocore.config import Config  # noqa: PLC0415
            from botocore.exceptions import BotoCoreError  # noqa: PLC0415
        except ImportError as exc:
            raise StorageError("s3: boto3 is not installed (install pressured[s3])") from exc
        install_log_redaction()
        options: dict[str, Any] = {
            "retries": {"mode": "standard", "total_max_attempts": self.max_attempts},
            "connect_timeout": self.connect_timeout,
            "read_timeout": self.read_timeout,
        }
        if self.path_style:
            options["s3"] = {"addressing_style": "path"}
        try:
            session = boto3.session.Session()
            client = session.client(
                "s3",
                region_name=self.region,
                endpoint_url=self.endpoint_url,
                config=Config(**options),
            )
        except (BotoCoreError, ValueError) as exc:
            raise StorageError(
                f"s3: cannot create a client for bucket {quote(self.bucket)} "
                f"(endpoint {self.endpoint_url or 'default'}): {redact(str(exc))}"
            ) from exc
        install_log_redaction()  # loggers created while the client was built
        return client

    def _error(self, operation: str, key: str, exc: BaseException) -> StorageError:
        from botocore.exceptions import ClientError  # noqa: PLC0415

        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
            reason = f"{error.get('Code', 'error')} (HTTP {status}): {error.get('Message', '')}"
        else:
            reason = f"{type(exc).__name__}: {exc}"
        return StorageError(f"{self.describe(key)}: {operation} failed: {redact(reason)}")

    def _call(self, operation: str, key: str, **kwargs: Any) -> Any:
        from boto3.exceptions import Boto3Error  # noqa: PLC0415
        from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

        method = getattr(self.client, operation)
        try:
            return method(**kwargs)
        # Boto3Error: the managed transfers (copy) raise S3TransferFailedError and kin.
        except (BotoCoreError, ClientError, Boto3Error) as exc:
            raise self._error(operation, key, exc) from exc

    def open_write(self, key: str) -> Writer:
        validate_key(key)
        return S3Writer(self, key)

    def open_read(self, key: str) -> IO[bytes]:
        reply = self._call("get_object", key, Bucket=self.bucket, Key=self.object_key(key))
        raw = _BodyReader(reply["Body"], lambda exc: self._error("read", key, exc))
        return io.BufferedReader(raw, buffer_size=1 * MIB)

    def exists(self, key: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

        try:
            self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise self._error("head_object", key, exc) from exc
        except BotoCoreError as exc:
            raise self._error("head_object", key, exc) from exc
        return True

    def remove(self, key: str) -> None:
        """Delete ``key``; S3 answers success for a key that is not there, and so do we."""
        self._call("delete_object", key, Bucket=self.bucket, Key=self.object_key(key))

    def rename(self, src: str, dst: str) -> None:
        """Server-side copy then delete (S3 has no rename); works past CopyObject's 5 GiB."""
        from boto3.s3.transfer import TransferConfig  # noqa: PLC0415

        source = {"Bucket": self.bucket, "Key": self.object_key(src)}
        self._call(
            "copy",
            src,
            CopySource=source,
            Bucket=self.bucket,
            Key=self.object_key(dst),
            # One thread: the daemon should not fan out behind a rename.
            Config=TransferConfig(use_threads=False, multipart_chunksize=self.part_size),
        )
        self.remove(src)

    def list(self, prefix: str = "") -> Iterator[str]:
        from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        strip = len(self.prefix) + 1 if self.prefix else 0
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=full
        )
        try:
            for page in pages:
                for item in page.get("Contents", ()):
                    yield str(item["Key"])[strip:]
        except (BotoCoreError, ClientError) as exc:
            raise self._error("list_objects_v2", prefix or "", exc) from exc

    def close(self) -> None:
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None and hasattr(client, "close"):
            client.close()
