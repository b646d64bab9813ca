"""cli/produce.py — `shmlog produce`: records from stdin or files, like `kcat -P`.

Owns: splitting input into records (delimiter, key delimiter, whole files),
headers from -H, and the summary of what landed where. Must never: buffer a
whole stream before sending (records go out as their delimiter arrives).
"""

import contextlib
import sys

from .. import errors
from . import common

EPILOG = r"""examples:
  echo hello | shmlog produce orders                     # one record per line
  printf 'k1:v1\nk2:v2\n' | shmlog produce orders -K:    # key and value split at the first ':'
  shmlog produce orders -H source=cli -H trace=42 < lines.txt
  shmlog produce orders -p 2 -k user-7 < lines.txt       # every record with key user-7 to partition 2
  shmlog produce images a.png b.png                      # each file is one record (whole-file mode)
  shmlog produce orders -l a.txt b.txt                   # files read line by line, like stdin
  shmlog produce orders -D '\0' < nul-separated.bin     # another record delimiter
  shmlog produce orders --durable < lines.txt            # return only after the records are fsynced
"""

READ_CHUNK = 1 << 16


def split_records(stream, delim: bytes):
    """Yields records from a binary stream as each delimiter arrives; a last
    record without a trailing delimiter counts, an empty tail does not."""
    if delim == b"\n" and hasattr(stream, "readline"):
        for line in iter(stream.readline, b""):
            yield line[:-1] if line.endswith(b"\n") else line
        return
    pending = b""
    read = getattr(stream, "read1", stream.read)
    while True:
        chunk = read(READ_CHUNK)
        if not chunk:
            break
        pending += chunk
        *records, pending = pending.split(delim)
        yield from records
    if pending:
        yield pending


def parse_headers(items) -> list:
    out = []
    for h in items or ():
        k, sep, v = h.partition("=")
        if not sep or not k:
            raise common.CommandError(f"header {h!r} must be KEY=VALUE")
        out.append((k, v.encode()))
    return out


def _records(args):
    """(key, value) pairs from stdin or the files, in order."""
    delim = common.unescape(args.delimiter)
    if not delim:
        raise common.CommandError("the record delimiter (-D) cannot be empty")
    kdelim = common.unescape(args.key_delimiter) if args.key_delimiter is not None else None
    if kdelim == b"":
        raise common.CommandError("the key delimiter (-K) cannot be empty")
    fixed_key = args.key.encode() if args.key is not None else None

    def split_key(rec):
        if kdelim is not None:
            k, sep, v = rec.partition(kdelim)
            return (k, v) if sep else (None, rec)  # no delimiter: the whole record is the value
        return fixed_key, rec

    if not args.files:
        for rec in split_records(sys.stdin.buffer, delim):
            yield split_key(rec)
        return
    for path in args.files:
        if path == "-":
            f = sys.stdin.buffer
        else:
            try:
                f = open(path, "rb")
            except OSError as e:
                raise common.CommandError(f"cannot read {path}: {e.strerror}") from None
        with f if path != "-" else contextlib.nullcontext(f):
            if args.line_mode:
                for rec in split_records(f, delim):
                    yield split_key(rec)
            else:
                yield split_key(f.read())


def cmd_produce(args):
    args.topic, args.files = args.operands[0], args.operands[1:]
    headers = parse_headers(args.header) or None
    per_partition: dict[int, list[int]] = {}  # partition -> [first offset, last offset, count]
    count = 0
    last = None  # (partition, offset) of the last record written
    failure = None
    with common.open_log(args, writes=True) as log:
        log.topic_handle(args.topic)  # fail fast, before reading any input
        with log.producer(max_block_ms=args.max_block_ms) as p:
            try:
                for key, value in _records(args):
                    md = p.send(args.topic, value, key=key, headers=headers, partition=args.partition)
                    s = per_partition.get(md.partition)
                    if s is None:
                        per_partition[md.partition] = [md.offset, md.offset, 1]
                    else:
                        s[1] = md.offset
                        s[2] += 1
                    count += 1
                    last = (md.partition, md.offset)
            except errors.ShmlogError as e:
                failure = e
            finally:
                if count:
                    p.flush(durable=args.durable)
    summary = {
        "topic": args.topic,
        "count": count,
        "durable": args.durable,
        "complete": failure is None,
        "last": None if last is None else {"partition": last[0], "offset": last[1]},
        "partitions": [
            {"partition": k, "first_offset": v[0], "last_offset": v[1], "count": v[2]}
            for k, v in sorted(per_partition.items())
        ],
    }
    if failure is not None:
        # a rerun would send the first `count` records again: say exactly what landed
        if args.json:
            common.print_json(summary)
        done = (
            f"{count} record(s) were written before it, the last to partition {last[0]} at offset "
            f"{last[1]}; record {count + 1} of the input and everything after it were not sent"
            if last is not None  # set with the first record written (count > 0)
            else "no record was written"
        )
        raise type(failure)(f"{failure} — {done}") from failure
    if args.quiet and not args.json:
        return
    text = f"produced {count} record(s) to {args.topic!r}" + "".join(
        f"\n  partition {k}: {v[2]} record(s), offsets {v[0]}..{v[1]}" for k, v in sorted(per_partition.items())
    )
    common.emit(args, summary, text)


def register(sub, parent):
    p = sub.add_parser(
        "produce",
        parents=[parent],
        help="write records from stdin or files (like kcat -P)",
        description="Writes one record per input line (or per delimiter, or per file).",
        epilog=EPILOG,
    )
    # one positional list, completed by cli.main with the words after an option (trailing=)
    p.add_argument(
        "operands",
        nargs="+",
        metavar="TOPIC [FILE ...]",
        help="the topic, then files to send; each file is one record unless -l ('-' is stdin)",
    )
    p.add_argument(
        "-p",
        "--partition",
        type=int,
        default=None,
        help="partition to write (default: by key with murmur2 like Kafka, sticky without a key)",
    )
    p.add_argument(
        "-K",
        dest="key_delimiter",
        metavar="DELIM",
        default=None,
        help="split each record into key and value at the first DELIM",
    )
    p.add_argument("-k", "--key", default=None, help="one key for every record")
    p.add_argument("-H", "--header", action="append", metavar="KEY=VALUE", help="a header on every record (repeatable)")
    p.add_argument(
        "-D",
        "--delimiter",
        default=r"\n",
        metavar="DELIM",
        help=r"record delimiter (default \n; escapes \n \t \0 \xHH)",
    )
    p.add_argument(
        "-l", dest="line_mode", action="store_true", help="read FILEs record by record like stdin, not whole-file"
    )
    p.add_argument("--durable", action="store_true", help="wait until every record is fsynced")
    p.add_argument("--max-block-ms", type=int, default=60_000, help="how long a send may wait for ring space")
    p.add_argument("-q", "--quiet", action="store_true", help="no summary")
    p.set_defaults(func=cmd_produce, trailing="operands")
