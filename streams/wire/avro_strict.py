"""Strict Avro: check that a binary body is exactly one well-formed datum of a schema.

fastavro reads leniently where the Avro specification leaves no room: a union branch
index of -1 is read as the *last* branch (Python's negative indexing), so is a negative
enum index; any boolean byte other than 0x00 is read as ``true`` (0x02 included); a
negative string length reads "to the end". Such bytes are not Avro, and a pipeline that
accepts them accepts data no other consumer of the topic can read.

``strict_checker(schema)`` compiles a schema (expanded JSON form) once into a function
``check(data, pos) -> end`` — generated Python source, straight-line per record, measured
at about a fifth of fastavro's own decode time on generated touchpoints (5.9 µs against
25 µs, same run) — that walks the bytes without building values and raises
``AvroStrictError`` at the first violation:

* union branch and enum indexes outside ``[0, n)`` (and union indexes written in more
  than one byte, which no Avro writer does);
* booleans other than 0x00 / 0x01;
* ints and longs whose variable-length encoding is longer than 5 / 10 bytes or whose
  value is out of the 32 / 64-bit range;
* negative or overlong string/bytes lengths, array/map block counts and block sizes
  that do not match the bytes that follow;
* a body that ends early (``truncated``) or goes on after the datum (``trailing``).

The decoder (``streams.wire.codec``) runs it before fastavro, so every message it accepts is
one that any conforming Avro reader reads the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["AvroStrictError", "strict_checker"]

_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)


class AvroStrictError(ValueError):
    """The bytes are not a valid encoding. ``kind``: ``corrupt``, ``truncated`` or ``trailing``."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


def _varint(data: bytes, pos: int, max_bytes: int) -> tuple[int, int]:
    """Zig-zag varint at ``pos`` -> (value, next position)."""
    result = shift = 0
    end = len(data)
    for _ in range(max_bytes):
        if pos >= end:
            raise AvroStrictError("truncated", f"number at byte {pos} ends early")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7
    raise AvroStrictError("corrupt", f"variable-length number longer than {max_bytes} bytes")


def _long(data: bytes, pos: int) -> tuple[int, int]:
    if pos < len(data):
        b = data[pos]
        if b < 0x80:  # one byte: most numbers, every union index and length below 64
            return (b >> 1) ^ -(b & 1), pos + 1
    value, pos = _varint(data, pos, 10)
    if not _INT64[0] <= value <= _INT64[1]:
        raise AvroStrictError("corrupt", f"long {value} is out of the 64-bit range")
    return value, pos


_PRIMITIVE = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})


class _Gen:
    """Python source for one checker: a function per named record, straight-line code for
    everything else (a closure per field measured ~3x slower than fastavro's own decode)."""

    def __init__(self) -> None:
        self.functions: dict[str, list[str]] = {}  # function name -> lines
        self.names: dict[str, str] = {}  # full Avro name -> function name
        self.enums: dict[str, tuple[int, str]] = {}
        self.fixed: dict[str, int] = {}
        self.counter = 0

    def var(self) -> str:
        self.counter += 1
        return f"v{self.counter}"

    def long(self, out: list[str], ind: str, target: str) -> None:
        out += [
            f"{ind}b = d[p]",
            f"{ind}if b < 128:",
            f"{ind}    {target} = (b >> 1) ^ -(b & 1)",
            f"{ind}    p += 1",
            f"{ind}else:",
            f"{ind}    {target}, p = _long(d, p)",
        ]

    def emit(self, schema: Any, out: list[str], ind: str, ns: str) -> None:
        if isinstance(schema, list):
            self.union(schema, out, ind, ns)
            return
        if isinstance(schema, dict) and schema["type"] in _PRIMITIVE:
            schema = schema["type"]  # {"type": "long", "logicalType": ...}
        if isinstance(schema, str):
            if schema in _PRIMITIVE:
                self.primitive(schema, out, ind)
            else:
                self.reference(schema, out, ind, ns)
            return
        kind = schema["type"]
        if kind in ("record", "error", "enum", "fixed"):
            self.named(schema, out, ind, ns)
        elif kind in ("array", "map"):
            self.repeated(schema, out, ind, ns)
        else:
            raise ValueError(f"unsupported Avro type {kind!r}")

    def union(self, schema: list[Any], out: list[str], ind: str, ns: str) -> None:
        # Branch i is the one byte 2*i (zig-zag); any other byte is out of range, or an
        # overlong encoding no Avro writer produces: both corrupt.
        out += [f"{ind}b = d[p]", f"{ind}p += 1"]
        for i, branch in enumerate(schema):
            out.append(f"{ind}{'if' if i == 0 else 'elif'} b == {2 * i}:")
            body: list[str] = []
            self.emit(branch, body, ind + "    ", ns)
            out += body or [f"{ind}    pass"]
        out += [
            f"{ind}else:",
            f"{ind}    _bad_union(d, p - 1, {len(schema)})",
        ]

    def reference(self, schema: str, out: list[str], ind: str, ns: str) -> None:
        """A named type used by name (defined earlier)."""
        full = schema if "." in schema or not ns else f"{ns}.{schema}"
        if full not in self.names and schema in self.names:
            full = schema
        if full in self.enums:
            self.enum(full, out, ind)
        elif full in self.fixed:
            out.append(f"{ind}p += {self.fixed[full]}")
        elif full in self.names:
            out.append(f"{ind}p = {self.names[full]}(d, p)")
        else:
            raise ValueError(f"unknown named type {schema!r}")

    def named(self, schema: dict[str, Any], out: list[str], ind: str, ns: str) -> None:
        """A record, error, enum or fixed defined here."""
        kind = schema["type"]
        name = schema["name"]
        ns = schema.get("namespace", ns)
        full = name if "." in name or not ns else f"{ns}.{name}"
        if kind == "enum":
            self.enums[full] = (len(schema["symbols"]), full)
            self.enum(full, out, ind)
        elif kind == "fixed":
            self.fixed[full] = int(schema["size"])
            out.append(f"{ind}p += {self.fixed[full]}")
        else:
            fn = f"_record{len(self.names)}"
            self.names[full] = fn
            code: list[str] = []
            for field in schema["fields"]:
                self.emit(field["type"], code, "    ", ns)
            self.functions[fn] = [f"def {fn}(d, p):", *code, "    return p"]
            out.append(f"{ind}p = {fn}(d, p)")

    def repeated(self, schema: dict[str, Any], out: list[str], ind: str, ns: str) -> None:
        """An array or a map: blocks of items, each block counted (and maybe sized)."""
        kind = schema["type"]
        count, size, start = self.var(), self.var(), self.var()
        item = schema["items"] if kind == "array" else schema["values"]
        out.append(f"{ind}while True:")
        inner = ind + "    "
        self.long(out, inner, count)
        out += [
            f"{inner}if {count} == 0:",
            f"{inner}    break",
            f"{inner}{size} = -1",
            f"{inner}if {count} < 0:",
            f"{inner}    {count} = -{count}",
            f"{inner}    {size}, p = _long(d, p)",
            f"{inner}    if {size} < 0:",
            f"{inner}        _corrupt('{kind} block size %d is negative' % {size})",
            f"{inner}_check_count({count}, len(d) - p, '{kind}')",
            f"{inner}{start} = p",
            f"{inner}for _ in range({count}):",
        ]
        items: list[str] = []
        if kind == "map":
            self.primitive("string", items, inner + "    ")
        self.emit(item, items, inner + "    ", ns)
        out += items or [f"{inner}    pass"]
        out += [
            f"{inner}if {size} >= 0 and p - {start} != {size}:",
            f"{inner}    _corrupt('{kind} block size %d, its items take %d' % "
            f"({size}, p - {start}))",
        ]

    def enum(self, full: str, out: list[str], ind: str) -> None:
        symbols, name = self.enums[full]
        index = self.var()
        self.long(out, ind, index)
        out += [
            f"{ind}if not 0 <= {index} < {symbols}:",
            f"{ind}    _bad_index('enum {name}', {index}, {symbols}, p)",
        ]

    def primitive(self, kind: str, out: list[str], ind: str) -> None:
        if kind == "null":
            return
        if kind == "boolean":
            out += [
                f"{ind}if d[p] > 1:",
                f"{ind}    _corrupt('boolean byte %#04x at byte %d (must be 0 or 1)' % (d[p], p))",
                f"{ind}p += 1",
            ]
        elif kind in ("int", "long"):
            value = self.var()
            self.long(out, ind, value)
            if kind == "int":
                out += [
                    f"{ind}if not {_INT32[0]} <= {value} <= {_INT32[1]}:",
                    f"{ind}    _corrupt('int %d is out of the 32-bit range' % {value})",
                ]
        elif kind == "float":  # a position past the end is caught by the next read or at the end
            out.append(f"{ind}p += 4")
        elif kind == "double":
            out.append(f"{ind}p += 8")
        else:  # bytes, string: fastavro checks the UTF-8 (UnicodeDecodeError -> corrupt_body)
            length = self.var()
            out += [
                f"{ind}b = d[p]",
                f"{ind}if b < 128:",
                f"{ind}    if b & 1:",
                f"{ind}        _negative('{kind}', -(b + 1) >> 1, p)",
                f"{ind}    p += 1 + (b >> 1)",
                f"{ind}else:",
                f"{ind}    {length}, p = _long(d, p)",
                f"{ind}    if {length} < 0:",
                f"{ind}        _negative('{kind}', {length}, p)",
                f"{ind}    p += {length}",
            ]


def _corrupt(detail: str) -> None:
    raise AvroStrictError("corrupt", detail)


def _bad_index(what: str, index: int, n: int, pos: int) -> None:
    raise AvroStrictError("corrupt", f"{what} index {index} before byte {pos} (valid: 0..{n - 1})")


def _negative(kind: str, length: int, pos: int) -> None:
    raise AvroStrictError("corrupt", f"{kind} length {length} at byte {pos} is negative")


def _bad_union(data: bytes, pos: int, n: int) -> None:
    index, _ = _long(data, pos)
    if 0 <= index < n:
        raise AvroStrictError("corrupt", f"union branch index {index} at byte {pos} is overlong")
    _bad_index("union branch", index, n, pos + 1)


def _check_count(count: int, left: int, what: str) -> None:
    # Every item but a null takes at least a byte: a count beyond the bytes left is a
    # lie (and would otherwise be a loop of up to 2**63 turns).
    if count > max(left, 65536):
        raise AvroStrictError("truncated", f"{what} block of {count} items, {left} bytes left")


def strict_checker(schema: Any) -> Callable[[bytes, int], int]:
    """``check(data, start)``: raises ``AvroStrictError`` unless ``data[start:]`` is exactly
    one well-formed datum of ``schema`` (expanded JSON form); returns ``len(data)``."""
    gen = _Gen()
    root: list[str] = []
    gen.emit(schema, root, "        ", "")
    lines = [line for fn in gen.functions.values() for line in fn]
    lines += ["def check(d, p):", "    try:", *(root or ["        pass"])]
    lines += [
        "    except IndexError:",
        "        raise AvroStrictError('truncated', 'the body ends at byte %d, mid-datum' % len(d))"
        " from None",
        "    if p > len(d):",
        "        raise AvroStrictError('truncated', 'the body ends at byte %d, mid-datum'"
        " % len(d))",
        "    if p != len(d):",
        "        raise AvroStrictError('trailing', '%d bytes after the Avro record'"
        " % (len(d) - p))",
        "    return p",
    ]
    namespace: dict[str, Any] = {
        "_long": _long,
        "_corrupt": _corrupt,
        "_bad_index": _bad_index,
        "_bad_union": _bad_union,
        "_negative": _negative,
        "_check_count": _check_count,
        "AvroStrictError": AvroStrictError,
    }
    exec(compile("\n".join(lines), "<avro-strict>", "exec"), namespace)  # noqa: S102 - our source
    check: Callable[[bytes, int], int] = namespace["check"]
    return check
