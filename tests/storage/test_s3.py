"""S3Storage through boto3 over real HTTP against moto's standalone server on loopback."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pressured.errors import StorageError
from pressured.storage.s3 import MIB, S3Storage, redact
from tests.storage.conftest import (
    ACCESS_KEY_ID,
    SECRET_ACCESS_KEY,
    SESSION_TOKEN,
    MotoServer,
    free_port,
    pattern,
)

PART = 5 * MIB  # the S3 minimum, to keep multipart tests small


def make_store(server: MotoServer, bucket: str, **kwargs: Any) -> S3Storage:
    kwargs.setdefault("part_size", PART)
    return S3Storage(bucket, region="us-east-1", endpoint_url=server.url, path_style=True, **kwargs)


def test_small_object_is_one_put_under_the_prefix(
    moto_server: MotoServer, bucket: str, s3_client: Any
) -> None:
    store = make_store(moto_server, bucket, prefix="/cluster-a/")
    store.write("heaps/x.pb.gz", b"small")

    head = s3_client.head_object(Bucket=bucket, Key="cluster-a/heaps/x.pb.gz")
    assert head["ContentLength"] == 5
    assert "-" not in head["ETag"]  # not multipart
    assert store.read("heaps/x.pb.gz") == b"small"
    assert store.exists("heaps/x.pb.gz")
    assert not store.exists("heaps/y.pb.gz")


def test_multipart_parts_arrive_in_order(
    moto_server: MotoServer, bucket: str, s3_client: Any
) -> None:
    data = pattern(2 * PART + 12345)
    store = make_store(moto_server, bucket)
    # Odd chunk sizes: part boundaries fall inside a write.
    chunks = (data[i : i + 777_777] for i in range(0, len(data), 777_777))
    assert store.write_stream("big", chunks) == len(data)

    head = s3_client.head_object(Bucket=bucket, Key="big")
    assert head["ContentLength"] == len(data)
    assert head["ETag"].strip('"').endswith("-3")
    with store.open_read("big") as f:
        assert f.read(10) == data[:10]
        assert f.read() == data[10:]


def test_exact_multiple_of_part_size_has_no_empty_part(
    moto_server: MotoServer, bucket: str, s3_client: Any
) -> None:
    store = make_store(moto_server, bucket)
    store.write("exact", pattern(2 * PART))
    assert s3_client.head_object(Bucket=bucket, Key="exact")["ETag"].strip('"').endswith("-2")
    assert store.read("exact") == pattern(2 * PART)


def test_abort_removes_the_multipart_upload(
    moto_server: MotoServer, bucket: str, s3_client: Any
) -> None:
    store = make_store(moto_server, bucket)
    writer = store.open_write("aborted")
    writer.write(pattern(PART + 1))  # one part is on the server now
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    writer.abort()

    assert not s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert not store.exists("aborted")


def test_failed_part_aborts_and_names_bucket_and_key(
    moto_server: MotoServer, bucket: str, s3_client: Any
) -> None:
    store = make_store(moto_server, bucket)
    writer = store.open_write("lost")
    writer.write(pattern(PART))
    upload = s3_client.list_multipart_uploads(Bucket=bucket)["Uploads"][0]
    # The server forgets the upload (as after an expiry): the next part must fail cleanly.
    s3_client.abort_multipart_upload(Bucket=bucket, Key="lost", UploadId=upload["UploadId"])

    # (moto answers 500 here where AWS says 404 NoSuchUpload; either is a failure.)
    with pytest.raises(StorageError, match=rf"s3://{bucket}/lost: upload_part failed"):
        writer.write(pattern(PART))
    with pytest.raises(StorageError, match="closed"):
        writer.write(b"x")
    assert not store.exists("lost")


def test_missing_bucket_and_key_are_storage_errors(moto_server: MotoServer, bucket: str) -> None:
    with pytest.raises(StorageError, match=r"s3://no-such-bucket-here/k: put_object failed"):
        make_store(moto_server, "no-such-bucket-here").write("k", b"x")
    with pytest.raises(StorageError, match=rf"s3://{bucket}/absent: get_object failed: NoSuchKey"):
        make_store(moto_server, bucket).read("absent")


def test_unreachable_endpoint_is_a_storage_error() -> None:
    store = S3Storage(
        "bucket-x", endpoint_url=f"http://127.0.0.1:{free_port()}", path_style=True,
        region="us-east-1", max_attempts=1,
    )  # fmt: skip
    with pytest.raises(
        StorageError, match=r"s3://bucket-x/k: put_object failed: .*connect"
    ) as info:
        store.write("k", b"x")
    assert info.value.__cause__ is not None


def test_list_remove_rename(moto_server: MotoServer, bucket: str, s3_client: Any) -> None:
    store = make_store(moto_server, bucket, prefix="p")
    s3_client.put_object(Bucket=bucket, Key="outside-the-prefix", Body=b"")
    s3_client.put_object(Bucket=bucket, Key="px", Body=b"")  # shares the string prefix "p"
    for key in ("a/1", "a/2", "b/1"):
        store.write(key, key.encode())

    assert list(store.list()) == ["a/1", "a/2", "b/1"]
    assert list(store.list("a/")) == ["a/1", "a/2"]

    store.rename("a/1", "c/1")
    assert store.read("c/1") == b"a/1"
    assert not store.exists("a/1")
    with pytest.raises(StorageError, match=rf"s3://{bucket}/p/nope: copy failed"):
        store.rename("nope", "x")
    store.remove("b/1")
    store.remove("b/1")
    assert list(store.list()) == ["a/2", "c/1"]


def test_path_style_and_retry_config_reach_the_client(moto_server: MotoServer) -> None:
    client = make_store(moto_server, "any-bucket", max_attempts=7).client
    assert client.meta.config.s3 == {"addressing_style": "path"}
    assert client.meta.config.retries == {"mode": "standard", "total_max_attempts": 7}


def test_repr_holds_no_client(moto_server: MotoServer, bucket: str) -> None:
    store = make_store(moto_server, bucket)
    store.write("k", b"x")
    assert "client" not in repr(store).lower()
    assert SECRET_ACCESS_KEY not in repr(store)


def _vm_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


def test_64_mib_upload_keeps_memory_bounded(
    moto_server: MotoServer, bucket: str, s3_client: Any
) -> None:
    """Peak RSS growth of this process while streaming 64 MiB in 8 MiB parts.

    Method: the server is another process (conftest), so this RSS is the client alone. After a
    warm-up upload (boto3 loads its models and connection pool on first use), the kernel's peak
    RSS mark is reset by writing 5 to /proc/self/clear_refs (proc(5)), and VmHWM after the
    upload is the true peak, not a sampled one. The bound: one part buffered plus one part being
    sent plus botocore's copies is ~3 parts (24 MiB); 48 MiB leaves room for allocator slack
    and still fails a client that holds the object (64 MiB) or most of it.
    """
    size, chunk = 64 * MIB, 1 * MIB
    store = make_store(moto_server, bucket, part_size=8 * MIB)
    store.write_stream("warm-up", (bytes(chunk) for _ in range(9)))

    digest = hashlib.sha256()

    def chunks() -> Iterator[bytes]:
        for i in range(size // chunk):
            block = i.to_bytes(8, "big") * (chunk // 8)
            digest.update(block)
            yield block

    Path("/proc/self/clear_refs").write_text("5")
    before = _vm_kib("VmRSS")
    assert store.write_stream("big/64MiB", chunks()) == size
    growth_mib = (_vm_kib("VmHWM") - before) / 1024

    assert growth_mib < 48, f"peak RSS grew by {growth_mib:.1f} MiB"
    head = s3_client.head_object(Bucket=bucket, Key="big/64MiB")
    assert head["ContentLength"] == size
    assert head["ETag"].strip('"').endswith("-8")
    downloaded = hashlib.sha256()
    with store.open_read("big/64MiB") as f:
        while block := f.read(chunk):
            downloaded.update(block)
    assert downloaded.hexdigest() == digest.hexdigest()


def test_no_credentials_in_logs(
    moto_server: MotoServer, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    store = make_store(moto_server, bucket)
    store.write("ok/small", b"x")
    store.write("ok/multi", pattern(PART + 1))
    assert store.read("ok/small") == b"x"
    errors = []
    for failing in (
        lambda: store.read("missing"),
        lambda: make_store(moto_server, "no-such-bucket-zz").write("k", b"x"),
        lambda: S3Storage(
            bucket, endpoint_url=f"http://127.0.0.1:{free_port()}", region="us-east-1",
            max_attempts=1,
        ).write("k", b"x"),
    ):  # fmt: skip
        with pytest.raises(StorageError) as info:
            failing()
        errors.append(str(info.value))

    text = caplog.text + "\n".join(errors)
    # botocore logs the signed request at DEBUG; the filter must have had work to do.
    assert "Sending http request" in text
    assert "X-Amz-Security-Token': b'<redacted>'" in text
    assert SECRET_ACCESS_KEY not in text
    assert SESSION_TOKEN not in text
    assert ACCESS_KEY_ID in text  # the key id is public (it is in every Authorization header)


def test_web_identity_credentials_stay_out_of_logs(
    moto_server: MotoServer,
    bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """IRSA: botocore trades the pod's token for credentials at STS (here moto's STS) and logs
    the reply, secret key included, at DEBUG."""
    token = tmp_path / "token"
    token.write_text("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQifQ.c2ln")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/pressured")
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token))
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", moto_server.url)
    caplog.set_level(logging.DEBUG)

    store = make_store(moto_server, bucket)
    store.write("irsa", b"x")

    credentials = store.client._request_signer._credentials
    assert credentials.method == "assume-role-with-web-identity"
    frozen = credentials.get_frozen_credentials()
    assert "<SecretAccessKey><redacted></SecretAccessKey>" in caplog.text
    assert frozen.secret_key not in caplog.text
    assert frozen.token not in caplog.text


@pytest.mark.parametrize(
    ("line", "secret"),
    [
        ("x-amz-security-token:FQoGZXIvYXdzEBYa+/=", "FQoGZXIvYXdzEBYa+/="),
        ("{'X-Amz-Security-Token': b'abc/def=='}", "abc/def=="),
        ('{"AccessKeyId": "ASIA", "SecretAccessKey": "s3cr3t/+x", "Token": "tok"}', "s3cr3t/+x"),
        ('{"Token": "tok-123"}', "tok-123"),
        ("<SessionToken>tok/+=</SessionToken>", "tok/+="),
        ("aws_secret_access_key = wJalrXUtnFEMI", "wJalrXUtnFEMI"),
        ("https://b.s3/k?X-Amz-Security-Token=abc%2Fdef&X-Amz-Date=1", "abc%2Fdef"),
    ],
)
def test_redact_masks_each_form(line: str, secret: str) -> None:
    assert secret not in redact(line)
    assert "<redacted>" in redact(line)


def test_client_is_built_once_across_threads(moto_server: MotoServer, bucket: str) -> None:
    store = make_store(moto_server, bucket)
    clients: list[Any] = []
    threads = [threading.Thread(target=lambda: clients.append(store.client)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(c) for c in clients}) == 1
