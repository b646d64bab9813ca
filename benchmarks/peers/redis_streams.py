"""Peer adapter: Redis Streams on a real redis-server that this adapter starts on a unix socket
(persistence off for T1-T4; benchmarks/durable.py starts its own with appendfsync everysec via
start_server). Producers XADD (pipelined for batches); consumers XREADGROUP ... NOACK, one consumer
group per consumer, so T4 fan-out is 4 groups reading one stream.
Must never: leave a redis-server running (teardown kills the one it started) or touch another one.
"""

import os
import shutil
import subprocess
import time

from .base import Channel, Peer, seqs_of


def start_server(workdir, *extra):
    """Starts redis-server on workdir/redis.sock (no TCP port); returns (Popen, socket path)."""
    sock = os.path.join(workdir, "redis.sock")
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            "0",
            "--unixsocket",
            sock,
            "--unixsocketperm",
            "700",
            "--dir",
            workdir,
            "--save",
            "",
            "--daemonize",
            "no",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import redis

    deadline = time.monotonic() + 10
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait(5)
            raise RuntimeError(f"redis-server did not start on {sock}")
        if os.path.exists(sock):
            try:
                if redis.Redis(unix_socket_path=sock).ping():
                    return proc, sock
            except redis.exceptions.ConnectionError:
                pass
        time.sleep(0.01)


def stop_server(proc):
    proc.kill()
    proc.wait(10)


_LINGER = 100  # "pipelined" per-record mode: XADDs queued, one round trip per 100 records


class _Tx:
    def __init__(self, ch):
        import redis

        self.r, self.key = redis.Redis(unix_socket_path=ch.sock), ch.key
        self.pipe = self.r.pipeline(transaction=False) if ch.mode == "pipelined" else None
        self.queued = 0

    def send(self, buf):
        if self.pipe is None:
            self.r.xadd(self.key, {"v": buf})  # one round trip per record
            return
        self.pipe.xadd(self.key, {"v": buf})
        self.queued += 1
        if self.queued == _LINGER:
            self.flush()

    def flush(self):
        if self.queued:
            self.pipe.execute()
            self.queued = 0

    def send_batch(self, bufs):
        pipe = self.r.pipeline(transaction=False)  # one round trip per batch
        for b in bufs:
            pipe.xadd(self.key, {"v": b})
        pipe.execute()

    def close(self):
        if self.pipe is not None:
            self.flush()
        self.r.close()


class _Rx:
    def __init__(self, ch, index):
        import redis

        self.r, self.key, self.group = redis.Redis(unix_socket_path=ch.sock), ch.key, f"g{index}"
        self.pending, self.at = [], 0

    def _read(self, timeout):
        resp = self.r.xreadgroup(
            self.group, "c", {self.key: ">"}, count=10_000, block=max(1, int(timeout * 1000)), noack=True
        )
        return [fields[b"v"] for _, entries in resp or () for _, fields in entries]

    def recv(self, timeout):
        if self.at == len(self.pending):
            self.pending, self.at = self._read(timeout), 0
            if not self.pending:
                return None
        self.at += 1
        return self.pending[self.at - 1]

    def recv_seqs(self, timeout):
        if self.at < len(self.pending):
            rest, self.pending, self.at = self.pending[self.at :], [], 0
            return seqs_of(rest)
        return seqs_of(self._read(timeout))

    def close(self):
        self.r.close()


class _Ch(Channel):
    def __init__(self, sock, key, consumers, mode):
        import redis

        self.sock, self.key, self.mode = sock, key, mode
        r = redis.Redis(unix_socket_path=sock)  # made and closed before any fork
        try:
            for i in range(consumers):
                r.xgroup_create(key, f"g{i}", id="0", mkstream=True)
        finally:
            r.close()

    def sender(self):
        return _Tx(self)

    def receiver(self, index=0):
        return _Rx(self, index)

    def close(self):
        import redis

        r = redis.Redis(unix_socket_path=self.sock)
        try:
            r.delete(self.key)
        finally:
            r.close()


class RedisStreamsPeer(Peer):
    name = "redis"
    proc = None

    def check(self):
        if shutil.which("redis-server") is None:
            return "redis-server not installed (apt-get install redis-server)"
        try:
            import redis  # noqa: F401
        except ImportError as e:
            return f"the redis Python client is not importable ({e}; pip install redis)"

    def versions(self):
        import redis

        out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, timeout=10).stdout
        server = next((w[2:] for w in out.split() if w.startswith("v=")), out.strip())
        from .. import machine

        return {
            "redis-server": server,
            "redis-py": redis.__version__,
            "hiredis": machine.package_version("hiredis") or "not installed (pure-Python parser)",
        }

    def scale(self, row, mode):
        return {
            ("T1-msg", "xadd"): 0.03,
            ("T1-msg", "pipelined"): 0.15,
            ("T1-batch", "pipeline"): 0.03,
            ("T2-block", "xadd"): 0.2,
            ("T3", "xadd"): 0.5,
            ("T4", "pipelined"): 0.1,
        }.get((row, mode), 1.0)

    def modes(self, row):
        srv = "redis-server on a unix socket, no persistence"
        read = "XREADGROUP COUNT 10000 BLOCK NOACK"
        return {
            "T1-msg": {
                "xadd": f"{srv}; one XADD round trip per record; {read}",
                "pipelined": f"{srv}; send() queues XADDs, one round trip per {_LINGER} records; {read}",
            },
            "T1-batch": {"pipeline": f"{srv}; 1000 XADDs pipelined per round trip; {read}"},
            "T2-block": {"xadd": f"{srv}; two streams, XADD then blocking XREADGROUP"},
            "T3": {"xadd": f"{srv}; one XADD per 1 MiB record; {read}"},
            "T4": {"pipelined": f"{srv}; one stream, 4 consumer groups; one round trip per {_LINGER} XADDs; {read}"},
        }.get(row, {})

    def setup(self, workdir):
        self.workdir = os.path.join(workdir, "redis")
        os.makedirs(self.workdir, exist_ok=True)
        self.proc, self.sock = start_server(self.workdir, "--appendonly", "no")

    def channel(self, row, mode, record_size, tag, count, consumers=1):
        return _Ch(self.sock, f"s-{tag}", consumers, mode)

    def teardown(self):
        if self.proc is not None:
            stop_server(self.proc)
            self.proc = None


PEER = RedisStreamsPeer()
