"""benchmarks/overflow_block.py — produce throughput on an overflow="block" topic vs "overwrite":
1 producer (this process), 1 consumer process reading everything, N records of 100 B, 4 MiB ring."""

import multiprocessing
import sys
import tempfile
import time
import uuid

import shmlog

N = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000


def consume(kwargs, topic, n, ready):
    log = shmlog.connect(**kwargs)
    c = log.consumer(auto_offset_reset="none")
    c.assign([(topic, 0, 0)])
    c.poll(timeout=0)
    ready.set()
    got = 0
    deadline = time.monotonic() + 120
    while got < n and time.monotonic() < deadline:
        cols = c.poll_columns(65_536, timeout=0.2)
        if cols is not None:
            got += len(cols)
    c.close()
    log.close()


def run(overflow):
    tag = uuid.uuid4().hex[:8]
    kw = dict(instance=f"b{tag}", data_dir=tempfile.mkdtemp(), shm_prefix=f"shmlogbench-{tag}.", autostart=False)
    log = shmlog.connect(**kw)
    log.create_topic("b", ring_bytes=4 << 20, persistence="none", overflow=overflow)
    ready = multiprocessing.get_context("fork").Event()
    pr = multiprocessing.get_context("fork").Process(target=consume, args=(kw, "b", N, ready))
    pr.start()
    ready.wait(10)
    p = log.producer()
    v = b"x" * 100
    t0 = time.perf_counter()
    for _ in range(N):
        p.send("b", v, partition=0)
    dt = time.perf_counter() - t0
    pr.join(120)
    part = log.describe_topic("b").partitions[0]
    print(
        f"{overflow:9s}: {N / dt / 1e6:.2f} M records/s ({dt:.2f} s), overwritten {part.overwritten_frames}, "
        f"blocked {part.blocked_ms:.0f} ms in {part.blocked_waits} waits"
    )
    log.delete_topic("b")
    log.destroy()


if __name__ == "__main__":
    for mode in ("overwrite", "block", "overwrite", "block"):
        run(mode)
