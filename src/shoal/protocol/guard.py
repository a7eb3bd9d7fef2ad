"""Bound a request body before kio's native decoder sees it.

kio's reader trusts every array count: it reserves room for the whole array
before reading one element, so a count of 2^32 from a 27-byte frame aborts the
process with a failed allocation that no `except` can catch. It also reads a
null (-1) array as None whether or not the schema allows null, which handlers
then iterate. This module walks the body the way the decoder will, without
building anything, and rejects the frame first: every count must be
non-negative (or null where the field is nullable) and fit in the bytes left
at the rate of the element's smallest encoding, varints are at most 5 bytes,
tagged fields stay inside their declared size, and nothing runs past the end.

The walk for each (api key, version) is planned once from kio's dataclass
schema (field metadata `kafka_type` and `tag`, `X | None` for nullability,
entity tuples for arrays) and compiled to one straight-line Python function,
as `dataclasses` does for `__init__`: it runs on every Produce and Fetch, and
an interpreter over the plan costs several times more per field. Runs of
fixed-size fields collapse to one bounds check, and arrays of fixed-size
elements are checked in O(1).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import Field, dataclass, fields
from types import NoneType, UnionType
from typing import Any, Union, get_args, get_origin

from kio.serial._introspect import (
    EntityField,
    EntityTupleField,
    PrimitiveTupleField,
    classify_field,
    get_field_tag,
    get_schema_field_type,
)

from shoal.protocol.errors import RequestDecodeError
from shoal.protocol.primitives import uvarint

__all__ = ["check_body", "guard_body", "walker_source"]

#: Encoded size of kio's fixed-width kafka types.
_FIXED_SIZES = {
    "bool": 1,
    "int8": 1,
    "uint8": 1,
    "int16": 2,
    "uint16": 2,
    "error_code": 2,
    "int32": 4,
    "uint32": 4,
    "timedelta_i32": 4,
    "int64": 8,
    "uint64": 8,
    "float64": 8,
    "timedelta_i64": 8,
    "datetime_i64": 8,
    "uuid": 16,
}

Walker = Callable[[Any, int, int], int]


class _Reject(Exception):
    """Raised by generated walkers; `check_body` names the request."""


# --- the plan: a tree of what the decoder will read -------------------------------


@dataclass(frozen=True, slots=True)
class _Fixed:
    size: int


@dataclass(frozen=True, slots=True)
class _Sized:
    """A string or bytes: a length prefix (compact uvarint, int16 or int32), then data."""

    name: str
    prefix: str  # "uvarint" | "int16" | "int32"
    nullable: bool


@dataclass(frozen=True, slots=True)
class _Array:
    name: str
    compact: bool
    nullable: bool
    item: _Node


@dataclass(frozen=True, slots=True)
class _Struct:
    name: str
    nullable: bool  # KIP-893 nullable struct: an int8 marker, -1 for null
    fields: tuple[_Node, ...]
    tags: dict[int, _Node] | None  # None: not flexible, no tagged-field section


_Node = _Fixed | _Sized | _Array | _Struct


def _nullable(hint: Any) -> bool:
    return get_origin(hint) in (UnionType, Union) and NoneType in get_args(hint)


def _primitive(name: str, kafka_type: str, flexible: bool, nullable: bool) -> _Node:
    if kafka_type in _FIXED_SIZES:
        return _Fixed(_FIXED_SIZES[kafka_type])
    if kafka_type not in ("string", "bytes", "records"):
        raise TypeError(f"no guard for kafka type {kafka_type!r} of {name}")
    if flexible:
        prefix = "uvarint"
    else:
        prefix = "int16" if kafka_type == "string" else "int32"
    return _Sized(name, prefix, nullable)


def _field_node(owner: str, field: Field[Any], flexible: bool) -> _Node:
    name = f"{owner}.{field.name}" if owner else field.name
    kind = classify_field(field)
    if isinstance(kind, EntityTupleField):
        item: _Node = _struct(name, kind.type_, nullable=False)
    elif isinstance(kind, PrimitiveTupleField):
        # kio reads array elements as non-nullable whatever the hint says.
        item = _primitive(name, get_schema_field_type(field), flexible, nullable=False)
    elif isinstance(kind, EntityField):
        return _struct(name, kind.type_, nullable=_nullable(field.type))
    else:
        return _primitive(name, get_schema_field_type(field), flexible, _nullable(field.type))
    return _Array(name, flexible, _nullable(field.type), item)


def _struct(name: str, cls: type[Any], nullable: bool) -> _Node:
    flexible = bool(cls.__flexible__)
    plain: list[_Node] = []
    tags: dict[int, _Node] = {}
    for field in fields(cls):
        node = _field_node(name, field, flexible)
        tag = get_field_tag(field)
        if tag is not None:
            tags[int(tag)] = node
        elif isinstance(node, _Fixed) and plain and isinstance(plain[-1], _Fixed):
            plain[-1] = _Fixed(plain[-1].size + node.size)
        else:
            plain.append(node)
    if not flexible and not nullable and all(isinstance(n, _Fixed) for n in plain):
        return _Fixed(sum(n.size for n in plain if isinstance(n, _Fixed)))
    return _Struct(name, nullable, tuple(plain), tags if flexible else None)


def _min_size(node: _Node) -> int:
    """The fewest bytes one value can take on the wire."""
    match node:
        case _Fixed(size):
            return size
        case _Sized(prefix=prefix):
            return {"uvarint": 1, "int16": 2, "int32": 4}[prefix]
        case _Array(compact=compact):
            return 1 if compact else 4
        case _Struct(nullable=True):
            return 1
        case _Struct(fields=parts, tags=tags):
            return sum(_min_size(p) for p in parts) + (0 if tags is None else 1)
    raise TypeError(node)


# --- code generation ---------------------------------------------------------------


class _Emitter:
    """Writes the walker's source; helpers and constants go into `namespace`."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.namespace: dict[str, Any] = {
            "_Reject": _Reject,
            "_uvarint": _uvarint,
            "_tags": _tags,
            "_i16": struct.Struct(">h").unpack_from,
            "_i32": struct.Struct(">i").unpack_from,
        }
        self._names = 0
        self._pending = 0  # fixed bytes skipped but not yet added to pos

    def const(self, value: Any) -> str:
        self._names += 1
        name = f"_k{self._names}"
        self.namespace[name] = value
        return name

    def line(self, depth: int, text: str) -> None:
        self.lines.append("    " * depth + text)

    def need(self, depth: int, nbytes: int, what: str) -> None:
        """Every read starts here, so this one check also covers the fixed
        fields skipped just before it."""
        if self._pending:
            self.line(depth, f"pos += {self._pending}")
            self._pending = 0
        test = "pos >= end" if nbytes == 1 else f"pos + {nbytes} > end"
        self.line(depth, f"if {test}: raise _Reject({what!r} + ' runs past the end')")

    def flush(self, depth: int) -> None:
        """Skip pending fixed fields at the end of a block, with their own check."""
        if self._pending:
            self.line(depth, f"pos += {self._pending}")
            self.line(depth, "if pos > end: raise _Reject('fixed fields run past the end')")
            self._pending = 0

    def uvarint(self, depth: int, what: str) -> None:
        """Leaves the value in `v` and `pos` after it."""
        self.need(depth, 1, what)
        self.line(depth, "v = buf[pos]")
        self.line(depth, "if v < 128: pos += 1")
        self.line(depth, f"else: v, pos = _uvarint(buf, pos, end, {what!r})")

    def node(self, node: _Node, depth: int, loop: int) -> None:
        match node:
            case _Fixed(size):
                self._pending += size
            case _Sized():
                self.sized(node, depth)
            case _Array():
                self.array(node, depth, loop)
            case _Struct():
                self.struct(node, depth, loop)

    def length(self, depth: int, prefix: str, name: str, nullable: bool) -> None:
        """Reads a length prefix into `v`: -1 for null, otherwise the count;
        rejects null where it is not allowed and any other negative value."""
        if prefix == "uvarint":
            self.uvarint(depth, name)
            self.line(depth, "v -= 1")
        else:
            width = 2 if prefix == "int16" else 4
            self.need(depth, width, name)
            self.line(depth, f"v = _i{width * 8}(buf, pos)[0]")
            self.line(depth, f"pos += {width}")
            self.line(depth, "if v < -1:")
            self.line(depth + 1, f"raise _Reject(f'{name}: negative length {{v}}')")
        if not nullable:
            self.line(depth, "if v == -1:")
            self.line(depth + 1, f"raise _Reject('{name}: null where the schema forbids it')")

    def sized(self, node: _Sized, depth: int) -> None:
        self.length(depth, node.prefix, node.name, node.nullable)
        self.line(depth, "if v > 0:")
        self.line(depth + 1, "pos += v")
        self.line(depth + 1, "if pos > end:")
        self.line(depth + 2, f"raise _Reject(f'{node.name}: {{v}} bytes run past the end')")

    def array(self, node: _Array, depth: int, loop: int) -> None:
        prefix = "uvarint" if node.compact else "int32"
        self.length(depth, prefix, node.name, node.nullable)
        least = _min_size(node.item)
        if least < 1:
            raise TypeError(f"{node.name}: elements of zero bytes cannot be bounded")
        self.line(depth, f"if v * {least} > end - pos:")
        self.line(
            depth + 1,
            f"raise _Reject(f'{node.name}: {{v}} elements cannot fit in {{end - pos}} bytes')",
        )
        if isinstance(node.item, _Fixed):
            self.line(depth, f"if v > 0: pos += v * {node.item.size}")
            return
        self.line(depth, f"for _i{loop} in range(v):")
        self.node(node.item, depth + 1, loop + 1)
        self.flush(depth + 1)

    def struct(self, node: _Struct, depth: int, loop: int) -> None:
        if node.nullable:
            self.need(depth, 1, node.name)
            self.line(depth, "pos += 1")
            self.line(depth, "if buf[pos - 1] != 255:")  # int8 -1 marks a null struct
            depth += 1
            self.line(depth, "pass")
        for part in node.fields:
            self.node(part, depth, loop)
        if node.tags is None:
            if node.nullable:
                self.flush(depth)
            return
        known = self.const(
            {tag: _compile(n, f"{node.name or 'body'} tag {tag}") for tag, n in node.tags.items()}
        )
        what = f"{node.name or 'body'} tagged fields"
        self.need(depth, 1, what)
        self.line(depth, "if buf[pos]:")
        self.line(depth + 1, f"pos = _tags(buf, pos, end, {known}, {what!r})")
        self.line(depth, "else:")
        self.line(depth + 1, "pos += 1")


def _compile(node: _Node, label: str) -> Walker:
    emit = _Emitter()
    emit.line(0, "def walk(buf, pos, end):")
    emit.node(node, 1, 0)
    emit.flush(1)
    emit.line(1, "return pos")
    source = "\n".join(emit.lines)
    exec(compile(source, f"<guard {label}>", "exec"), emit.namespace)
    walk: Walker = emit.namespace["walk"]
    walk.__doc__ = source
    return walk


# --- helpers the generated code calls -------------------------------------------------


def _uvarint(buf: Any, pos: int, end: int, what: str) -> tuple[int, int]:
    """Unsigned LEB128 of at most 5 bytes and 32 bits, as Kafka reads it."""
    value = 0
    for shift in range(0, 35, 7):
        if pos >= end:
            raise _Reject(f"{what}: varint runs past the end")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            if value > 0xFFFFFFFF:
                raise _Reject(f"{what}: varint exceeds 32 bits")
            return value, pos
    raise _Reject(f"{what}: varint longer than 5 bytes")


#: (start, end, replacement) of tagged-field sections to rewrite without their
#: unknown tags, in frame order; filled by one walk (synchronous, so one list
#: serves the event loop's thread).
_EDITS: list[tuple[int, int, bytes]] = []


def _tags(buf: Any, pos: int, end: int, known: dict[int, Walker], what: str) -> int:
    """A tagged-field section: count, then (tag, size, value) each. A known tag's
    value must fill exactly its declared size. Unknown ones are skipped, as Kafka
    skips them, and the section is queued for rewriting without them (kio's
    decoder refuses a tag it does not know): nothing is copied otherwise."""
    start = pos
    count, pos = _uvarint(buf, pos, end, what)
    if count * 2 > end - pos:
        raise _Reject(f"{what}: {count} fields cannot fit in {end - pos} bytes")
    kept: list[bytes | tuple[int, int]] | None = None  # set once something changes
    for i in range(count):
        entry = pos
        tag, pos = _uvarint(buf, pos, end, what)
        size, pos = _uvarint(buf, pos, end, what)
        stop = pos + size
        if stop > end:
            raise _Reject(f"{what}: tag {tag} of {size} bytes runs past the end")
        walk = known.get(tag)
        if walk is None:
            if kept is None:
                kept = [(start_entry, e) for start_entry, e in _entries(buf, start, entry, i)]
        else:
            mark = len(_EDITS)
            if walk(buf, pos, stop) != stop:
                raise _Reject(f"{what}: tag {tag} does not fill its {size} bytes")
            if len(_EDITS) > mark:  # unknown tags inside: the value changes size
                value = _apply(bytes(buf[pos:stop]), _EDITS[mark:], pos)
                del _EDITS[mark:]
                if kept is None:
                    kept = [(a, b) for a, b in _entries(buf, start, entry, i)]
                kept.append(uvarint(tag) + uvarint(len(value)) + value)
            elif kept is not None:
                kept.append((entry, stop))
        pos = stop
    if kept is not None:
        parts = [uvarint(sum(1 for _ in kept))]
        parts += [k if isinstance(k, bytes) else bytes(buf[k[0] : k[1]]) for k in kept]
        _EDITS.append((start, pos, b"".join(parts)))
    return pos


def _entries(buf: Any, start: int, upto: int, n: int) -> list[tuple[int, int]]:
    """Spans of the first `n` entries of the section at `start` (already checked)."""
    _count, pos = _uvarint(buf, start, upto, "tags")
    out = []
    for _ in range(n):
        entry = pos
        _tag, pos = _uvarint(buf, pos, upto, "tags")
        size, pos = _uvarint(buf, pos, upto, "tags")
        pos += size
        out.append((entry, pos))
    return out


def _apply(data: bytes, edits: list[tuple[int, int, bytes]], base: int) -> bytes:
    """`data` (found at `base` in the frame) with the edits' spans replaced."""
    out = bytearray()
    pos = 0
    for start, stop, replacement in edits:
        out += data[pos : start - base]
        out += replacement
        pos = stop - base
    out += data[pos:]
    return bytes(out)


# --- entry points --------------------------------------------------------------------


_WALKERS: dict[type[Any], Walker] = {}


def _walker(cls: type[Any]) -> Walker:
    walk = _WALKERS.get(cls)
    if walk is None:
        walk = _WALKERS[cls] = _compile(_struct("", cls, nullable=False), cls.__name__)
    return walk


def walker_source(cls: type[Any]) -> str:
    """The generated walk for a request class, to read when a rejection puzzles."""
    return _walker(cls).__doc__ or ""


def check_body(frame: Any, pos: int, cls: type[Any]) -> int:
    """Walk the body of `cls` at frame[pos:] and return where it ends; raise
    RequestDecodeError with a short reason when kio's decoder must not see it."""
    _EDITS.clear()
    try:
        return _walker(cls)(frame, pos, len(frame))
    except _Reject as exc:
        raise RequestDecodeError(f"malformed {cls.__name__} v{cls.__version__}: {exc}") from None
    finally:
        _EDITS.clear()


def guard_body(frame: bytes, pos: int, cls: type[Any]) -> bytes:
    """`check_body`, then the frame kio may decode: the same object, or, when a
    newer client sent tagged fields this schema does not know, a copy without
    them (Kafka skips unknown tags; kio's decoder would refuse the request)."""
    _EDITS.clear()
    try:
        _walker(cls)(frame, pos, len(frame))
        if not _EDITS:
            return frame
        return _apply(frame, _EDITS, 0)
    except _Reject as exc:
        raise RequestDecodeError(f"malformed {cls.__name__} v{cls.__version__}: {exc}") from None
    finally:
        _EDITS.clear()
