"""Strict Avro: read a binary body only if it is exactly one well-formed datum of a schema.

fastavro reads leniently where the Avro specification leaves no room: a union branch
index of -1 is read as the *last* branch (Python's negative indexing), so is a negative
enum index; any boolean byte other than 0x00 is read as ``true`` (0x02 included); a
negative string length reads "to the end". Such bytes are not Avro, and a pipeline that
accepts them accepts data no other consumer of the topic can read.

Two functions compiled once per schema (expanded JSON form) from generated Python source
(``streams.wire.avro_gen``), straight-line per record, one walk over the bytes each:

* ``strict_checker(schema)`` -> ``check(data, pos) -> end`` walks the bytes without building
  values (about a fifth of fastavro's own decode time on generated touchpoints: 5.9 µs
  against 25 µs, same run). The codec runs it before fastavro where fastavro still
  decodes: writer schemas that need resolution to the reader's (older versions).
* ``strict_decoder(schema)`` -> ``decode(data, pos) -> value`` makes the same checks in the
  same order and builds the value in the same walk, equal to what fastavro's
  ``schemaless_reader(..., return_record_name=True)`` returns without a reader schema
  (``tests/unit/wire/test_avro_decode.py`` holds it to that): the codec's path when the
  writer schema is the reader's, one pass instead of check + fastavro (12.5 µs against
  37.1 µs per generated touchpoint, same run; README, Performance). It raises
  ``UnsupportedSchemaError`` at compile time for a logical type fastavro would convert into
  an object (the codec hands it timestamps as plain longs).

Both raise ``AvroStrictError`` at the first violation:

* union branch and enum indexes outside ``[0, n)`` (and union indexes written in more
  than one byte, which no Avro writer does);
* booleans other than 0x00 / 0x01;
* ints and longs whose variable-length encoding is longer than 5 / 10 bytes or whose
  value is out of the 32 / 64-bit range;
* negative or overlong string/bytes lengths, array/map block counts and block sizes
  that do not match the bytes that follow;
* a body that ends early (``truncated``) or goes on after the datum (``trailing``);
* (decoder) a string that is not UTF-8 (``corrupt``, fastavro's ``UnicodeDecodeError``).

Every message the codec accepts is one that any conforming Avro reader reads the same way.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from streams.wire.avro_gen import INT64, SourceGen, UnsupportedSchemaError

__all__ = ["AvroStrictError", "UnsupportedSchemaError", "strict_checker", "strict_decoder"]

_TRUNCATED = "the body ends at byte %d, mid-datum"


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
    if not INT64[0] <= value <= INT64[1]:
        raise AvroStrictError("corrupt", f"long {value} is out of the 64-bit range")
    return value, pos


def _long_fast(data: bytes, pos: int) -> tuple[int, int]:
    """``_long`` for a number of up to 9 bytes (timestamps take 6) without its loop over
    ``range``; a longer or truncated one goes to ``_long``, which says what is wrong."""
    start = pos
    try:
        b = data[pos]
        result = b & 0x7F
        shift = 7
        while b > 0x7F:
            pos += 1
            b = data[pos]
            result |= (b & 0x7F) << shift
            shift += 7
            if shift > 63:  # a 10th byte: the 64-bit range and overlong checks
                return _long(data, start)
    except IndexError:
        return _long(data, start)
    return (result >> 1) ^ -(result & 1), pos + 1


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


def _fail(data: bytes, start: int, error: Exception, check: Callable[[bytes, int], int]) -> None:
    """The decoder met an IndexError, struct.error or UnicodeDecodeError: the checker (same
    walk, no values) says what is wrong with the bytes, as it would have before this
    decoder existed; bytes it passes hold a string that is not UTF-8."""
    check(data, start)
    raise AvroStrictError("corrupt", f"{type(error).__name__}: {error}")


def _compile(gen: SourceGen, schema: Any, entry: list[str], name: str) -> Any:
    root: list[str] = []
    gen.prepare(schema)
    gen.emit(schema, root, "        ", "", "value")
    lines = [line for fn in gen.functions.values() for line in fn]
    lines += [*entry, "    try:", *(root or ["        pass"])]
    lines += [
        *_handlers(gen.values),
        "    if p > len(d):",
        f"        raise AvroStrictError('truncated', '{_TRUNCATED}' % len(d))",
        "    if p != len(d):",
        "        raise AvroStrictError('trailing', '%d bytes after the Avro record'"
        " % (len(d) - p))",
        f"    return {'value' if gen.values else 'p'}",
    ]
    namespace: dict[str, Any] = {
        "_long": _long_fast,
        "_corrupt": _corrupt,
        "_bad_index": _bad_index,
        "_bad_union": _bad_union,
        "_negative": _negative,
        "_check_count": _check_count,
        "_float": struct.Struct("<f").unpack_from,
        "_double": struct.Struct("<d").unpack_from,
        "_fail": _fail,
        "_StructError": struct.error,
        "AvroStrictError": AvroStrictError,
    }
    if gen.values:
        namespace["_check"] = strict_checker(schema)
    exec(compile("\n".join(lines), f"<avro-{name}>", "exec"), namespace)  # noqa: S102 - our source
    return namespace[name]


def _handlers(values: bool) -> list[str]:
    if not values:
        return [
            "    except IndexError:",
            f"        raise AvroStrictError('truncated', '{_TRUNCATED}' % len(d)) from None",
        ]
    return [
        "    except (IndexError, _StructError, UnicodeDecodeError) as e:",
        "        _fail(d, s, e, _check)",
        "        raise",  # never reached: _fail raises
    ]


def strict_checker(schema: Any) -> Callable[[bytes, int], int]:
    """``check(data, start)``: raises ``AvroStrictError`` unless ``data[start:]`` is exactly
    one well-formed datum of ``schema`` (expanded JSON form); returns ``len(data)``."""
    check: Callable[[bytes, int], int] = _compile(
        SourceGen(values=False), schema, ["def check(d, p):"], "check"
    )
    return check


def strict_decoder(schema: Any) -> Callable[[bytes, int], Any]:
    """``decode(data, start)``: the value of ``data[start:]``, which must be exactly one
    well-formed datum of ``schema`` (expanded JSON form, timestamps as plain longs), as
    fastavro reads it with ``return_record_name=True``; raises ``AvroStrictError`` as the
    checker does (and for a string that is not UTF-8). Raises ``UnsupportedSchemaError``
    for a schema with a logical type (fastavro converts those; use it there)."""
    decode: Callable[[bytes, int], Any] = _compile(
        SourceGen(values=True), schema, ["def decode(d, p):", "    s = p"], "decode"
    )
    return decode
