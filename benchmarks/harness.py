"""Runs workloads x peers: child process start/teardown with bounded waits, interleaved repetitions,
median and min-max, machine facts. Entry point: run(quick, only, out_dir, reps=None, workloads=None)."""
import datetime
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
import traceback
from multiprocessing.connection import wait as mp_wait

from . import peers as peer_registry
from . import report, workloads as W
from .peers.base import ROWS

CTX = mp.get_context("fork")   # channels (queues, shm handles) are inherited; sockets are made in the child


def _child(fn, args, conn):
    try:
        res = {"ok": True, **fn(*args)}
    except BaseException as e:  # report, never raise past the pipe
        res = {"ok": False, "error": f"{type(e).__name__}: {e}",
               "trace": traceback.format_exc(limit=4)}
    try:
        conn.send(res)
    finally:
        conn.close()


def _run_children(jobs, timeout):
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
                    end = min(end, time.monotonic() + 2.0)   # one side failed: short grace, then kill
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


def run_one(peer, row, mode, quick, tag, timeout):
    n, size = W.SIZES[quick][row], W.RECORD[row]
    deadline = time.monotonic() + timeout            # children share this absolute deadline
    evs = [CTX.Event() for _ in range(2)]
    if row == "T2":
        warm = W.SIZES[quick]["T2-warmup"]
        ping = peer.channel(row, mode, size, tag + "a", n + warm + 1)
        try:
            pong = peer.channel(row, mode, size, tag + "b", n + warm + 1)
            try:
                a, b = _run_children([(W.pinger, (ping, pong, n, warm, size, evs[0], evs[1], deadline)),
                                      (W.ponger, (ping, pong, n + warm, evs[1], evs[0], deadline))], timeout + 5)
            finally:
                pong.close()
        finally:
            ping.close()
        ok = a["ok"] and b["ok"]
        return {"ok": ok, "error": None if ok else a.get("error") or b.get("error"),
                "value": {k: a[k] for k in ("p50", "p99", "p99.9", "max", "mean")} if ok else None}
    batch = W.BATCH if row == "T1-batch" else 0
    ch = peer.channel(row, mode, size, tag, n + 1)
    try:
        c, p = _run_children([(W.consumer, (ch, n, batch, evs[0], evs[1], deadline)),
                              (W.producer, (ch, n, size, batch, evs[0], evs[1], deadline))], timeout + 5)
    finally:
        ch.close()
    ok = c["ok"] and p["ok"]
    if not ok:
        return {"ok": False, "error": c.get("error") if not c["ok"] else p.get("error"), "value": None}
    secs = (c["t_end"] - p["t0"]) / 1e9
    value = n / secs if row.startswith("T1") else n * size / secs / 1e9
    return {"ok": True, "error": None, "value": value, "seconds": secs}


def _version(pkg):
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(pkg)
    except PackageNotFoundError:
        return None


def machine_facts():
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    try:
        g = subprocess.run(["git", "-C", os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        git = g.stdout.strip() if g.returncode == 0 else "no commit"
    except Exception:
        git = "unknown"
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "git": git, "start_method": "fork", "clock": "CLOCK_MONOTONIC (time.monotonic_ns)",
            "numpy": _version("numpy"), "cffi": _version("cffi"),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()]}


def _expand(workloads):
    if not workloads:
        return list(ROWS)
    return [r for r in ROWS if any(r == w or r.split("-")[0] == w for w in workloads)]


def run(quick, only=None, out_dir=None, reps=None, workloads=None, log=print):
    out_dir = out_dir or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    reps = max(3, reps or 3) if quick else max(3, reps or 5)
    timeout = 30.0 if quick else 300.0
    rows, names = _expand(workloads), only or list(peer_registry.PEERS)
    workdir = tempfile.mkdtemp(prefix="shmlogbench-", dir="/tmp")
    res = {"machine": machine_facts(), "quick": quick, "reps": reps, "sizes": W.SIZES[quick],
           "record_bytes": W.RECORD, "peers": {}, "skipped": {}, "runs": []}
    active = []
    try:
        for name in names:
            peer, reason = peer_registry.load(name) if name in peer_registry.PEERS else (None, "unknown peer")
            if peer is not None:
                try:
                    active.append(peer)           # teardown must run even if setup fails half-way
                    peer.setup(workdir)
                except Exception as e:
                    active.pop()
                    try:
                        peer.teardown()
                    except Exception:
                        pass
                    peer, reason = None, f"setup failed: {type(e).__name__}: {e}"
            if peer is None:
                res["skipped"][name] = reason
                log(f"skip {name}: {reason}")
                continue
            res["peers"][name] = {"versions": peer.versions(),
                                  "modes": {r: peer.modes(r) for r in rows if peer.modes(r)}}
        for rep in range(reps):                   # interleaved: every rep runs every (row, peer, mode)
            for row in rows:
                plan = [(p, m) for p in active for m in p.modes(row)]
                k = rep % len(plan) if plan else 0
                for peer, mode in plan[k:] + plan[:k]:   # rotate who goes first
                    tag = f"{len(res['runs'])}"
                    t = time.monotonic()
                    try:
                        r = run_one(peer, row, mode, quick, tag, timeout)
                    except Exception as e:
                        r = {"ok": False, "error": f"harness: {type(e).__name__}: {e}", "value": None}
                    r.update(row=row, peer=peer.name, mode=mode, rep=rep, wall=round(time.monotonic() - t, 3))
                    res["runs"].append(r)
                    log(f"rep {rep} {row:8} {peer.name:10} {mode:10} "
                        + (_fmt_val(row, r["value"]) if r["ok"] else "FAILED " + str(r["error"])))
    finally:
        for peer in active:
            try:
                peer.teardown()
            except Exception as e:
                log(f"teardown {peer.name}: {e}")
        shutil.rmtree(workdir, ignore_errors=True)
    if not workloads or "T5" in workloads:       # durability rows (shmlog durable, disk, Redis)
        from . import durable
        log("T5 durability rows ...")
        res["durable"] = durable.run(quick, reps)
    res["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    res["summary"] = summarize(res["runs"])
    res["markdown"] = report.write(res, out_dir)
    return res


def _fmt_val(row, v):
    if row == "T2":
        return " ".join(f"{k}={v[k]:.1f}us" for k in ("p50", "p99", "p99.9", "max"))
    return f"{v:,.0f} msg/s" if row.startswith("T1") else f"{v:.2f} GB/s"


def summarize(runs):
    groups = {}
    for r in runs:
        groups.setdefault((r["row"], r["peer"], r["mode"]), []).append(r)
    out = []
    for (row, peer, mode), rs in groups.items():
        bad = [r for r in rs if not r["ok"]]
        s = {"row": row, "peer": peer, "mode": mode, "reps": len(rs), "ok": not bad,
             "error": bad[0]["error"] if bad else None}
        if not bad:
            if row == "T2":
                for k in ("p50", "p99", "p99.9", "max"):
                    vals = [r["value"][k] for r in rs]
                    s[k] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}
            else:
                vals = [r["value"] for r in rs]
                s["value"] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}
        out.append(s)
    return out
