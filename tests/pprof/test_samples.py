"""pressured.pprof.samples decodes samples in bulk; the protobuf runtime is the reference.

Samples are encoded by hand in every shape the wire format allows (packed or not, packed runs
split in several fields, fields in any order, unknown fields of every wire type, labels), so
both the bulk path and the one-by-one path for odd samples are exercised.
"""

from __future__ import annotations

import importlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pressured.errors import PprofError
from pressured.pprof.samples import LocationIndex, decode_samples

pb2: Any = importlib.import_module("pressured.pprof._pprof_pb2")


def _varint(v: int) -> bytes:
    v &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = v & 0x7F
        v >>= 7
        if v:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    return _varint(number << 3 | wire) + payload


def _packed(number: int, values: list[int]) -> bytes:
    body = b"".join(_varint(v) for v in values)
    return _field(number, 2, _varint(len(body)) + body)


@st.composite
def encoded_sample(draw: st.DrawFn, n_types: int, loc_ids: list[int]) -> bytes:
    locs = draw(st.lists(st.sampled_from(loc_ids), max_size=12))
    values = draw(
        st.lists(st.integers(-(1 << 63), (1 << 63) - 1), min_size=n_types, max_size=n_types)
    )
    parts: list[bytes] = []
    for number, items in ((1, locs), (2, values)):
        i = 0
        while i < len(items):  # runs of random length, each packed or one by one
            run = items[i : i + draw(st.integers(1, 4))]
            i += len(run)
            if draw(st.booleans()):
                parts.append(_packed(number, run))
            else:
                parts.extend(_field(number, 0, _varint(v)) for v in run)
    for _ in range(draw(st.integers(0, 2))):
        label = _field(1, 0, _varint(draw(st.integers(0, 3)))) + _field(
            3, 0, _varint(draw(st.integers(0, 1 << 40)))
        )
        if draw(st.booleans()):  # an unknown string field inside the label
            label += _field(9, 2, _varint(3) + b"\x80\x81z")
        parts.append(_field(3, 2, _varint(len(label)) + label))
    unknown = draw(st.sampled_from(["", "varint", "bytes", "fixed64", "fixed32"]))
    if unknown == "varint":
        parts.append(_field(7, 0, _varint(draw(st.integers(0, 1 << 64 - 1)))))
    elif unknown == "bytes":
        parts.append(_field(8, 2, _varint(4) + draw(st.binary(min_size=4, max_size=4))))
    elif unknown == "fixed64":
        parts.append(_field(9, 1, draw(st.binary(min_size=8, max_size=8))))
    elif unknown == "fixed32":
        parts.append(_field(10, 5, draw(st.binary(min_size=4, max_size=4))))
    # fields in any order (the runtime keeps wire order within a repeated field, as must we)
    order = draw(st.permutations(range(len(parts))))
    return b"".join(parts[k] for k in order)


LOC_IDS = [1, 2, 3, 5, 200, 1 << 40]


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 4).flatmap(
        lambda n: st.tuples(st.just(n), st.lists(encoded_sample(n, LOC_IDS), max_size=40))
    )
)
def test_bulk_decoding_equals_the_protobuf_runtime(case: tuple[int, list[bytes]]) -> None:
    n_types, samples = case
    index = LocationIndex(LOC_IDS)
    table = decode_samples(samples, n_types, index, "gen.pb")
    assert len(table) == len(samples)
    for i, raw in enumerate(samples):
        want = pb2.Sample.FromString(raw)
        locs = table.locs[table.loc_ptr[i] : table.loc_ptr[i + 1]]
        assert [int(index.ids[k]) for k in locs] == list(want.location_id)
        assert table.values[i].tolist() == list(want.value)


def test_many_samples_cross_chunks() -> None:
    samples = [_packed(1, [1 + i % 3, 5]) + _packed(2, [i, -i]) for i in range(70_000)]
    table = decode_samples(samples, 2, LocationIndex(LOC_IDS), "big.pb")
    assert table.values[69_999].tolist() == [69_999, -69_999]
    assert int(table.loc_ptr[-1]) == 140_000


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            _packed(2, [1]) + b"\x0a\x05\x01",
            r"big\.pb: not a pprof profile \(protobuf decode failed in sample\[1\]",
        ),
        (_packed(2, [1]) + b"\x08\xff", r"protobuf decode failed in sample\[1\]"),
        (_packed(2, [1, 2]), r"big\.pb: sample\[1\] has 2 values for 1 sample types"),
        (
            _packed(2, [1]) + _packed(1, [4]),
            r"big\.pb: samples name location ids that do not exist: 4",
        ),
    ],
)
def test_bad_samples_name_the_sample(raw: bytes, message: str) -> None:
    with pytest.raises(PprofError, match=message):
        decode_samples([_packed(2, [7]), raw], 1, LocationIndex(LOC_IDS), "big.pb")
