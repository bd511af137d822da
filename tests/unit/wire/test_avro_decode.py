"""The one-pass strict decoder (issue 11) reads exactly what fastavro reads, strictly.

``strict_decoder`` checks and builds the value in one walk; the codec uses it whenever the
writer schema is the reader's. These tests hold it to fastavro's ``schemaless_reader(...,
return_record_name=True)`` value by value (types included: ``True`` is not ``1``, a float's
bits count) on the generated touchpoints, on random valid bytes of every registered schema
and of a synthetic schema with every Avro type, and hold its errors to the codec's previous
path (strict check, then fastavro): same reason, same detail, for random byte mutations.
"""

from __future__ import annotations

import io
import struct
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fastavro import schemaless_reader, schemaless_writer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.sim.generator import encode_events, generate
from streams.sim.samples import valid_template
from streams.wire.avro_strict import (
    AvroStrictError,
    UnsupportedSchemaError,
    _long,
    _long_fast,
    strict_decoder,
)
from streams.wire.codec import (
    TOUCHPOINT_SUBJECT,
    AvroCodec,
    DecodeError,
    RegisteredSchema,
    SchemaRegistry,
    _plain_timestamps,
    parse_writer_schema,
)

REGISTRY = SchemaRegistry.from_dir(Path(__file__).resolve().parents[3] / "schemas")
NOW = 1_765_000_000_000
REASONS = {"corrupt_body", "truncated_body", "trailing_bytes"}

# Every Avro type, named types defined inline and referenced by name (in unions too: fastavro
# pairs a referenced enum/fixed/error with its name, but not one defined in the union),
# namespaces, a recursive record, a logical type the codec reads as a plain long.
SYNTHETIC: dict[str, Any] = {
    "type": "record",
    "name": "All",
    "namespace": "syn",
    "fields": [
        {"name": "n", "type": "null"},
        {"name": "t", "type": "boolean"},
        {"name": "i", "type": "int"},
        {"name": "l", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "f", "type": "float"},
        {"name": "d", "type": "double"},
        {"name": "by", "type": "bytes"},
        {"name": "s", "type": "string"},
        {"name": "e", "type": {"type": "enum", "name": "Colour", "symbols": ["red", "green"]}},
        {"name": "x", "type": {"type": "fixed", "name": "Two", "size": 2}},
        {
            "name": "ue",
            "type": ["null", {"type": "enum", "name": "E2", "symbols": ["a"]}, "Colour"],
        },
        {"name": "ux", "type": ["null", {"type": "fixed", "name": "F3", "size": 3}, "Two"]},
        {
            "name": "uerr",
            "type": [
                "null",
                {"type": "error", "name": "Oops", "fields": [{"name": "m", "type": "string"}]},
                "Oops",
            ],
        },
        {
            "name": "node",
            "type": [
                "null",
                {
                    "type": "record",
                    "name": "Node",
                    "namespace": "other",
                    "fields": [
                        {"name": "v", "type": ["int", "string", "float"]},
                        {"name": "next", "type": ["null", "Node"]},
                    ],
                },
            ],
        },
        {"name": "again", "type": ["other.Node", "null"]},
        {"name": "a", "type": {"type": "array", "items": {"type": "map", "values": "double"}}},
        {"name": "m", "type": {"type": "map", "values": {"type": "array", "items": "Colour"}}},
        {"name": "ab", "type": {"type": "array", "items": "boolean"}},
    ],
}


def _codecs(schema: dict[str, Any]) -> tuple[AvroCodec, AvroCodec]:
    """(one-pass, previous path) codecs for a registry holding ``schema`` alone, id 7."""
    registered = RegisteredSchema("syn-value", 1, 7, schema, parse_writer_schema(schema))
    registry = SchemaRegistry([registered])
    return AvroCodec(registry, "syn-value"), AvroCodec(registry, "syn-value", one_pass=False)


TOUCHPOINTS = (
    AvroCodec(REGISTRY, TOUCHPOINT_SUBJECT),
    AvroCodec(REGISTRY, TOUCHPOINT_SUBJECT, one_pass=False),
)
SCHEMAS = {
    **{
        f"{s.subject}.v{s.version}": s.schema
        for sub in REGISTRY.subjects()
        for s in REGISTRY.versions(sub)
    },
    "synthetic": SYNTHETIC,
}
CODECS = {name: _codecs(schema) for name, schema in SCHEMAS.items()}


def _identical(a: Any, b: Any, path: str = "$") -> None:
    """Equal, and of the same types all the way down (``True == 1`` and ``0.0 == -0.0`` in
    Python; dict key order counts too). Floats compare by their bits."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} {a!r} vs {type(b).__name__} {b!r}"
    if isinstance(a, dict):
        assert list(a) == list(b), f"{path}: keys {list(a)} vs {list(b)}"
        for key in a:
            _identical(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), f"{path}: {len(a)} items vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _identical(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert struct.pack("<d", a) == struct.pack("<d", b), f"{path}: {a!r} vs {b!r}"
    else:
        assert a == b, f"{path}: {a!r} vs {b!r}"


PARSED = {name: parse_writer_schema(schema) for name, schema in SCHEMAS.items()}
DECODERS = {name: strict_decoder(_plain_timestamps(schema)) for name, schema in SCHEMAS.items()}


def _fastavro(name: str, body: bytes) -> Any:
    buf = io.BytesIO(body)
    value = schemaless_reader(buf, PARSED[name], None, return_record_name=True)
    assert buf.tell() == len(body)
    return value


def _outcome(codec: AvroCodec, data: bytes) -> tuple[str, Any]:
    try:
        return "value", codec.decode(data)
    except DecodeError as exc:
        assert exc.reason in REASONS, exc
        assert exc.detail
        return exc.reason, exc.detail


def test_generated_touchpoints_decode_identically() -> None:
    """The simulator's journeys (a fifth written with v1, read by fastavro with resolution)."""
    new, old = TOUCHPOINTS
    values = [v for _, v in encode_events(generate(40, seed=3, now_ms=NOW), new, 0.2, seed=3)]
    decode = DECODERS["touchpoints-value.v2"]
    one_pass = 0
    for value in values:
        _identical(new.decode(value), old.decode(value))
        if value[1:5] == b"\x00\x00\x00\x02":
            _identical(decode(value, 5), _fastavro("touchpoints-value.v2", value[5:]))
            one_pass += 1
    assert len(values) > 300
    assert 0.6 * len(values) < one_pass < len(values)  # both paths ran


# --- random valid bytes of a schema, written here (not by fastavro's writer), with the
# encodings a writer may choose: blocks of any size, with or without byte sizes, and
# numbers written in more bytes than they need (up to the 10 a long may take).


def _varint(value: int, extra: int = 0) -> bytes:
    n = (value << 1) ^ (value >> 63)
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    for _ in range(min(extra, 10 - len(out))):  # 0x80 ... 0x00: the same number, longer
        out[-1] |= 0x80
        out.append(0)
    return bytes(out)


class _Writer:
    """Random valid Avro bytes of one schema, drawn with hypothesis."""

    def __init__(self, draw: Any, schema: Any) -> None:
        self.draw = draw
        self.named: dict[str, Any] = {}
        self.define(schema, "")

    def define(self, schema: Any, ns: str) -> None:
        """Every named type of ``schema`` by full name (a branch not drawn defines its type too)."""
        if isinstance(schema, list):
            for branch in schema:
                self.define(branch, ns)
        elif isinstance(schema, dict) and schema["type"] in ("array", "map"):
            self.define(schema.get("items", schema.get("values")), ns)
        elif isinstance(schema, dict) and "name" in schema:
            full = _full(schema, ns)
            self.named[full] = schema
            inner = full.rsplit(".", 1)[0] if "." in full else ""
            for field in schema.get("fields", []):
                self.define(field["type"], inner)

    def datum(self, schema: Any, ns: str, depth: int) -> bytes:
        if isinstance(schema, list):
            last = 0 if depth > 4 else len(schema) - 1  # branch 0 is null where nesting recurs
            index = self.draw(st.integers(0, last))
            return _varint(index) + self.datum(schema[index], ns, depth + 1)
        if isinstance(schema, dict) and schema["type"] in PRIMITIVES:
            schema = schema["type"]
        if isinstance(schema, str):
            if schema in PRIMITIVES:
                return self.primitive(schema)
            full = schema if "." in schema or not ns else f"{ns}.{schema}"
            return self.datum(self.named.get(full) or self.named[schema], ns, depth)
        if schema["type"] in ("array", "map"):
            return self.blocks(schema, ns, depth)
        full = _full(schema, ns)
        inner = full.rsplit(".", 1)[0] if "." in full else ""
        if schema["type"] == "enum":
            return _varint(self.draw(st.integers(0, len(schema["symbols"]) - 1)), self.extra())
        if schema["type"] == "fixed":
            return bytes(self.draw(st.binary(min_size=schema["size"], max_size=schema["size"])))
        return b"".join(self.datum(f["type"], inner, depth + 1) for f in schema["fields"])

    def extra(self) -> int:
        return int(self.draw(st.sampled_from([0, 0, 0, 1, 5])))

    def primitive(self, kind: str) -> bytes:
        draw = self.draw
        if kind == "null":
            return b""
        if kind == "boolean":
            return b"\x01" if draw(st.booleans()) else b"\x00"
        if kind in ("int", "long"):
            bits = 31 if kind == "int" else 63
            edge = st.sampled_from([0, -1, 1, 63, 64, -64, -65, 2**bits - 1, -(2**bits)])
            number = draw(edge | st.integers(-(2**bits), 2**bits - 1))
            return _varint(number, self.extra())
        if kind in ("float", "double"):
            size = 4 if kind == "float" else 8
            fmt = "<f" if kind == "float" else "<d"
            special = st.sampled_from([0.0, -0.0, float("inf"), float("-inf"), float("nan")])
            as_bits = st.binary(min_size=size, max_size=size)  # any bits: NaN payloads too
            return bytes(draw(as_bits | special.map(lambda x: struct.pack(fmt, x))))
        if kind == "string":
            raw = draw(
                st.text(max_size=80) | st.sampled_from(["", "é", "\U0001f600" * 30])
            ).encode()
        else:
            raw = draw(st.binary(max_size=80))
        return _varint(len(raw), self.extra()) + raw

    def blocks(self, schema: dict[str, Any], ns: str, depth: int) -> bytes:
        out = b""
        for _ in range(self.draw(st.integers(0, 0 if depth > 4 else 3))):
            items = []
            for _ in range(self.draw(st.integers(1, 3))):
                key = self.primitive("string") if schema["type"] == "map" else b""
                item = schema["items"] if schema["type"] == "array" else schema["values"]
                items.append(key + self.datum(item, ns, depth + 1))
            block = b"".join(items)
            if self.draw(st.booleans()):  # a negative count is followed by the block's size
                out += _varint(-len(items)) + _varint(len(block)) + block
            else:
                out += _varint(len(items)) + block
        return out + b"\x00"


def _full(schema: dict[str, Any], ns: str) -> str:
    name: str = schema["name"]
    ns = schema.get("namespace", ns)
    return name if "." in name or not ns else f"{ns}.{name}"


PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})


@st.composite
def _valid(draw: Any, name: str) -> bytes:
    return _Writer(draw, SCHEMAS[name]).datum(SCHEMAS[name], "", 0)


def _message(name: str, body: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", 7) + body


@pytest.mark.parametrize("name", sorted(SCHEMAS))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_valid_data_of_every_schema_decodes_as_fastavro_reads_it(
    name: str, data: st.DataObject
) -> None:
    body = data.draw(_valid(name))
    new, old = CODECS[name]
    expected = _fastavro(name, body)
    _identical(DECODERS[name](body, 0), expected)
    _identical(new.decode(_message(name, body)), expected)
    _identical(old.decode(_message(name, body)), expected)


_EDIT = st.tuples(
    st.sampled_from(["set", "insert", "delete", "cut"]), st.integers(0), st.integers(0, 255)
)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_byte_mutations_get_the_previous_value_or_the_previous_reason_and_detail(
    name: str, data: st.DataObject
) -> None:
    buf = bytearray(data.draw(_valid(name)))
    for op, at, byte in data.draw(st.lists(_EDIT, min_size=1, max_size=3)):
        at %= len(buf) + 1
        if op == "set" and at < len(buf):
            buf[at] = byte
        elif op == "insert":
            buf.insert(at, byte)
        elif op == "delete" and at < len(buf):
            del buf[at]
        elif op == "cut":
            del buf[at:]
    new, old = CODECS[name]
    message = _message(name, bytes(buf))
    got, expected = _outcome(new, message), _outcome(old, message)
    _identical(got, expected)


def test_a_string_that_is_not_utf8_is_corrupt_unless_the_bytes_are_broken_anyway() -> None:
    new, old = TOUCHPOINTS
    good = new.encode(valid_template(NOW))
    bad_utf8 = good.replace(b"web-sdk", b"web\xffsdk", 1)
    assert _outcome(new, bad_utf8) == _outcome(old, bad_utf8)
    assert _outcome(new, bad_utf8)[0] == "corrupt_body"
    assert "UnicodeDecodeError" in _outcome(new, bad_utf8)[1]
    # the strict check ran first before: a truncated body is truncated_body, however bad its strings
    assert _outcome(new, bad_utf8[:-2]) == ("truncated_body", _outcome(old, bad_utf8[:-2])[1])
    assert _outcome(new, bad_utf8 + b"\x00")[0] == "trailing_bytes"


def test_logical_types_fastavro_converts_are_left_to_fastavro() -> None:
    decimal = {"type": "bytes", "logicalType": "decimal", "precision": 6, "scale": 2}
    schema = {"type": "record", "name": "Price", "fields": [{"name": "amount", "type": decimal}]}
    with pytest.raises(UnsupportedSchemaError):
        strict_decoder(schema)
    new, old = _codecs(schema)
    message = _message("", b"\x04\x30\x39")  # 0x3039 = 12345 -> 123.45
    assert new.decode(message) == old.decode(message) == {"amount": Decimal("123.45")}
    assert _outcome(new, message[:-1])[0] == "truncated_body"


@settings(max_examples=500, deadline=None)
@given(
    st.binary(max_size=14) | st.binary(max_size=12).map(lambda b: b"\xff" * 9 + b),
    st.integers(0, 3),
)
def test_the_fast_long_reads_what_the_checked_long_reads(data: bytes, pos: int) -> None:
    """Both generated walks read multi-byte numbers with ``_long_fast``."""

    def read(long: Any) -> Any:
        try:
            return long(data, pos)
        except AvroStrictError as exc:
            return exc.kind, exc.detail

    assert read(_long_fast) == read(_long)


def _nested(depth: int) -> dict[str, Any]:
    fields: list[dict[str, Any]] = [{"name": "x", "type": "int"}]
    if depth:
        items = {"type": "array", "items": _nested(depth - 1)}
        fields += [{"name": "a", "type": items}, {"name": "m", "type": ["null", "string"]}]
    return {"type": "record", "name": f"R{depth}", "fields": fields}


def test_deeply_nested_records_compile_and_decode() -> None:
    """Python allows 20 nested loops: records deep inside arrays become functions."""
    schema = _nested(16)
    value: dict[str, Any] = {"x": 0}
    for depth in range(1, 17):
        leaf: dict[str, Any] = {"x": -1} if depth == 1 else {"x": -1, "a": [], "m": None}
        value = {"x": depth, "a": [value, leaf], "m": "é"}
    buf = io.BytesIO()
    schemaless_writer(buf, parse_writer_schema(schema), value)
    expected = schemaless_reader(
        io.BytesIO(buf.getvalue()), parse_writer_schema(schema), None, return_record_name=True
    )
    assert expected == value
    _identical(strict_decoder(schema)(buf.getvalue(), 0), expected)
