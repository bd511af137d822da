"""Python source for the strict Avro walks of ``streams.wire.avro_strict``.

One generator, two outputs from the same walk: the checker (``values=False``) only moves the
position and raises at the first violation; the decoder (``values=True``) makes the same
checks in the same order and also builds the value, in the shape fastavro's
``schemaless_reader(..., return_record_name=True)`` gives without a reader schema.

Generated code conventions: ``d`` is the data, ``p`` the position, ``b`` a scratch byte; every
other local comes from ``var()``. A record the schema uses by name somewhere (or one nested
deep) becomes a function (``_recordN(d, p)``, returning ``p`` or ``(value, p)``); everything
else is straight-line code in its caller (a closure per field measured ~3x slower than
fastavro's own decode; records inlined rather than called saved ~10 % of the decoder).
Runtime helpers (``_long``, ``_corrupt`` ...) are supplied by ``avro_strict`` when the source
is compiled.
"""

from __future__ import annotations

from typing import Any

__all__ = ["INT32", "INT64", "PRIMITIVE", "SourceGen", "UnsupportedSchemaError"]

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
PRIMITIVE = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_NAMED = ("record", "error", "enum", "fixed")
_KEYWORDS = frozenset({*_NAMED, "array", "map"})
_INLINE_INDENT = 48  # deeper, a record is a function: Python allows 20 nested loops/try


class UnsupportedSchemaError(ValueError):
    """The decoder cannot build values for this schema the way fastavro does (a logical
    type fastavro converts): the caller reads it with fastavro instead."""


class SourceGen:
    """Lines of generated source; ``values`` selects the decoder (True) or the checker."""

    def __init__(self, *, values: bool) -> None:
        self.values = values
        self.functions: dict[str, list[str]] = {}  # function name -> lines
        self.names: dict[str, str] = {}  # full Avro name -> function name
        self.enums: dict[str, tuple[str, ...]] = {}
        self.fixed: dict[str, int] = {}
        self.referenced: set[str] = set()  # names used by name somewhere (as written)
        self.counter = 0

    def prepare(self, schema: Any) -> None:
        """Note every name ``schema`` uses by name: those records become functions."""
        if isinstance(schema, str):
            if schema not in PRIMITIVE:
                self.referenced.add(schema)
        elif isinstance(schema, list):
            for branch in schema:
                self.prepare(branch)
        elif isinstance(schema, dict):
            kind = schema.get("type")
            if not isinstance(kind, str) or kind not in _KEYWORDS:
                self.prepare(kind)
            for key in ("items", "values"):
                if key in schema:
                    self.prepare(schema[key])
            for field in schema.get("fields", []):
                self.prepare(field["type"])

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

    def emit(self, schema: Any, out: list[str], ind: str, ns: str, target: str) -> None:
        """Code that reads one datum of ``schema`` at ``p`` (into ``target`` for values)."""
        if isinstance(schema, list):
            self.union(schema, out, ind, ns, target)
            return
        if isinstance(schema, dict) and schema["type"] in PRIMITIVE:
            self.unsupported(schema)
            schema = schema["type"]  # {"type": "long", ...}
        if isinstance(schema, str):
            if schema in PRIMITIVE:
                self.primitive(schema, out, ind, target)
            else:
                self.reference(schema, out, ind, ns, target)
            return
        kind = schema["type"]
        if kind in _NAMED:
            self.named(schema, out, ind, ns, target)
        elif kind in ("array", "map"):
            self.repeated(schema, out, ind, ns, target)
        else:
            raise ValueError(f"unsupported Avro type {kind!r}")

    def unsupported(self, schema: dict[str, Any]) -> None:
        # fastavro turns logical types into Python objects (Decimal, UUID, date, datetime);
        # the codec hands the decoder its schemas with timestamps already plain longs.
        if self.values and "logicalType" in schema:
            raise UnsupportedSchemaError(f"logical type {schema['logicalType']!r}")

    def full_name(self, schema: str, ns: str) -> str:
        full = schema if "." in schema or not ns else f"{ns}.{schema}"
        if full not in self.names and full not in self.enums and full not in self.fixed:
            if schema in self.names or schema in self.enums or schema in self.fixed:
                return schema
        return full

    def union(self, schema: list[Any], out: list[str], ind: str, ns: str, target: str) -> None:
        # Branch i is the one byte 2*i (zig-zag); any other byte is out of range, or an
        # overlong encoding no Avro writer produces: both corrupt.
        out += [f"{ind}b = d[p]", f"{ind}p += 1"]
        for i, branch in enumerate(schema):
            out.append(f"{ind}{'if' if i == 0 else 'elif'} b == {2 * i}:")
            body: list[str] = []
            self.emit(branch, body, ind + "    ", ns, target)
            tag = self.branch_name(branch, ns)
            if self.values and tag is not None:
                body.append(f"{ind}    {target} = ({tag!r}, {target})")
            out += body or [f"{ind}    pass"]
        out += [
            f"{ind}else:",
            f"{ind}    _bad_union(d, p - 1, {len(schema)})",
        ]

    def branch_name(self, branch: Any, ns: str) -> str | None:
        """The name fastavro's ``return_record_name`` pairs a union branch's value with: a
        record defined in the union, or any named type the union refers to by name (an enum,
        fixed or error defined in the union is returned bare)."""
        if isinstance(branch, dict) and branch["type"] == "record":
            return _full(branch, ns)
        if isinstance(branch, str) and branch not in PRIMITIVE:
            return self.full_name(branch, ns)
        return None

    def reference(self, schema: str, out: list[str], ind: str, ns: str, target: str) -> None:
        """A named type used by name (defined earlier)."""
        full = self.full_name(schema, ns)
        if full in self.enums:
            self.enum(full, out, ind, target)
        elif full in self.fixed:
            self.skip(out, ind, self.fixed[full], target)
        elif full in self.names:
            fn = self.names[full]
            out.append(f"{ind}{target}, p = {fn}(d, p)" if self.values else f"{ind}p = {fn}(d, p)")
        else:
            raise ValueError(f"unknown named type {schema!r}")

    def named(self, schema: dict[str, Any], out: list[str], ind: str, ns: str, target: str) -> None:
        """A record, error, enum or fixed defined here."""
        kind = schema["type"]
        full = _full(schema, ns)
        ns = full.rsplit(".", 1)[0] if "." in full else ""
        if kind == "enum":
            self.enums[full] = tuple(schema["symbols"])
            self.enum(full, out, ind, target)
        elif kind == "fixed":
            self.unsupported(schema)
            self.fixed[full] = int(schema["size"])
            self.skip(out, ind, self.fixed[full], target)
        elif (
            full in self.referenced
            or full.rsplit(".", 1)[-1] in self.referenced
            or len(ind) > _INLINE_INDENT
        ):
            fn = f"_record{len(self.names)}"
            self.names[full] = fn
            code: list[str] = []
            built = self.fields(schema["fields"], code, "    ", ns)
            ret = f"{built}, p" if self.values else "p"
            self.functions[fn] = [f"def {fn}(d, p):", *code, f"    return {ret}"]
            self.reference(full, out, ind, ns, target)
        else:  # used once, here: inline (a call and a returned pair saved per record)
            built = self.fields(schema["fields"], out, ind, ns)
            if self.values:
                out.append(f"{ind}{target} = {built}")

    def fields(self, fields: list[dict[str, Any]], out: list[str], ind: str, ns: str) -> str:
        """Code reading a record's fields into fresh variables; the record's dict display."""
        values: list[str] = []
        for field in fields:
            value = self.var()
            self.emit(field["type"], out, ind, ns, value)
            values.append(f"{field['name']!r}: {value}")
        return f"{{{', '.join(values)}}}"

    def skip(self, out: list[str], ind: str, size: int, target: str) -> None:
        """A fixed: ``size`` bytes (a position past the end is caught by the next read or at
        the end)."""
        if self.values:
            out.append(f"{ind}{target} = d[p:p + {size}]")
        out.append(f"{ind}p += {size}")

    def repeated(
        self, schema: dict[str, Any], out: list[str], ind: str, ns: str, target: str
    ) -> None:
        """An array or a map: blocks of items, each block counted (and maybe sized)."""
        kind = schema["type"]
        count, size, start = self.var(), self.var(), self.var()
        item = schema["items"] if kind == "array" else schema["values"]
        if self.values:
            out.append(f"{ind}{target} = {'[]' if kind == 'array' else '{}'}")
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
        key, value = self.var(), self.var()
        if kind == "map":
            self.primitive("string", items, inner + "    ", key)
        self.emit(item, items, inner + "    ", ns, value)
        if self.values:
            add = f"{target}.append({value})" if kind == "array" else f"{target}[{key}] = {value}"
            items.append(f"{inner}    {add}")
        out += items or [f"{inner}    pass"]
        out += [
            f"{inner}if {size} >= 0 and p - {start} != {size}:",
            f"{inner}    _corrupt('{kind} block size %d, its items take %d' % "
            f"({size}, p - {start}))",
        ]

    def enum(self, full: str, out: list[str], ind: str, target: str) -> None:
        symbols = self.enums[full]
        index = self.var()
        self.long(out, ind, index)
        out += [
            f"{ind}if not 0 <= {index} < {len(symbols)}:",
            f"{ind}    _bad_index('enum {full}', {index}, {len(symbols)}, p)",
        ]
        if self.values:
            out.append(f"{ind}{target} = {symbols!r}[{index}]")

    def primitive(self, kind: str, out: list[str], ind: str, target: str) -> None:
        if kind == "null":
            if self.values:
                out.append(f"{ind}{target} = None")
        elif kind == "boolean":
            self.boolean(out, ind, target)
        elif kind in ("int", "long"):
            self.long(out, ind, target)
            if kind == "int":
                out += [
                    f"{ind}if not {INT32[0]} <= {target} <= {INT32[1]}:",
                    f"{ind}    _corrupt('int %d is out of the 32-bit range' % {target})",
                ]
        elif kind in ("float", "double"):
            # a position past the end is caught by the next read or at the end (checker);
            # struct.error in the decoder, which then lets the checker say what is wrong
            if self.values:
                out.append(f"{ind}{target} = _{kind}(d, p)[0]")
            out.append(f"{ind}p += {4 if kind == 'float' else 8}")
        else:
            self.blob(kind, out, ind, target)

    def boolean(self, out: list[str], ind: str, target: str) -> None:
        out += [
            f"{ind}b = d[p]",
            f"{ind}if b > 1:",
            f"{ind}    _corrupt('boolean byte %#04x at byte %d (must be 0 or 1)' % (b, p))",
        ]
        if self.values:
            out.append(f"{ind}{target} = b == 1")
        out.append(f"{ind}p += 1")

    def blob(self, kind: str, out: list[str], ind: str, target: str) -> None:
        """bytes or string: a length, then the bytes (strings must be UTF-8: the decoder's
        UnicodeDecodeError, fastavro's after the checker)."""
        length = self.var()
        read = "" if kind == "bytes" else ".decode()"
        out += [
            f"{ind}b = d[p]",
            f"{ind}if b < 128:",
            f"{ind}    if b & 1:",
            f"{ind}        _negative('{kind}', -(b + 1) >> 1, p)",
        ]
        if self.values:
            out += [
                f"{ind}    {length} = p + 1 + (b >> 1)",
                f"{ind}    {target} = d[p + 1:{length}]{read}",
                f"{ind}    p = {length}",
            ]
        else:
            out.append(f"{ind}    p += 1 + (b >> 1)")
        out += [
            f"{ind}else:",
            f"{ind}    {length}, p = _long(d, p)",
            f"{ind}    if {length} < 0:",
            f"{ind}        _negative('{kind}', {length}, p)",
        ]
        if self.values:
            out.append(f"{ind}    {target} = d[p:p + {length}]{read}")
        out.append(f"{ind}    p += {length}")


def _full(schema: dict[str, Any], ns: str) -> str:
    """The full name of a named type defined with ``ns`` as the enclosing namespace."""
    name: str = schema["name"]
    ns = schema.get("namespace", ns)
    return name if "." in name or not ns else f"{ns}.{name}"
