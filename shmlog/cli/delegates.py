"""cli/delegates.py — subcommands whose work lives in other modules.

Owns: `bench` (benchmarks.cli_main, quick mode unless --full), `supervisor`
(shmlog.service.supervisor.main), `up` / `down` (shmlog.ipc.daemons.up / down) and
`kafka-listener` (shmlog.kafka.main): each module imported only when its
command runs; `bench`, `supervisor` and `kafka-listener` are handed the
arguments this parser does not know (and --help, so their own help shows),
plus the instance options given. A missing module or extra is a one-line
error. Must never: import those modules at start-up (every other command
would pay for them, or fail without them).
"""

import importlib
import os
import sys
import threading

from .. import errors
from ..ipc import daemons
from ..ipc.progress import read_recovery_progress
from . import common

BENCH_EPILOG = """examples:
  shmlog bench                          # the quick suite (about a minute), with a progress bar
  shmlog bench --full                   # the full suite (many minutes; the numbers in the README)
  shmlog bench --peers shmlog,mpqueue --workloads T1 --print
the suite's own options (--peers, --workloads, --out, --reps, ...) are listed by `shmlog bench --help`
run from the root of a source checkout (the suite is not installed) after pip install -e '.[bench]'
"""

SERVICE_EPILOG = """examples:
  shmlog supervisor --config /etc/shmlog/shmlog.toml     # foreground; what the systemd unit runs
  shmlog up                                              # a background supervisor for development
  shmlog up --config shmlog.toml --json                  # {"pid": N, "metrics": URL, "kafka": HOST:PORT}
  shmlog down                                            # stop it cleanly (everything committed fsynced)
  shmlog down --purge                                    # and drop the instance's shared memory
  shmlog kafka-listener --listen 127.0.0.1:9092          # serve the instance to Kafka clients
"""


def _forwarded(args) -> list[str]:
    """The instance options the user gave, for the delegate's own parser."""
    out = []
    for opt in ("instance", "data_dir", "shm_prefix"):
        v = getattr(args, opt, None)
        if v is not None:
            out += [f"--{opt.replace('_', '-')}", v]
    return out


def load(module: str, attr: str, what: str, hint: str = ""):
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


def _wants_help(argv) -> bool:
    return "-h" in argv or "--help" in argv


def _load_or_own_help(args, module, attr, what, hint=""):
    """The delegate; when it is missing and help was asked, our own help instead of an error."""
    try:
        return load(module, attr, what, hint)
    except errors.NotSupported:
        if _wants_help(args.extra):
            args.parser.print_help()
            raise SystemExit(0) from None
        raise


def _exit_with(rc):
    raise SystemExit(rc if isinstance(rc, int) else 0)


BENCH_HINT = (
    "; the suite is not installed: run `shmlog bench` (or `python -m benchmarks`) from the root "
    "of a source checkout, after pip install -e '.[bench]'"
)


def cmd_bench(args):
    argv = list(args.extra)
    if os.path.isfile(os.path.join("benchmarks", "__init__.py")) and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # the suite lives in the checkout, not in the package
    fn = _load_or_own_help(args, "benchmarks", "cli_main", "bench", BENCH_HINT)
    if not ({"--quick", "--full"} & set(argv)) and not _wants_help(argv):
        argv.insert(0, "--quick")
    _exit_with(fn(argv))


def _argv_delegate(module, attr, what):
    def cmd(args):
        fn = _load_or_own_help(args, module, attr, what)
        _exit_with(fn(_forwarded(args) + list(args.extra)))

    return cmd


def cmd_up(args):
    up = daemons.up
    if args.timeout <= 0:
        raise common.CommandError("--timeout must be > 0")
    pid = _up_with_progress(up, args)
    s = common.settings(args)
    where = common.supervisor_addresses(s)
    common.emit(
        args,
        {"instance": s.instance, "pid": pid, **where},
        f"supervisor of instance {s.instance!r} running (pid {pid})"
        + "".join(f"\n  {k:<8} {v}" for k, v in (("metrics", where["metrics"]), ("kafka", where["kafka"])) if v),
    )


def _up_with_progress(up, args):
    """up() in a thread; on a terminal, a progress bar while the supervisor
    recovers a large log (it writes <data_dir>/recovery.json as it goes)."""
    s = common.settings(args)
    box = {}

    def run():
        try:
            box["pid"] = up(s, config_path=args.config, timeout=args.timeout)
        except BaseException as e:
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    bar = task = None
    while t.is_alive():
        t.join(0.1)
        prog = read_recovery_progress(s.data_dir)
        if prog and prog.total and sys.stderr.isatty() and not args.json:
            if bar is None:
                from rich.progress import Progress

                bar = Progress(transient=True)
                bar.start()
                task = bar.add_task("recovering", total=prog.total)
            assert task is not None  # added with the bar
            bar.update(task, completed=prog.done, description=f"recovering {prog.topic}[{prog.partition}]")
    if bar is not None:
        bar.stop()
    if "error" in box:
        raise box["error"]
    return box["pid"]


def cmd_down(args):
    down = daemons.down
    if args.timeout <= 0:
        raise common.CommandError("--timeout must be > 0")
    stopped = down(common.settings(args), purge=args.purge, timeout=args.timeout)
    name = common.settings(args).instance
    common.emit(
        args,
        {"instance": name, "stopped": bool(stopped), "purged": args.purge},
        (
            f"stopped the supervisor of instance {name!r}"
            if stopped
            else f"no supervisor was running for instance {name!r}"
        )
        + ("; its shared memory is removed" if args.purge else ""),
    )


def register(sub, parent):
    b = sub.add_parser(
        "bench",
        parents=[parent],
        add_help=False,
        help="run the benchmark suite (quick mode unless --full)",
        epilog=BENCH_EPILOG,
    )
    b.set_defaults(func=cmd_bench, passthrough=True, parser=b)
    for name, module, text in (
        ("supervisor", daemons.SUPERVISOR_MODULE, "run the instance's supervisor in the foreground"),
        ("kafka-listener", "shmlog.kafka", "serve the instance over Kafka's wire protocol"),
    ):
        p = sub.add_parser(
            name,
            parents=[parent],
            add_help=False,
            help=text,
            epilog=SERVICE_EPILOG,
            description=f"{text.capitalize()}. Every option is passed to {module}.main "
            "(`--help` shows its own once it is installed).",
        )
        p.set_defaults(func=_argv_delegate(module, "main", name), passthrough=True, parser=p)
    u = sub.add_parser(
        "up", parents=[parent], help="start a background supervisor for the instance", epilog=SERVICE_EPILOG
    )
    u.add_argument("--config", default=None, help="service config file (TOML)")
    u.add_argument("--timeout", type=float, default=20.0, help="seconds to wait for it to answer")
    u.set_defaults(func=cmd_up)
    d = sub.add_parser(
        "down", parents=[parent], help="stop the instance's background supervisor cleanly", epilog=SERVICE_EPILOG
    )
    d.add_argument(
        "--purge",
        action="store_true",
        help="then remove the instance's shared memory (ephemeral topics are lost; durable ones "
        "come back from the data dir)",
    )
    d.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for it to stop")
    d.set_defaults(func=cmd_down)
