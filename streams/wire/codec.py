"""Avro in the Confluent wire format, with a local schema registry.

Wire format (what Schema Registry serializers write and read)::

    byte 0      magic byte, always 0
    bytes 1..4  schema id, big-endian unsigned int
    bytes 5..   Avro binary body (no container header)

``schemas/registry.json`` maps subjects to versions with fixed ids; in local
mode that file *is* the registry. Decoding resolves any known writer version
to the subject's newest (reader) schema, so producers still on an older
version keep working.

Reading is strict (``streams.wire.avro_strict``): a writer schema equal to the reader's is
read in one generated pass that checks and builds the value together; an older writer
version is checked by the same generated walk, then read by fastavro with schema resolution.

Where writer schemas come from is behind ``WriterSchemas``: the local
``SchemaRegistry`` or, with ``SCHEMA_REGISTRY_URL``, a Confluent Schema Registry
(``streams.schema_registry``). The reader is always the project's own schema.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import expand_schema, load_schema

from streams.wire.avro_strict import (
    AvroStrictError,
    UnsupportedSchemaError,
    strict_checker,
    strict_decoder,
)

__all__ = [
    "MAGIC_BYTE",
    "AvroCodec",
    "DecodeError",
    "Encoder",
    "RegisteredSchema",
    "SchemaRegistry",
    "SchemaUnavailableError",
    "WriterSchemas",
    "ALERT_SUBJECT",
    "TOUCHPOINT_SUBJECT",
    "backward_compatibility_problems",
    "load_record_schema",
    "parse_writer_schema",
    "wire_schema_ids",
]

MAGIC_BYTE = 0
_HEADER = struct.Struct(">bI")
TOUCHPOINT_SUBJECT = "touchpoints-value"
ALERT_SUBJECT = "alerts-value"


class DecodeError(ValueError):
    """A message that cannot be decoded; ``reason`` is machine-readable."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class SchemaUnavailableError(RuntimeError):
    """A writer schema cannot be fetched *now* (registry unreachable, 5xx, refused credentials).

    Says nothing about the message: the batch waits and is retried, its offsets are not
    committed, and it is never dead-lettered for this.
    """


@dataclass(frozen=True, slots=True)
class RegisteredSchema:
    subject: str
    version: int
    schema_id: int
    schema: dict[str, Any]  # expanded JSON form
    parsed: Any  # fastavro parsed form


class Encoder(Protocol):
    """Something that writes records in the Confluent wire format (``AvroCodec``, or a
    registry-backed serializer); ``schema_id`` picks an older version of registry.json."""

    def encode(self, record: dict[str, Any], schema_id: int | None = None) -> bytes: ...


class WriterSchemas(Protocol):
    """Where the codec finds the writer schema of the id on the wire."""

    def writer(self, schema_id: int, subject: str) -> RegisteredSchema:
        """The writer schema of ``schema_id``, which must belong to ``subject``.

        Raises ``DecodeError`` (``unknown_schema_id``, ``wrong_subject``,
        ``incompatible_schema``) when no message with this id can ever be decoded here, and
        ``SchemaUnavailableError`` when that cannot be told now.
        """
        ...

    def prefetch(self, schema_ids: set[int], subject: str) -> None:
        """Resolve ``schema_ids`` ahead of decoding (off the event loop); may raise
        ``SchemaUnavailableError``; an id that can never decode is left for ``writer`` to refuse."""
        ...


class SchemaRegistry:
    """Schemas by id and by subject, loaded from ``schemas/``."""

    def __init__(self, schemas: list[RegisteredSchema]) -> None:
        self._by_id = {s.schema_id: s for s in schemas}
        self._by_subject: dict[str, list[RegisteredSchema]] = {}
        for s in sorted(schemas, key=lambda s: (s.subject, s.version)):
            self._by_subject.setdefault(s.subject, []).append(s)

    @classmethod
    def from_dir(cls, schemas_dir: Path) -> SchemaRegistry:
        index = json.loads((schemas_dir / "registry.json").read_text())
        loaded: list[RegisteredSchema] = []
        for subject, versions in index["subjects"].items():
            for entry in versions:
                raw = json.loads((schemas_dir / entry["file"]).read_text())
                loaded.append(
                    RegisteredSchema(
                        subject=subject,
                        version=int(entry["version"]),
                        schema_id=int(entry["id"]),
                        schema=raw,
                        parsed=parse_schema(_plain_timestamps(raw)),
                    )
                )
        return cls(loaded)

    def by_id(self, schema_id: int) -> RegisteredSchema | None:
        return self._by_id.get(schema_id)

    def writer(self, schema_id: int, subject: str) -> RegisteredSchema:
        found = self._by_id.get(schema_id)
        if found is None:
            raise DecodeError("unknown_schema_id", f"schema id {schema_id} is not registered")
        if found.subject != subject:
            raise DecodeError("wrong_subject", f"schema id {schema_id} belongs to {found.subject}")
        return found

    def prefetch(self, schema_ids: set[int], subject: str) -> None:
        """Everything is in memory already."""

    def versions(self, subject: str) -> list[RegisteredSchema]:
        return list(self._by_subject[subject])

    def latest(self, subject: str) -> RegisteredSchema:
        return self._by_subject[subject][-1]

    def subjects(self) -> list[str]:
        return sorted(self._by_subject)


def _plain_timestamps(schema: Any) -> Any:
    """Drop timestamp logical types: same bytes on the wire, but read as epoch-ms ints.

    fastavro would build a ``datetime`` per timestamp; the pipeline works in epoch
    milliseconds throughout, so skipping that is both simpler and faster.
    """
    if isinstance(schema, dict):
        out = {k: _plain_timestamps(v) for k, v in schema.items()}
        if out.get("logicalType") in ("timestamp-millis", "timestamp-micros"):
            del out["logicalType"]
        return out
    if isinstance(schema, list):
        return [_plain_timestamps(v) for v in schema]
    return schema


def parse_writer_schema(schema: Any) -> Any:
    """fastavro's parsed form of a writer schema (JSON form), timestamps read as epoch ms."""
    return parse_schema(_plain_timestamps(schema))


def wire_schema_ids(values: list[bytes | None]) -> set[int]:
    """The schema ids in the Confluent headers of ``values`` (others are left to decode)."""
    ids: set[int] = set()
    for value in values:
        if value and len(value) >= _HEADER.size and value[0] == MAGIC_BYTE:
            ids.add(_HEADER.unpack_from(value)[1])
    return ids


def load_record_schema(path: Path) -> dict[str, Any]:
    """Load a record from ``schemas/records`` with its named references, expanded."""
    return cast(dict[str, Any], expand_schema(load_schema(str(path), _write_hint=False)))


class AvroCodec:
    """Encode/decode one subject's records in the Confluent wire format.

    ``subject`` names the project's schema in ``registry`` (the reader, and what ``encode``
    writes). ``writers`` finds writer schemas by id (default: ``registry`` itself) and
    ``wire_subject`` is the subject they must belong to there (default: ``subject``).
    ``schema_id`` is the id ``encode`` writes (default: the reader's id in ``registry``).
    ``one_pass=False`` reads every message as before the one-pass decoder: strict check, then
    fastavro (the reference the tests and the benchmark compare it with).
    """

    def __init__(
        self,
        registry: SchemaRegistry,
        subject: str,
        *,
        writers: WriterSchemas | None = None,
        wire_subject: str | None = None,
        schema_id: int | None = None,
        one_pass: bool = True,
    ) -> None:
        self._registry = registry
        self._subject = subject
        self._writers: WriterSchemas = writers or registry
        self._wire_subject = wire_subject or subject
        self._reader = registry.latest(subject)
        self._schema_id = self._reader.schema_id if schema_id is None else schema_id
        # schema id -> (writer, reader or None when they are the same), or why it never decodes
        self._plans: dict[int, tuple[RegisteredSchema, Any] | DecodeError] = {}
        self._strict: dict[int, Any] = {}  # schema id -> compiled strict check
        # schema id -> one-pass strict decoder (None: fastavro reads it, after the check)
        self._one_pass: dict[int, Callable[[bytes, int], Any] | None] | None = (
            {} if one_pass else None
        )

    @property
    def schema_id(self) -> int:
        return self._schema_id

    @property
    def wire_subject(self) -> str:
        return self._wire_subject

    def encode(self, record: dict[str, Any], schema_id: int | None = None) -> bytes:
        if schema_id is None:
            writer, header_id = self._reader.parsed, self._schema_id
        else:
            found = self._registry.by_id(schema_id)
            if found is None:
                raise KeyError(f"unknown schema id {schema_id}")
            writer, header_id = found.parsed, found.schema_id
        buf = io.BytesIO()
        buf.write(_HEADER.pack(MAGIC_BYTE, header_id))
        schemaless_writer(buf, writer, record)
        return buf.getvalue()

    def prefetch(self, values: list[bytes | None]) -> None:
        """Fetch the writer schemas of ``values`` before decoding them (blocking: run it off
        the event loop). Raises ``SchemaUnavailableError`` if one cannot be fetched now."""
        missing = {i for i in wire_schema_ids(values) if i not in self._plans}
        if missing:
            self._writers.prefetch(missing, self._wire_subject)

    def _plan(self, schema_id: int) -> tuple[RegisteredSchema, Any]:
        plan = self._plans.get(schema_id)
        if plan is None:
            writer = self._writers.writer(schema_id, self._wire_subject)  # may raise
            if writer.schema == self._reader.schema:
                plan = (writer, None)
            else:
                problems = backward_compatibility_problems(writer.schema, self._reader.schema)
                plan = (
                    DecodeError(
                        "incompatible_schema",
                        f"schema id {schema_id} cannot be read as {self._subject}: "
                        + "; ".join(problems[:3]),
                    )
                    if problems
                    else (writer, self._reader.parsed)
                )
            self._plans[schema_id] = plan
        if isinstance(plan, DecodeError):
            raise DecodeError(plan.reason, plan.detail)
        return plan

    def decode(self, data: bytes) -> dict[str, Any]:
        if len(data) < _HEADER.size:
            raise DecodeError("truncated_header", f"{len(data)} bytes, need at least 5")
        magic, schema_id = _HEADER.unpack_from(data)
        if magic != MAGIC_BYTE:
            raise DecodeError("bad_magic_byte", f"first byte is {data[0]:#04x}, expected 0x00")
        writer, reader = self._plan(schema_id)
        if reader is None and self._one_pass is not None:
            decode = self._one_pass.get(schema_id, _UNCOMPILED)
            if decode is _UNCOMPILED:
                decode = self._one_pass[schema_id] = _one_pass_decoder(writer)
            if decode is not None:
                try:
                    return cast(dict[str, Any], decode(data, _HEADER.size))
                except AvroStrictError as exc:
                    raise DecodeError(_strict_reason(exc), exc.detail) from None
                except RecursionError:
                    raise DecodeError("corrupt_body", "nesting too deep") from None
        self.check_strict(writer, data)
        return self._fastavro(writer, reader, data)

    def _fastavro(self, writer: RegisteredSchema, reader: Any, data: bytes) -> dict[str, Any]:
        buf = io.BytesIO(data)
        buf.seek(_HEADER.size)
        try:
            record = schemaless_reader(
                buf,
                writer.parsed,
                reader,
                return_record_name=True,
            )
        except EOFError as exc:
            raise DecodeError("truncated_body", f"Avro body ends early: {exc}") from exc
        except (ValueError, IndexError, UnicodeDecodeError, OverflowError) as exc:
            raise DecodeError("corrupt_body", f"{type(exc).__name__}: {exc}") from exc
        if buf.tell() != len(data):
            raise DecodeError(
                "trailing_bytes", f"{len(data) - buf.tell()} bytes after the Avro record"
            )
        return cast(dict[str, Any], record)

    def check_strict(self, writer: RegisteredSchema, data: bytes) -> None:
        """Reject bytes fastavro would read leniently (``streams.wire.avro_strict``): a union or
        enum index out of range, a boolean byte other than 0/1, bad lengths, overlong
        numbers are ``corrupt_body``; a body that ends early ``truncated_body``; bytes
        after the record ``trailing_bytes``."""
        check = self._strict.get(writer.schema_id)
        if check is None:
            check = self._strict[writer.schema_id] = strict_checker(writer.schema)
        try:
            check(data, _HEADER.size)
        except AvroStrictError as exc:
            raise DecodeError(_strict_reason(exc), exc.detail) from None
        except RecursionError:
            raise DecodeError("corrupt_body", "nesting too deep") from None


_UNCOMPILED: Any = object()


def _one_pass_decoder(writer: RegisteredSchema) -> Callable[[bytes, int], Any] | None:
    """The one-pass strict decoder of ``writer`` read as itself, or None where fastavro must
    read it (a logical type other than the timestamps, which are read as epoch ms)."""
    try:
        return strict_decoder(_plain_timestamps(writer.schema))
    except UnsupportedSchemaError:
        return None


def _strict_reason(exc: AvroStrictError) -> str:
    return {"truncated": "truncated_body", "trailing": "trailing_bytes"}.get(
        exc.kind, "corrupt_body"
    )


_PROMOTIONS = {
    "int": {"long", "float", "double"},
    "long": {"float", "double"},
    "float": {"double"},
    "string": {"bytes"},
    "bytes": {"string"},
}


def backward_compatibility_problems(writer: Any, reader: Any, path: str = "$") -> list[str]:
    """Why data written with ``writer`` could not be read with ``reader`` (empty = compatible).

    BACKWARD in Schema Registry terms: consumers on the new schema read old data.
    Both schemas are in expanded form (named types inlined at first use).
    """
    problems: list[str] = []
    w, r = _normal(writer), _normal(reader)
    if isinstance(w, list):
        for branch in w:
            problems += backward_compatibility_problems(branch, reader, f"{path}|{_name(branch)}")
        return problems
    if isinstance(r, list):
        if not any(not backward_compatibility_problems(w, branch, path) for branch in r):
            problems.append(f"{path}: writer type {_name(w)} matches no reader union branch")
        return problems
    wt, rt = _type(w), _type(r)
    if wt != rt and rt not in _PROMOTIONS.get(wt, set()):
        return [f"{path}: {wt} cannot be read as {rt}"]
    if rt == "record":
        if _name(w).split(".")[-1] != _name(r).split(".")[-1]:
            return [f"{path}: record {_name(w)} read as {_name(r)}"]
        wfields = {f["name"]: f for f in w["fields"]}
        for field in r["fields"]:
            if field["name"] in wfields:
                problems += backward_compatibility_problems(
                    wfields[field["name"]]["type"], field["type"], f"{path}.{field['name']}"
                )
            elif "default" not in field:
                problems.append(f"{path}.{field['name']}: new field has no default")
    elif rt == "map":
        problems += backward_compatibility_problems(w["values"], r["values"], f"{path}{{}}")
    elif rt == "array":
        problems += backward_compatibility_problems(w["items"], r["items"], f"{path}[]")
    elif rt == "enum":
        missing = set(w["symbols"]) - set(r["symbols"])
        if missing and "default" not in r:
            problems.append(f"{path}: enum symbols {sorted(missing)} unknown to the reader")
    return problems


_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})


def _normal(schema: Any) -> Any:
    """``{"type": "long", "logicalType": ...}`` -> ``"long"``: logical types share the wire."""
    if isinstance(schema, dict) and schema.get("type") in _PRIMITIVES:
        return schema["type"]
    return schema


def _type(schema: Any) -> str:
    return schema if isinstance(schema, str) else str(schema["type"])


def _name(schema: Any) -> str:
    if isinstance(schema, dict):
        return str(schema.get("name", schema.get("type")))
    return str(schema)
