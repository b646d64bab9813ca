"""Runs ONE measurement of one peer in child processes: T1/T3/T4 (producer + 1 or 4 consumers) and
T2 (pinger + ponger), with bounded waits; every child is killed if still alive at the end.
Owns: process start/teardown and turning child results into one value. Must never: retry a failed
run or report a number from a run whose consumer did not verify every record.
"""

import contextlib
import multiprocessing as mp
import time
import traceback
from multiprocessing.connection import wait as mp_wait

from . import load
from . import workloads as W
from .peers.base import FANOUT, LOADED, base_row

CTX = mp.get_context("fork")  # channels (queues, shm handles) are inherited; sockets are made in the child


def _child(fn, args, conn):
    try:
        res = {"ok": True, **(fn(*args) or {})}
    except BaseException as e:  # report, never raise past the pipe
        res = {"ok": False, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc(limit=4)}
    try:
        conn.send(res)
    finally:
        conn.close()


def run_children(jobs, timeout):
    """jobs: [(fn, args)]. Returns one result dict per job; kills every child still alive at the end."""
    procs, conns = [], []
    try:
        for fn, args in jobs:
            r, w = CTX.Pipe(duplex=False)
            p = CTX.Process(target=_child, args=(fn, args, w), daemon=True)
            p.start()
            w.close()
            procs.append(p)
            conns.append(r)
        end, out = time.monotonic() + timeout, {}
        while len(out) < len(conns) and time.monotonic() < end:
            for r in mp_wait([r for r in conns if id(r) not in out], max(0.0, end - time.monotonic())):
                try:
                    out[id(r)] = r.recv()
                except EOFError:
                    out[id(r)] = {"ok": False, "error": "child died without a result"}
                if not out[id(r)]["ok"]:
                    end = min(end, time.monotonic() + 2.0)  # one side failed: short grace, then kill
        out = [out.get(id(r), {"ok": False, "error": f"TIMEOUT after {timeout:.0f}s"}) for r in conns]
        for p in procs:
            p.join(max(0.1, min(5.0, end - time.monotonic())))
        return out
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(2)
            if p.is_alive():
                p.kill()
                p.join(2)
        for r in conns:
            r.close()


def _first_error(results):
    """The error a child reported before one killed for outliving it (the pinger's TIMEOUT after
    the ponger rejected a record says nothing)."""
    errs = [r.get("error") for r in results if not r["ok"]]
    return next((e for e in errs if not str(e).startswith("TIMEOUT")), errs[0] if errs else None)


def ping_pong(peer, row, mode, n, warm, size, tag, timeout):
    """T2: round-trip latency percentiles (µs) measured by the pinger. A "-loaded" row runs the same
    ping-pong while one busy process per core runs (started before the channels, stopped after)."""
    deadline = time.monotonic() + timeout  # children share this absolute deadline
    evs = [CTX.Event() for _ in range(2)]
    with load.cpu_hogs() if row.endswith(LOADED) else contextlib.nullcontext():
        row = base_row(row)
        ping = peer.channel(row, mode, size, tag + "a", n + warm + 1)
        try:
            pong = peer.channel(row, mode, size, tag + "b", n + warm + 1)
            try:
                a, b = run_children(
                    [
                        (W.pinger, (ping, pong, n, warm, size, evs[0], evs[1], deadline)),
                        (W.ponger, (ping, pong, n + warm, evs[1], evs[0], deadline)),
                    ],
                    timeout + 5,
                )
            finally:
                pong.close()
        finally:
            ping.close()
    if not (a["ok"] and b["ok"]):
        return {"ok": False, "error": _first_error([a, b]), "value": None}
    return {"ok": True, "error": None, "value": {k: a[k] for k in ("p50", "p99", "p99.9", "max", "mean", "curve")}}


def stream(peer, row, mode, n, size, batch, consumers, tag, timeout):
    """T1/T3/T4: n records of size bytes from one producer to `consumers` consumers that each verify
    all n. Returns records/s from the producer's t0 to the LAST consumer's last verified record."""
    deadline = time.monotonic() + timeout
    readies = [CTX.Event() for _ in range(consumers)]
    gos = [CTX.Event() for _ in range(consumers)]
    ch = peer.channel(row, mode, size, tag, n + 1, consumers)
    try:
        jobs = [(W.consumer, (ch, i, n, batch, readies[i], gos[i], deadline)) for i in range(consumers)]
        jobs.append((W.producer, (ch, n, size, batch, readies, gos, deadline)))
        res = run_children(jobs, timeout + 5)
    finally:
        ch.close()
    if not all(r["ok"] for r in res):
        return {"ok": False, "error": _first_error(res), "value": None}
    secs = (max(r["t_end"] for r in res[:-1]) - res[-1]["t0"]) / 1e9
    return {"ok": True, "error": None, "value": n / secs, "bytes_per_s": n * size / secs, "seconds": secs}


def run_row(peer, row, mode, quick, tag, timeout, size=None, n=None):
    """One repetition of a table row; size/n override the row's defaults (record-size curve)."""
    size = size or W.RECORD[row]
    n = n or W.SIZES[quick][row]
    if row.startswith("T2"):
        return ping_pong(peer, row, mode, n, W.SIZES[quick]["T2-warmup"], size, tag, timeout)
    batch = W.BATCH if row == "T1-batch" else 0
    r = stream(peer, row, mode, n, size, batch, FANOUT if row == "T4" else 1, tag, timeout)
    if r["ok"] and row == "T3":
        r["value"] = r["bytes_per_s"] / 1e9  # T3 reports GB/s
    return r
