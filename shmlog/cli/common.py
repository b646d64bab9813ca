"""cli/common.py — what every `shmlog` subcommand shares.

Owns: the instance options (--instance/--data-dir/--shm-prefix/--json, taken
before or after the subcommand), the one-line-error argument parser, the
exit-code table, connecting for read-only or writing commands, JSON and
table output, progress bars (rich), and parsing of times and escapes.
Must never: hold logic the Python API lacks, or print a traceback for an
expected failure.
"""

import argparse
import datetime
import json
import sys

import msgspec

from .. import config, errors
from ..client.log import connect
from ..ipc import daemons


class CommandError(errors.ShmlogError):
    """A command-line usage problem found after parsing (exit code 2)."""


# first match wins: subclasses before their parents. Documented in README "Command line".
EXIT_CODES = [
    ("CommandError", 2),
    ("InvalidArgument", 2),
    ("InvalidType", 2),
    ("UnknownGroup", 3),
    ("UnknownInstance", 3),
    ("InstanceConflict", 5),
    ("UnknownTopicOrPartition", 3),
    ("TopicExists", 4),
    ("GroupNotEmpty", 5),
    ("CommitFailed", 5),
    ("AlreadyRunning", 5),
    ("PermissionDenied", 6),
    ("Timeout", 7),
    ("BufferFull", 7),
    ("CorruptRecord", 8),
    ("LayoutMismatch", 8),
    ("NoSpace", 9),
    ("NotSupported", 10),
    ("ShmlogError", 1),
]
EXIT_PROBLEMS_FOUND = 1  # check / doctor found something wrong
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = """exit codes:
  0 ok   1 error, or check/doctor found problems   2 bad usage or argument   3 no such topic/partition/group/instance
  4 already exists   5 busy (group has live members; supervisor already runs; the instance has another data dir)
  6 permission denied   7 timed out (retry)
  8 damaged data or wrong layout   9 no space   10 not in this build   130 interrupted"""


def exit_code(exc: BaseException) -> int:
    if isinstance(exc, CommandError):
        return 2
    for name, code in EXIT_CODES:
        cls = getattr(errors, name, None)
        if cls is not None and isinstance(exc, cls):
            return code
    return 1


class Parser(argparse.ArgumentParser):
    """argparse that fails with ONE line (and exit 2), like every other failure."""

    def __init__(self, *a, **kw):
        kw.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*a, **kw)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def instance_options() -> argparse.ArgumentParser:
    """The parent parser every subcommand takes, so the options work after it too.
    Defaults are SUPPRESSed there so a value given before the subcommand survives."""
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("instance")
    g.add_argument(
        "--instance", default=argparse.SUPPRESS, help="instance name (default $SHMLOG_INSTANCE, else 'default')"
    )
    g.add_argument(
        "--data-dir",
        default=argparse.SUPPRESS,
        help="data directory (default $SHMLOG_DATA_DIR, else ~/.local/state/shmlog/INSTANCE)",
    )
    g.add_argument(
        "--shm-prefix",
        default=argparse.SUPPRESS,
        help="prefix of the instance's /dev/shm names (default $SHMLOG_SHM_PREFIX, else 'shmlog.')",
    )
    g.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    return common


def add_top_level_instance_options(ap: argparse.ArgumentParser):
    for a in ("--instance", "--data-dir", "--shm-prefix"):
        ap.add_argument(a, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", action="store_true", default=False, help=argparse.SUPPRESS)


def settings(args) -> config.Settings:
    return config.resolve(args.instance, args.data_dir, args.shm_prefix)


def open_log(args, *, writes: bool = False):
    """A connection. Commands that create topics or produce (writes=True) may
    create the instance and start its supervisor. Every other command (list,
    describe, status, consume, group list/describe/reset) attaches to a
    running instance only (connect(create=False)): it never creates a data
    dir or shared memory nor starts a daemon, and a mistyped or stopped
    instance is UnknownInstance / InstanceNotRunning (exit 3) naming the data
    dir it looked in."""
    return connect(
        instance=args.instance, data_dir=args.data_dir, shm_prefix=args.shm_prefix, autostart=writes, create=writes
    )


def to_builtins(obj):
    return msgspec.to_builtins(obj)


def print_json(obj, stream=None):
    stream = stream or sys.stdout
    stream.write(json.dumps(to_builtins(obj)) + "\n")
    stream.flush()


def emit(args, obj, text: str):
    """Prints obj as JSON (--json) or text."""
    if args.json:
        print_json(obj)
    elif text:
        print(text, flush=True)


def table(headers, rows) -> str:
    """A plain aligned text table (numbers right-aligned), for output that is also piped."""
    rows = [["-" if v is None else str(v) for v in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    numeric = [
        all(r[i].lstrip("-").replace(".", "", 1).isdigit() or r[i] == "-" for r in rows) and rows
        for i in range(len(headers))
    ]

    def line(cells):
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric)).rstrip()

    return "\n".join([line(headers)] + [line(r) for r in rows])


def progress(args, total: int, description: str):
    """A rich progress bar on stderr when it is a terminal (never under --json or in a pipe)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(file=sys.stderr)
    p = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=bool(getattr(args, "json", False)) or not console.is_terminal,
    )
    task = p.add_task(description, total=total)
    return p, task


def unescape(s: str) -> bytes:
    """Backslash escapes of delimiters and format strings: \\n \\r \\t \\0 \\\\ \\xHH."""
    out = bytearray()
    i = 0
    b = s.encode()
    simple = {ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t", ord("0"): b"\0", ord("\\"): b"\\"}
    while i < len(b):
        c = b[i]
        if c == 0x5C and i + 1 < len(b):
            n = b[i + 1]
            if n in simple:
                out += simple[n]
                i += 2
                continue
            if n == ord("x") and _is_hex(b[i + 2 : i + 4]):
                out.append(int(b[i + 2 : i + 4], 16))
                i += 4
                continue
        out.append(c)
        i += 1
    return bytes(out)


def _is_hex(two: bytes) -> bool:
    return len(two) == 2 and all(chr(c) in "0123456789abcdefABCDEF" for c in two)


def parse_time_ms(text: str) -> int:
    """Milliseconds since the epoch from an int, or an ISO-8601 date/time
    (local time unless it names a zone, like kafka-consumer-groups.sh)."""
    t = text.strip()
    if t.lstrip("-").isdigit():
        v = int(t)
        if v < 0:
            raise CommandError(f"timestamp {text!r} is negative")
        return v
    try:
        dt = datetime.datetime.fromisoformat(t)
    except ValueError:
        raise CommandError(
            f"{text!r} is neither milliseconds since the epoch nor an ISO-8601 time "
            "such as 2026-11-25T12:00:00 or 2026-11-25T12:00:00+00:00"
        ) from None
    if dt.tzinfo is None:
        dt = dt.astimezone()
    return int(dt.timestamp() * 1000)


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kib": 1 << 10,
    "m": 1 << 20,
    "mib": 1 << 20,
    "g": 1 << 30,
    "gib": 1 << 30,
    "t": 1 << 40,
    "tib": 1 << 40,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
}


def parse_size(text: str) -> int:
    """Bytes from plain bytes (`67108864`, `-1` where it means no limit) or a
    number with a unit: K M G T and KiB MiB GiB TiB are powers of 1024 (as in
    dd and ulimit), kB MB GB TB powers of 1000; case does not matter. An
    argparse type: a bad size is a one-line usage error."""
    import re

    m = re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = _SIZE_UNITS.get(m.group(2).lower()) if m else None
    if unit is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size: bytes, or a number with K/M/G/T, "
            "KiB/MiB/GiB/TiB (1024s) or kB/MB/GB/TB (1000s), e.g. 64MiB"
        )
    assert m is not None  # unit is None otherwise
    num = m.group(1)
    value = int(num) * unit if "." not in num else float(num) * unit
    if value != int(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of bytes")
    if int(value) < 0 and int(value) != -1:
        raise argparse.ArgumentTypeError(f"size {text!r} is negative (-1 means no limit where allowed)")
    return int(value)


def format_ms(ms) -> str:
    if ms is None or ms < 0:
        return "-"
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).isoformat(timespec="milliseconds")


def human_bytes(n) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def supervisor_pid(settings) -> int | None:
    """The pid of the instance's running supervisor, or None."""
    return daemons.running_pid(settings)


def supervisor_addresses(settings, running: bool = True) -> dict:
    """Where the instance's running supervisor serves metrics and Kafka clients
    ({"metrics": URL | None, "kafka": HOST:PORT | None}; both None when none runs)."""
    return daemons.addresses(daemons.read_supervisor_state(settings) if running else None)
