"""kafka/cli.py — `shmlog kafka-listener` and the entry points a supervisor calls.

Owns: parsing the listener's command line, refusing a non-loopback address
unless asked for explicitly, connecting to the instance, and running the
listener until SIGINT/SIGTERM (main), in the caller's loop (serve) or in a
background thread (start). Must never: hold protocol logic.
"""

import argparse
import asyncio
import ipaddress
import logging
import signal
import socket
import sys
import threading
from typing import Any

from .. import config, errors
from ..client.log import connect
from .coordinator import INITIAL_REBALANCE_DELAY_MS
from .handlers import FETCH_MAX_BYTES
from .server import MAX_QUEUED_REQUEST_BYTES, Listener

DEFAULT_LISTEN = "127.0.0.1:9092"


def parse_listen(spec: str) -> tuple[str, int]:
    host, sep, port = spec.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise errors.InvalidArgument(f"--listen {spec!r}: use HOST:PORT, for example {DEFAULT_LISTEN}")
    return host.strip("[]") or "127.0.0.1", int(port)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(a[4][0]).is_loopback for a in socket.getaddrinfo(host, None))
        except OSError:
            return False


async def serve(log, host="127.0.0.1", port=9092, *, allow_non_loopback=False, started=None, stop=None, **options):
    """Runs a listener for `log` in the running event loop until `stop` (an
    asyncio.Event) is set or the task is cancelled. `started` (a callable)
    gets the Listener once it accepts connections (its .port is the bound
    port, useful with port 0). Options: see Listener."""
    if not allow_non_loopback and not is_loopback(host):
        raise errors.InvalidArgument(
            f"refusing to listen on {host}: not a loopback address; pass allow_non_loopback=True "
            "(--allow-non-loopback) to expose shmlog beyond this host"
        )
    listener = Listener(log, host, port, **options)
    await listener.start()
    if started is not None:
        started(listener)
    try:
        if stop is None:
            await asyncio.Event().wait()
        else:
            await stop.wait()
    finally:
        await listener.stop()


class Running:
    """A listener on a background thread (tests, supervisors): .port, .stop()."""

    def __init__(self, thread, loop, stop_event, listener):
        self.thread, self.loop, self._stop, self.listener = thread, loop, stop_event, listener
        self.port = listener.port
        self.host = listener.host

    def stop(self, timeout=10.0):
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
            self.thread.join(timeout)


def start(log, host="127.0.0.1", port=9092, **options) -> Running:
    """Starts a listener on its own thread and event loop; returns once it accepts connections."""
    ready = threading.Event()
    box: dict[str, Any] = {}  # loop, stop, listener or error, from the listener's thread

    def run():
        loop = asyncio.new_event_loop()
        box["loop"] = loop
        stop = asyncio.Event()
        box["stop"] = stop

        def started(lst):
            box["listener"] = lst
            ready.set()

        try:
            loop.run_until_complete(serve(log, host, port, started=started, stop=stop, **options))
        except BaseException as e:  # reported to the caller of start()
            box["error"] = e
            ready.set()
        finally:
            loop.close()

    t = threading.Thread(target=run, name="shmlog-kafka-listener", daemon=True)
    t.start()
    ready.wait(30)
    if "error" in box:
        raise box["error"]
    if "listener" not in box:
        raise errors.Timeout("the Kafka listener did not start within 30 s")
    return Running(t, box["loop"], box["stop"], box["listener"])


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="shmlog kafka-listener", description="Serve Kafka's wire protocol for a shmlog instance."
    )
    ap.add_argument("--listen", default=DEFAULT_LISTEN, help=f"HOST:PORT (default {DEFAULT_LISTEN})")
    ap.add_argument("--allow-non-loopback", action="store_true", help="allow a --listen address other than loopback")
    ap.add_argument("--advertised-host", default=None, help="host name given to clients (default: the listen host)")
    ap.add_argument("--instance", default=None)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--shm-prefix", default=None)
    ap.add_argument(
        "--auto-create-topics",
        action="store_true",
        help="create a topic when a client asks for its metadata (Kafka's auto.create.topics.enable)",
    )
    ap.add_argument("--default-partitions", type=int, default=1, help="partitions of auto-created topics")
    ap.add_argument(
        "--topic-default",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting of the topics the listener creates (auto-created, or CreateTopics without it), "
        "e.g. ring_bytes=1048576 persistence=none retention_ms=3600000; repeatable",
    )
    ap.add_argument(
        "--max-frame-bytes",
        type=int,
        default=100 << 20,
        help="largest request accepted; larger closes the connection (default 100 MiB)",
    )
    ap.add_argument("--max-connections", type=int, default=1024)
    ap.add_argument(
        "--max-queued-request-bytes",
        type=int,
        default=MAX_QUEUED_REQUEST_BYTES,
        help="request bytes buffered across all connections; a frame past it waits "
        "(Kafka's queued.max.request.bytes; default 256 MiB, at least --max-frame-bytes)",
    )
    ap.add_argument(
        "--fetch-max-bytes",
        type=int,
        default=FETCH_MAX_BYTES,
        help="most record bytes in one Fetch response whatever the client asks "
        "(Kafka's broker fetch.max.bytes; default 55 MiB)",
    )
    ap.add_argument(
        "--group-initial-rebalance-delay-ms",
        type=int,
        default=INITIAL_REBALANCE_DELAY_MS,
        help="how long an empty group's first rebalance waits for more members, again after each "
        "new one up to the rebalance timeout (Kafka's group.initial.rebalance.delay.ms; default 3000)",
    )
    ap.add_argument(
        "--allow-any-local-user",
        action="store_true",
        help="serve every local user; by default only root, the instance's owner and members "
        "of its group (who may use the native API) are served",
    )
    ap.add_argument("--log-level", default="INFO")
    return ap


def _setting(kv: str) -> tuple[str, int | str]:
    """KEY=VALUE of --topic-default: an int where VALUE is one, else the string."""
    key, sep, value = kv.partition("=")
    if not sep or not key:
        raise errors.InvalidArgument(f"--topic-default {kv!r}: use KEY=VALUE, e.g. ring_bytes=1048576")
    try:
        return key.strip(), int(value)
    except ValueError:
        return key.strip(), value


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")

    try:
        host, port = parse_listen(args.listen)
        if args.max_frame_bytes < 1024 or args.max_connections < 1 or args.default_partitions < 1:
            raise errors.InvalidArgument(
                "--max-frame-bytes >= 1024, --max-connections >= 1 and --default-partitions >= 1 are required"
            )
        if not args.allow_non_loopback and not is_loopback(host):
            raise errors.InvalidArgument(
                f"refusing to listen on {host}: not a loopback address (add --allow-non-loopback to mean it)"
            )
        topic_defaults = config.validate_topic_defaults(
            dict(_setting(kv) for kv in args.topic_default), "--topic-default"
        )
        log = connect(instance=args.instance, data_dir=args.data_dir, shm_prefix=args.shm_prefix)
    except errors.ShmlogError as e:
        print(f"shmlog kafka-listener: {e}", file=sys.stderr)
        return 2

    async def run():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(
            log,
            host,
            port,
            allow_non_loopback=args.allow_non_loopback,
            stop=stop,
            advertised_host=args.advertised_host,
            auto_create_topics=args.auto_create_topics,
            default_partitions=args.default_partitions,
            topic_defaults=topic_defaults,
            max_frame_bytes=args.max_frame_bytes,
            max_connections=args.max_connections,
            max_queued_request_bytes=args.max_queued_request_bytes,
            fetch_max_bytes=args.fetch_max_bytes,
            group_initial_rebalance_delay_ms=args.group_initial_rebalance_delay_ms,
            allow_any_local_user=args.allow_any_local_user,
        )

    try:
        asyncio.run(run())
    except errors.ShmlogError as e:
        print(f"shmlog kafka-listener: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"shmlog kafka-listener: cannot listen on {host}:{port}: {e.strerror or e}", file=sys.stderr)
        return 1
    finally:
        log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
