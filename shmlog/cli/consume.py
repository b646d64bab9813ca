"""cli/consume.py — `shmlog consume`: formatted records out, like `kcat -C`.

Owns: the -f format language (%t %p %o %k %s %K %S %T %h, backslash
escapes), the -o start positions (beginning, end, stored, N, -N, @time),
-e (exit once every partition was read to its end), -c (count), -G (a
consumer group), the --json record lines, and kcat's notices on stderr
("% Reached end of topic T [p] at offset N", an out-of-range -o N). Must never: print a record
twice or out of order within a partition.
"""

import base64
import json
import sys

from .. import errors
from . import common

EPILOG = r"""examples:
  shmlog consume orders -o beginning -e                    # everything so far, then exit
  shmlog consume orders -f '%t[%p]@%o %k=%s\n'            # topic[partition]@offset key=value
  shmlog consume orders -o -10 -e                          # the last 10 records of each partition
  shmlog consume orders -o @2026-11-25T12:00:00 -c 100     # 100 records from that time on
  shmlog consume orders -p 0 -o 42 -c 1 --json             # one record as a JSON line
  shmlog consume orders -G billing                         # as a member of group billing (commits)

format: %t topic  %p partition  %o offset  %k key  %s value  %K key length  %S value length
        %T timestamp (ms)  %h headers (k=v,k2=v2)  %% a percent sign;  escapes \n \r \t \0 \\ \xHH
        A null key or value prints as nothing (its length as -1). Default: '%s\n', or '%k<DELIM>%s\n' with -K.
"""

FIELDS = {"t", "p", "o", "k", "s", "K", "S", "T", "h"}


def compile_format(fmt: str):
    """-f text -> list of bytes literals and single-letter field codes."""
    parts: list[bytes | str] = []
    lit = bytearray()
    raw = common.unescape(fmt)
    i = 0
    while i < len(raw):
        c = raw[i : i + 1]
        if c == b"%":
            code = raw[i + 1 : i + 2].decode("latin-1")
            if code == "%":
                lit += b"%"
            elif code in FIELDS:
                if lit:
                    parts.append(bytes(lit))
                    lit = bytearray()
                parts.append(code)
            else:
                raise common.CommandError(
                    f"unknown format field %{code or '(end)'} in -f {fmt!r}; "
                    f"use one of {' '.join('%' + f for f in sorted(FIELDS))}"
                )
            i += 2
            continue
        lit += c
        i += 1
    if lit:
        parts.append(bytes(lit))
    return parts


def _headers_text(headers) -> bytes:
    return b",".join(k.encode() + b"=" + (v or b"") for k, v in headers)


def render(parts, m) -> bytes:
    out = []
    for p in parts:
        if type(p) is bytes:
            out.append(p)
        elif p == "s":
            out.append(m.value or b"")
        elif p == "k":
            out.append(m.key or b"")
        elif p == "o":
            out.append(b"%d" % m.offset)
        elif p == "p":
            out.append(b"%d" % m.partition)
        elif p == "t":
            out.append(m.topic.encode())
        elif p == "T":
            out.append(b"%d" % m.timestamp_ms)
        elif p == "S":
            out.append(b"%d" % (-1 if m.value is None else len(m.value)))
        elif p == "K":
            out.append(b"%d" % (-1 if m.key is None else len(m.key)))
        elif p == "h":
            out.append(_headers_text(m.headers))
    return b"".join(out)


def _text_or_b64(obj: dict, name: str, data):
    """JSON has no bytes: UTF-8 text as a string, anything else as NAME_b64."""
    if data is None:
        obj[name] = None
        return
    try:
        obj[name] = data.decode("utf-8")
    except UnicodeDecodeError:
        obj[name + "_b64"] = base64.b64encode(data).decode()


def message_json(m) -> str:
    obj = {"topic": m.topic, "partition": m.partition, "offset": m.offset, "timestamp_ms": m.timestamp_ms}
    _text_or_b64(obj, "key", m.key)
    _text_or_b64(obj, "value", m.value)
    hdrs = []
    for k, v in m.headers:
        h = {"key": k}
        _text_or_b64(h, "value", v)
        hdrs.append(h)
    obj["headers"] = hdrs
    return json.dumps(obj)


def parse_offset(spec: str):
    """-o value -> ("beginning"|"end"|"stored", None) | ("abs"|"tail", N) | ("time", ms)."""
    s = spec.strip()
    if s in ("beginning", "earliest"):
        return "beginning", None
    if s in ("end", "latest"):
        return "end", None
    if s == "stored":
        return "stored", None
    if s.startswith("@") or s.startswith("s@"):
        return "time", common.parse_time_ms(s.split("@", 1)[1])
    if s.lstrip("-").isdigit():
        n = int(s)
        return ("tail", -n) if s.startswith("-") else ("abs", n)
    raise common.CommandError(
        f"-o {spec!r}: use beginning, end, stored, N, -N or @TIME (ms since the epoch or ISO-8601)"
    )


def start_offsets(log, topics, partition, kind, n, warn=None):
    """[(topic, partition, offset or None)] for the assign-mode consumer. An
    absolute offset outside the log is clamped to it, and warn(text) says so."""
    out = []
    probe = None
    try:
        for t in topics:
            d = log.describe_topic(t)
            parts = d.partitions
            if partition is not None:
                if not 0 <= partition < len(parts):
                    raise errors.UnknownTopicOrPartition(
                        f"topic {t!r} has partitions 0..{len(parts) - 1}, not {partition}"
                    )
                parts = [parts[partition]]
            for p in parts:
                start, end = p.log_start_offset, p.end_offset
                if kind == "beginning":
                    off = start
                elif kind == "end":
                    off = end
                elif kind == "abs":
                    off = min(max(n, start), end)
                    if off != n and warn is not None:
                        warn(
                            f"offset {n} is out of range for {t} [{p.partition}] (the log holds {start}..{end}); "
                            f"starting at {'the beginning' if off == start else 'the end'}, offset {off}"
                        )
                elif kind == "tail":
                    off = max(end - n, start)
                else:  # time
                    if probe is None:
                        probe = log.consumer(auto_offset_reset="earliest")
                    probe.assign([(t, p.partition, start)])
                    found = probe.offsets_for_times(t, p.partition, n)
                    off = end if found is None else found
                out.append((t, p.partition, off))
    finally:
        if probe is not None:
            probe.close()
    return out


class _Output:
    def __init__(self, args):
        self.json = args.json
        self.out = sys.stdout.buffer
        if args.format is not None:
            fmt = args.format
        elif args.key_delimiter is not None:
            fmt = "%k" + args.key_delimiter.replace("%", "%%") + r"%s\n"
        else:
            fmt = r"%s\n"
        self.parts = compile_format(fmt)

    def write(self, msgs):
        if self.json:
            data = "".join(message_json(m) + "\n" for m in msgs).encode()
        else:
            parts = self.parts
            data = b"".join(render(parts, m) for m in msgs)
        self.out.write(data)
        self.out.flush()  # a tailing consume shows each poll at once, in a pipe too


def _make_consumer(log, args, kind, n):
    if args.group:
        if kind not in ("beginning", "end", "stored"):
            raise common.CommandError(
                "with -G the start is the group's committed offset; "
                "-o may only say where to start without one: beginning or end"
            )
        reset = "earliest" if kind == "beginning" else "latest"
        return log.consumer(group=args.group, topics=args.topics, auto_offset_reset=reset)
    if kind == "stored":
        raise common.CommandError("-o stored needs a group (-G GROUP)")
    c = log.consumer(auto_offset_reset="earliest")
    try:
        c.assign(start_offsets(log, args.topics, args.partition, kind, n, warn=lambda text: _notice(args, text)))
    except BaseException:
        c.close()
        raise
    return c


def _notice(args, text: str):
    """kcat's notices: '% ...' lines on stderr (stdout holds only records), silenced by -q."""
    if not args.quiet:
        print(f"% {text}", file=sys.stderr, flush=True)


def _at_end(c, args, announced: dict) -> bool:
    """Announces each partition reaching its end (again after new records),
    like kcat; True when every assigned partition is at its end."""
    ends = c.end_offsets()
    at_end = bool(ends)
    for (t, p), end in sorted(ends.items()):
        pos = c.position(t, p)
        if pos is None or pos < end:
            at_end = False
            continue
        if announced.get((t, p)) != pos:
            announced[(t, p)] = pos
            _notice(args, f"Reached end of topic {t} [{p}] at offset {pos}")
    return at_end


def cmd_consume(args):
    if args.group and args.partition is not None:
        raise common.CommandError("-p and -G exclude each other: a group assigns partitions itself")
    if args.count is not None and args.count < 1:
        raise common.CommandError("-c must be >= 1")
    kind, n = parse_offset(args.offset)
    out = _Output(args)
    got = 0
    printed = {}  # (topic, partition) -> offset after the last record printed
    announced: dict[tuple[str, int], int] = {}  # (topic, partition) -> the offset its end was announced at
    with common.open_log(args) as log:
        c = _make_consumer(log, args, kind, n)
        try:
            while args.count is None or got < args.count:
                want = 10_000 if args.count is None else min(10_000, args.count - got)
                msgs = c.poll_batch(want, timeout=0.05 if args.exit_at_end else 0.5)
                if msgs:
                    out.write(msgs)
                    got += len(msgs)
                    for m in msgs:
                        printed[(m.topic, m.partition)] = m.offset + 1
                elif _at_end(c, args, announced) and args.exit_at_end:
                    break
        except KeyboardInterrupt:
            pass  # Ctrl-C ends a tailing consume: commit what was printed, exit 0
        finally:
            try:
                if args.group and printed:
                    c.commit(offsets=printed)
            finally:
                c.close()


def register(sub, parent):
    p = sub.add_parser(
        "consume",
        parents=[parent],
        help="print records (like kcat -C)",
        description="Reads records and prints them by a format (or as JSON lines).",
        epilog=EPILOG,
    )
    p.add_argument("topics", nargs="+", metavar="TOPIC")
    p.add_argument("-p", "--partition", type=int, default=None, help="only this partition")
    p.add_argument(
        "-o",
        "--offset",
        default="end",
        help="beginning | end | stored (-G) | N | -N (N before the end) | @TIME (default: end)",
    )
    p.add_argument(
        "-e",
        "--exit",
        dest="exit_at_end",
        action="store_true",
        help="exit once every partition has been read to its end",
    )
    p.add_argument("-c", "--count", type=int, default=None, help="exit after this many records")
    p.add_argument("-f", "--format", default=None, help="output format, see below")
    p.add_argument(
        "-K", dest="key_delimiter", default=None, metavar="DELIM", help="print key DELIM value (when there is no -f)"
    )
    p.add_argument("-G", "--group", default=None, help="consume as a member of this consumer group")
    p.add_argument(
        "-q", "--quiet", action="store_true", help="no '%% Reached end of topic' and out-of-range notices on stderr"
    )
    p.set_defaults(func=cmd_consume, trailing="topics")
