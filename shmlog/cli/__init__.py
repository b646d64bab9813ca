"""shmlog.cli — the `shmlog` command line (console script; also `python -m shmlog`).

Owns: assembling the subcommands (one module each in this package), running
one, and turning every failure into ONE line on stderr and an exit code from
common.EXIT_CODES. Must never: hold logic the Python API lacks (every command
is a thin call into shmlog.connect() and its objects), or print a traceback
for an expected failure.
"""

import os
import sys

from .. import errors
from .._version import __version__
from . import check, common, consume, consumer_groups, delegates, demo, doctor, produce, status, topics

EPILOG = f"""examples:
  shmlog topic create orders -p 4
  seq 10 | shmlog produce orders
  shmlog consume orders -o beginning -e -f '%p@%o %s\\n'
  shmlog group describe billing
  shmlog status
  shmlog doctor --clean
  shmlog --instance dev topic list --json       # instance options go before or after the subcommand

The instance is chosen by --instance / --data-dir / --shm-prefix, else $SHMLOG_INSTANCE /
$SHMLOG_DATA_DIR / $SHMLOG_SHM_PREFIX, else 'default' in ~/.local/state/shmlog/default.
`shmlog COMMAND --help` shows each command's options and examples.

{common.EXIT_CODES_HELP}
"""

COMMANDS = (topics, produce, consume, consumer_groups, status, doctor, check, delegates, demo)


def build_parser() -> common.Parser:
    ap = common.Parser(prog="shmlog", description="Kafka's model on one host, over shared memory.", epilog=EPILOG)
    common.add_top_level_instance_options(ap)
    where = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument(
        "--version", action="version", version=f"shmlog {__version__} ({where}, Python {sys.version.split()[0]})"
    )
    parent = common.instance_options()
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=common.Parser)
    for mod in COMMANDS:
        mod.register(sub, parent)
    return ap


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def main(argv=None) -> int:
    ap = build_parser()
    args, extra = ap.parse_known_args(argv)
    trailing = getattr(args, "trailing", None)
    if trailing and extra:
        # argparse stops filling a list positional at the first option (`produce T -l F`): the
        # words after it come back unparsed; they belong to that list
        words = [e for e in extra if e == "-" or not e.startswith("-")]
        getattr(args, trailing).extend(words)
        extra = [e for e in extra if e != "-" and e.startswith("-")]
    if extra and not getattr(args, "passthrough", False):
        ap.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    try:
        args.func(args)
    except errors.ShmlogError as e:
        print(f"shmlog: error: {_one_line(e)}", file=sys.stderr)
        return common.exit_code(e)
    except BrokenPipeError:
        # the reader went away (`shmlog consume ... | head`): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except OSError as e:
        print(f"shmlog: error: {_one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return common.EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
