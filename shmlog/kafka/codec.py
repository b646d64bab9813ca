"""kafka/codec.py — Kafka protocol messages <-> bytes, driven by Kafka's own JSON definitions.

Owns: reading the message definitions in messages/ (Apache Kafka's schema
files, copied unchanged), compiling each (message, version) into a program of
field readers and writers once, and running it: decode(bytes) -> dict and
encode(dict) -> bytes, for request/response bodies and both header versions,
non-flexible and flexible (compact lengths, tagged fields). Field names are
the JSON names (CamelCase). Must never: know what a message means (handlers
do), or trust a length from the wire: every read is bounds-checked and a bad
frame raises DecodeError.

Why our own and not a library: the project supports Python >= 3.10 and kio
(generated from the same JSON) needs 3.11; kafka-python's protocol classes
are a client's (hand-kept per version, no broker side for several APIs we
need). Interpreting the JSON keeps one source of truth for ~40 definitions.
"""

import json
import os
import struct
import uuid as _uuid
from typing import Any

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "messages")


class DecodeError(ValueError):
    """A request body or header does not match its definition."""


# ------------------------------------------------------------ primitives

_I8, _I16, _I32, _I64 = struct.Struct(">b"), struct.Struct(">h"), struct.Struct(">i"), struct.Struct(">q")
_U16, _U32, _F64 = struct.Struct(">H"), struct.Struct(">I"), struct.Struct(">d")


def write_uvarint(out: bytearray, n: int):
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def read_uvarint(buf, pos: int):
    n = shift = 0
    while True:
        if pos >= len(buf):
            raise DecodeError("truncated varint")
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n, pos
        shift += 7
        if shift > 35:
            raise DecodeError("varint too long")


def _need(buf, pos, n):
    if n < 0 or pos + n > len(buf):
        raise DecodeError(f"truncated: need {n} bytes at {pos} of {len(buf)}")


def _fixed(st):
    size = st.size

    def read(buf, pos):
        if pos + size > len(buf):
            raise DecodeError(f"truncated at {pos}")
        return st.unpack_from(buf, pos)[0], pos + size

    def write(out, v):
        out += st.pack(v)

    return read, write


def _bool():
    def read(buf, pos):
        _need(buf, pos, 1)
        return buf[pos] != 0, pos + 1

    def write(out, v):
        out.append(1 if v else 0)

    return read, write


def _uuid_rw():
    def read(buf, pos):
        _need(buf, pos, 16)
        return bytes(buf[pos : pos + 16]), pos + 16

    def write(out, v):
        out += (v or bytes(16)) if not isinstance(v, _uuid.UUID) else v.bytes

    return read, write


def _blob(kind: str, compact: bool, nullable: bool):
    """string / bytes / records, classic (int16/int32 length) or compact (uvarint N+1)."""
    as_str = kind == "string"

    def read(buf, pos):
        if compact:
            n, pos = read_uvarint(buf, pos)
            n -= 1
        elif as_str:
            _need(buf, pos, 2)
            n = _I16.unpack_from(buf, pos)[0]
            pos += 2
        else:
            _need(buf, pos, 4)
            n = _I32.unpack_from(buf, pos)[0]
            pos += 4
        if n < 0:
            if n == -1 and (nullable or kind == "records"):
                return None, pos
            raise DecodeError(f"negative length {n} for a non-nullable {kind}")
        _need(buf, pos, n)
        v = buf[pos : pos + n]
        if as_str:
            try:
                v = bytes(v).decode()
            except UnicodeDecodeError:
                raise DecodeError("string is not UTF-8") from None
        return v, pos + n

    def write(out, v):
        if v is None:
            if compact:
                out.append(0)
            else:
                out += _I16.pack(-1) if as_str else _I32.pack(-1)
            return
        if as_str:
            v = v.encode()
        if compact:
            write_uvarint(out, len(v) + 1)
        else:
            out += _I16.pack(len(v)) if as_str else _I32.pack(len(v))
        out += v

    return read, write


def _array(elem_read, elem_write, compact: bool, nullable: bool):
    def read(buf, pos):
        if compact:
            n, pos = read_uvarint(buf, pos)
            n -= 1
        else:
            _need(buf, pos, 4)
            n = _I32.unpack_from(buf, pos)[0]
            pos += 4
        if n < 0:
            # -1 is null, and only where the schema says the field is nullable at this
            # version: Kafka's broker refuses a null non-nullable array as a malformed
            # request (handlers may iterate every non-nullable array without a check)
            if n == -1 and nullable:
                return None, pos
            raise DecodeError(f"negative array length {n}" if n != -1 else "null for a non-nullable array")
        if n > len(buf) - pos:  # every element takes at least one byte
            raise DecodeError(f"array of {n} cannot fit in {len(buf) - pos} bytes")
        items = []
        for _ in range(n):
            v, pos = elem_read(buf, pos)
            items.append(v)
        return items, pos

    def write(out, v):
        if v is None:
            if compact:
                out.append(0)
            else:
                out += _I32.pack(-1)
            return
        if compact:
            write_uvarint(out, len(v) + 1)
        else:
            out += _I32.pack(len(v))
        for item in v:
            elem_write(out, item)

    return read, write


_PRIMS = {
    "int8": _fixed(_I8),
    "int16": _fixed(_I16),
    "int32": _fixed(_I32),
    "int64": _fixed(_I64),
    "uint16": _fixed(_U16),
    "uint32": _fixed(_U32),
    "float64": _fixed(_F64),
    "bool": _bool(),
    "uuid": _uuid_rw(),
}


# ------------------------------------------------------------ versions


def parse_versions(spec) -> tuple[int, int]:
    """'3+' -> (3, big), '1-4' -> (1, 4), '2' -> (2, 2), 'none' -> (1, 0) (empty)."""
    if spec is None or spec == "none":
        return 1, 0
    spec = str(spec)
    if spec.endswith("+"):
        return int(spec[:-1]), 1 << 15
    if "-" in spec:
        a, b = spec.split("-")
        return int(a), int(b)
    return int(spec), int(spec)


def _in(rng, v):
    return rng[0] <= v <= rng[1]


def _default(field, typ: str):
    d = field.get("default")
    if typ.startswith("[]"):
        return []
    if d == "null":
        return None
    if typ in ("int8", "int16", "int32", "int64", "uint16", "uint32"):
        if d is None:
            return 0
        return int(d, 0) if isinstance(d, str) else int(d)
    if typ == "float64":
        return float(d or 0)
    if typ == "bool":
        return d == "true" or d is True
    if typ == "string":
        return d if isinstance(d, str) else ""
    if typ in ("bytes", "records"):
        return b""
    if typ == "uuid":
        return bytes(16)
    return None  # a struct: absent


# ------------------------------------------------------------ messages


def load_definition(name: str) -> dict:
    with open(os.path.join(HERE, name + ".json")) as f:
        return json.loads(strip_comments(f.read()))


def strip_comments(text: str) -> str:
    """Drops // comments outside JSON strings (the files are JSON plus line comments)."""
    out, i, n, in_str = [], 0, len(text), False
    while i < n:
        c = text[i]
        if in_str:
            out.append(c)
            if c == "\\":
                out.append(text[i + 1])
                i += 1
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
            out.append(c)
        elif c == "/" and text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        else:
            out.append(c)
        i += 1
    return "".join(out)


# Versions a copied definition no longer lists but still describes field by field: Kafka 4.0
# dropped DescribeConfigs v0 (KIP-896) and its file says "1-4", yet every field keeps its v0
# range ("IsDefault" is "versions": "0"); Kafka 3.x's copy of the same file says "0-4".
# aiokafka's admin client still has v0. The files stay byte for byte; the range is widened here.
VALID_VERSIONS = {"DescribeConfigsRequest": "0-4", "DescribeConfigsResponse": "0-4"}


class Message:
    """One message definition (for example ProduceRequest): encode/decode at any valid version."""

    def __init__(self, name: str):
        self.d = load_definition(name)
        self.name = name
        self.api_key = self.d.get("apiKey")
        self.valid = parse_versions(VALID_VERSIONS.get(name, self.d["validVersions"]))
        self.flexible = parse_versions(self.d.get("flexibleVersions", "none"))
        self.common = {s["name"]: s for s in self.d.get("commonStructs", [])}
        self._programs: dict[int, Any] = {}

    def is_flexible(self, version: int) -> bool:
        return _in(self.flexible, version)

    def has_version(self, version: int) -> bool:
        return _in(self.valid, version)

    def top_level(self, version: int) -> set[str]:
        """The names of the message's own fields (not its structs') at version."""
        return {f["name"] for f in self.d["fields"] if _in(parse_versions(f.get("versions")), version)}

    def _program(self, version: int):
        prog = self._programs.get(version)
        if prog is None:
            if not _in(self.valid, version):
                raise DecodeError(f"{self.name} has no version {version}")
            prog = self._programs[version] = self._struct(self.d["fields"], version, self.is_flexible(version))
        return prog

    def _field_rw(self, f, typ: str, version: int, flex: bool):
        nullable = _in(parse_versions(f.get("nullableVersions")), version)
        if typ.startswith("[]"):
            inner = typ[2:]
            if inner in _PRIMS or inner in ("string", "bytes"):
                er, ew = self._field_rw({}, inner, version, flex)
            else:
                er, ew = self._struct(self._sub_fields(f, inner), version, flex)
            return _array(er, ew, flex, nullable)
        if typ in _PRIMS:
            return _PRIMS[typ]
        if typ in ("string", "bytes", "records"):
            return _blob(typ, flex, nullable)
        return self._struct(self._sub_fields(f, typ), version, flex)  # a single struct

    def _sub_fields(self, f, typ):
        if "fields" in f:
            return f["fields"]
        if typ in self.common:
            return self.common[typ]["fields"]
        raise KeyError(f"{self.name}: no definition of struct {typ}")

    def _struct(self, fields, version: int, flex: bool):
        plain, tagged = [], {}
        for f in fields:
            if not _in(parse_versions(f.get("versions")), version):
                continue
            typ = f["type"]
            fflex = flex and f.get("flexibleVersions") != "none"
            r, w = self._field_rw(f, typ, version, fflex)
            nullable = _in(parse_versions(f.get("nullableVersions")), version)
            entry = (f["name"], r, w, _default(f, typ), nullable)
            if flex and "tag" in f and _in(parse_versions(f.get("taggedVersions")), version):
                tagged[f["tag"]] = entry
            else:
                plain.append(entry)
        tags_sorted = sorted(tagged.items())

        def read(buf, pos):
            obj = {}
            for name, r, _, _, _ in plain:
                obj[name], pos = r(buf, pos)
            if flex:
                n, pos = read_uvarint(buf, pos)
                for _ in range(n):
                    tag, pos = read_uvarint(buf, pos)
                    size, pos = read_uvarint(buf, pos)
                    _need(buf, pos, size)
                    t = tagged.get(tag)
                    if t is not None:
                        obj[t[0]], _ = t[1](buf[: pos + size], pos)
                    pos += size
                for name, _, _, d, _ in tagged.values():
                    obj.setdefault(name, d)
            return obj, pos

        def write(out, obj):
            get = obj.get
            for name, _, w, d, nullable in plain:
                v = get(name, d)
                if v is None and not nullable:
                    v = d
                w(out, v)
            if flex:
                present = [(tag, t) for tag, t in tags_sorted if get(t[0]) not in (None, t[3])]
                write_uvarint(out, len(present))
                for tag, (name, _, w, _, _) in present:
                    b = bytearray()
                    w(b, obj[name])
                    write_uvarint(out, tag)
                    write_uvarint(out, len(b))
                    out += b

        return read, write

    def decode(self, buf, version: int, pos: int = 0):
        """(dict, end position)"""
        try:
            return self._program(version)[0](buf, pos)
        except (struct.error, IndexError, RecursionError) as e:
            raise DecodeError(f"{self.name} v{version}: {e}") from None

    def encode_into(self, out: bytearray, obj: dict, version: int):
        self._program(version)[1](out, obj)

    def encode(self, obj: dict, version: int) -> bytes:
        out = bytearray()
        self.encode_into(out, obj, version)
        return bytes(out)


class Api:
    """A request/response pair."""

    def __init__(self, name: str):
        self.request = Message(name + "Request")
        self.response = Message(name + "Response")
        self.key = self.request.api_key
        self.name = name


API_NAMES = (
    "Produce",
    "Fetch",
    "ListOffsets",
    "Metadata",
    "OffsetCommit",
    "OffsetFetch",
    "FindCoordinator",
    "JoinGroup",
    "Heartbeat",
    "LeaveGroup",
    "SyncGroup",
    "DescribeGroups",
    "ListGroups",
    "ApiVersions",
    "CreateTopics",
    "DeleteTopics",
    "InitProducerId",
    "AddPartitionsToTxn",
    "AddOffsetsToTxn",
    "EndTxn",
    "TxnOffsetCommit",
    "OffsetForLeaderEpoch",
    "DeleteRecords",
    "CreatePartitions",
    "DeleteGroups",
    "OffsetDelete",
    "DescribeCluster",
    "DescribeConfigs",
    "AlterConfigs",
    "IncrementalAlterConfigs",
)


class Schema:
    """Every API the listener knows, by key, and the two headers."""

    def __init__(self):
        self.apis = {}
        for n in API_NAMES:
            a = Api(n)
            self.apis[a.key] = a
        self.request_header = Message("RequestHeader")
        self.response_header = Message("ResponseHeader")

    def request_header_version(self, api_key: int, version: int) -> int:
        a = self.apis.get(api_key)
        return 2 if a is not None and a.request.is_flexible(version) else 1

    def response_header_version(self, api_key: int, version: int) -> int:
        if api_key == 18:  # ApiVersions answers with header v0 at every version (KIP-511)
            return 0
        a = self.apis.get(api_key)
        return 1 if a is not None and a.response.is_flexible(version) else 0

    def decode_request(self, frame):
        """(api_key, version, correlation_id, client_id, header_end) of a request frame."""
        if len(frame) < 8:
            raise DecodeError("request shorter than its header")
        key, version, corr = struct.unpack_from(">hhi", frame, 0)
        hv = self.request_header_version(key, version)
        hdr, pos = self.request_header.decode(frame, hv)
        return key, version, corr, hdr.get("ClientId"), pos

    def encode_response(self, api_key: int, version: int, corr: int, body: dict) -> bytearray:
        out = bytearray(4)
        out += _I32.pack(corr)
        if self.response_header_version(api_key, version) == 1:
            out.append(0)  # no tagged fields
        self.apis[api_key].response.encode_into(out, body, version)
        struct.pack_into(">i", out, 0, len(out) - 4)
        return out  # a bytearray: the transport takes it without another copy


_schema = None


def schema() -> Schema:
    global _schema
    if _schema is None:
        _schema = Schema()
    return _schema
