"""cli/delegates.py — subcommands whose work lives in other modules.

Owns: `bench` (benchmarks.cli_main, quick mode unless --full), `supervisor`,
`up`, `down` (shmlog.supervisor.main / up / down) and `kafka-listener`
(shmlog.kafka.main): each imported only when its command runs, handed the
arguments this parser did not know plus the instance options given, and
turned into a one-line error when its module (or extra) is missing.
Must never: import those modules at start-up (every other command would pay
for them, or fail without them).
"""
import importlib

from .. import errors

BENCH_EPILOG = """examples:
  shmlog bench                          # the quick suite (under a minute), with a progress bar
  shmlog bench --full                   # the full suite (many minutes; the numbers in the README)
  shmlog bench --peers shmlog,mpqueue --workloads T1
needs the benchmark extra: pip install 'shmlog[bench]'
"""

SUPERVISOR_EPILOG = """examples:
  shmlog supervisor --config /etc/shmlog/shmlog.toml     # foreground; what the systemd unit runs
  shmlog up                                              # a background supervisor for development
  shmlog down                                            # stop it cleanly
  shmlog kafka-listener --port 9092                      # serve the instance to Kafka clients
"""


def _forwarded(args) -> list[str]:
    """The instance options the user gave, for the delegate's own parser."""
    out = []
    for opt in ("instance", "data_dir", "shm_prefix"):
        v = getattr(args, opt, None)
        if v is not None:
            out += [f"--{opt.replace('_', '-')}", v]
    return out


def load(module: str, attr: str, what: str, hint: str):
    """module.attr, or NotSupported naming what is missing: the module itself, or a package it needs."""
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        missing = e.name or str(e)
        if missing == module or module.startswith(missing + "."):
            raise errors.NotSupported(f"`shmlog {what}` needs {module}, which this build lacks{hint}") from None
        raise errors.NotSupported(f"`shmlog {what}` needs the Python package {missing!r}{hint}") from None
    fn = getattr(mod, attr, None)
    if fn is None:
        raise errors.NotSupported(f"`shmlog {what}` needs {module}.{attr}, which this build lacks{hint}")
    return fn


def _run(fn, argv) -> int:
    rc = fn(argv)
    return rc if isinstance(rc, int) else 0


def cmd_bench(args):
    argv = list(args.extra) if args.full else ["--quick", *args.extra]
    fn = load("benchmarks", "cli_main", "bench",
              "; run it from a source checkout with the bench extra: pip install 'shmlog[bench]'")
    raise SystemExit(_run(fn, argv))


def _delegate(module, attr, what):
    def cmd(args):
        fn = load(module, attr, what, "")
        raise SystemExit(_run(fn, _forwarded(args) + list(args.extra)))
    return cmd


def register(sub, parent):
    b = sub.add_parser("bench", parents=[parent], help="run the benchmark suite (quick mode by default)",
                       epilog=BENCH_EPILOG)
    b.add_argument("--full", action="store_true", help="the full suite instead of --quick")
    b.set_defaults(func=cmd_bench, passthrough=True)
    for name, module, attr, text in (
            ("supervisor", "shmlog.supervisor", "main", "run the instance's supervisor in the foreground"),
            ("up", "shmlog.supervisor", "up", "start a background supervisor for the instance"),
            ("down", "shmlog.supervisor", "down", "stop the instance's background supervisor"),
            ("kafka-listener", "shmlog.kafka", "main", "serve the instance over Kafka's wire protocol")):
        p = sub.add_parser(name, parents=[parent], help=text, epilog=SUPERVISOR_EPILOG,
                           description=f"{text.capitalize()}. Options other than the instance's are "
                                       f"passed to {module}.{attr}.")
        p.set_defaults(func=_delegate(module, attr, name), passthrough=True)
