"""Consumer-group benchmarks (issue 4) and the consumers-in-a-group scaling curve, on shmlog only:
  throughput(groups, members): one producer, a 4-partition topic, `groups` groups of `members`
      consumers each; every group must receive every record exactly once, in order per partition.
      1 group x 1/2/4 members is the curve; 4 groups x 1 member is the fan-out row.
  rebalance(quick): 2 members, SIGKILL one, time until the survivor owns all 4 partitions; repeated
      (>= 50 kills in the full run), with session_timeout_ms=1000, heartbeat_interval_ms=100 and a
      reaper calling reap_groups() every 100 ms as the supervisor does.
Owns: these workloads and their summary. Must never: count a record twice or report a run whose group
rebalanced mid-measurement (that run fails).
"""

import os
import signal
import statistics
import struct
import threading
import time

import numpy as np

from .runner import CTX, run_children
from .scaling import private_instance

SEQ = struct.Struct("<Q")
PARTITIONS = 4
SESSION_MS, HEARTBEAT_MS, REAP_S = 1000, 100, 0.1


def available():
    """True when shmlog has the consumer-group API (issue 4)."""
    try:
        from shmlog import Log
    except Exception:
        return False
    return all(hasattr(Log, n) for n in ("describe_group", "reap_groups", "list_groups"))


class _Reaper:
    """What the supervisor does for groups: reap_groups() every 100 ms, in a thread of the parent."""

    def __init__(self, log):
        self.log, self.stop = log, threading.Event()
        self.t = threading.Thread(target=self._loop, daemon=True)
        self.t.start()

    def _loop(self):
        while not self.stop.wait(REAP_S):
            try:
                self.log.reap_groups()
            except Exception:
                pass

    def close(self):
        self.stop.set()
        self.t.join(5)


def _stable(log, group, members, deadline):
    """Waits until `group` is Stable with `members` members that together own every partition."""
    while time.monotonic() < deadline:
        try:
            d = log.describe_group(group)
            owned = sum(len(m.assignment) for m in d.members)
            if (
                d.state == "Stable"
                and len(d.members) == members
                and owned == PARTITIONS
                and all(m.assignment for m in d.members)
            ):
                return True
        except Exception:
            pass
        time.sleep(0.01)
    return False


def _member(kw, topic, group, n, done, deadline):
    """A group member: checks each partition it receives is contiguous from seq 0; stops when its group
    (shared counter `done`) has received n records. The parent checks no partition went to 2 members."""
    import shmlog

    log = shmlog.connect(**kw)
    c = log.consumer(
        group=group,
        topics=[topic],
        auto_offset_reset="earliest",
        session_timeout_ms=10_000,
        heartbeat_interval_ms=HEARTBEAT_MS,
    )
    expected, got, t_end = {}, 0, None
    unpack = SEQ.unpack_from
    while done.value < n:
        ms = c.poll_batch(max_messages=10_000, timeout=0.05)
        for m in ms:
            seq = unpack(m.value)[0]
            if seq != expected.get(m.partition, 0):
                raise AssertionError(
                    f"order/completeness: partition {m.partition} expected seq "
                    f"{expected.get(m.partition, 0)}, got {seq}"
                )
            expected[m.partition] = seq + 1
        if ms:
            got += len(ms)
            t_end = time.monotonic_ns()
            with done.get_lock():
                done.value += len(ms)
        if time.monotonic() > deadline:
            raise TimeoutError(f"group {group} got {done.value} of {n} records; this member {expected}")
    c.close()
    log.close()
    return {"t_end": t_end or time.monotonic_ns(), "received": got, "per_partition": expected}


def _producer(kw, topic, per_part, size, go, deadline):
    import shmlog

    log = shmlog.connect(**kw)
    p = log.producer()
    pad = b"x" * (size - SEQ.size)
    chunks = [[SEQ.pack(i) + pad for i in range(b, min(b + 1000, per_part))] for b in range(0, per_part, 1000)]
    if not go.wait(max(0.0, deadline - time.monotonic())):
        raise TimeoutError("group never became stable")
    t0 = time.monotonic_ns()
    for chunk in chunks:
        for part in range(PARTITIONS):
            p.send_batch(topic, chunk, partition=part)
    p.flush()
    p.close()
    log.close()
    return {"t0": t0}


def throughput(groups, members, n, size=100, timeout=120.0, instance=None):
    """records/s produced while every one of `groups` groups (of `members`) consumed all n records."""
    per_part = n // PARTITIONS
    n = per_part * PARTITIONS
    deadline = time.monotonic() + timeout
    ring = max(1 << 20, 1 << int(per_part * (size + 32) * 1.3).bit_length())
    with private_instance(instance) as (kw, log):
        log.create_topic("g", partitions=PARTITIONS, ring_bytes=ring, persistence="none")
        reaper = _Reaper(log)
        go = CTX.Event()
        done = [CTX.Value("q", 0) for _ in range(groups)]
        jobs = [
            (_member, (kw, "g", f"grp{i // members}", n, done[i // members], deadline)) for i in range(groups * members)
        ]
        jobs.append((_producer, (kw, "g", per_part, size, go, deadline)))

        def release():  # parent side, in a thread while run_children waits: go once every group is stable
            if all(_stable(log, f"grp{g}", members, deadline) for g in range(groups)):
                go.set()

        t = threading.Thread(target=release, daemon=True)
        t.start()
        try:
            res = run_children(jobs, timeout + 5)
        finally:
            t.join(1)
            reaper.close()
    bad = [r for r in res if not r["ok"]]
    if bad:
        return {"ok": False, "error": bad[0]["error"]}
    for g in range(groups):  # every partition wholly, and by exactly one member
        got = [r["per_partition"] for r in res[g * members : (g + 1) * members]]
        for part in range(PARTITIONS):
            owners = [pp[part] for pp in got if part in pp]
            if owners != [per_part]:
                return {
                    "ok": False,
                    "error": f"order/completeness: group {g} partition {part} received "
                    f"{owners} by its members, expected [{per_part}]",
                }
    secs = (max(r["t_end"] for r in res[:-1]) - res[-1]["t0"]) / 1e9
    return {"ok": True, "value": n / secs, "deliveries_per_s": n * groups / secs, "records": n}


def throughput_plan(quick):
    """[(label, fn)] for one repetition: the members curve (1 group) and the 4-group fan-out."""
    n = 20_000 if quick else 400_000
    out = [
        ({"kind": "members", "groups": 1, "members": k}, (lambda k=k: throughput(1, k, n)))
        for k in ((1, 2, 4) if quick else (1, 2, 3, 4))
    ]
    out.append(({"kind": "fanout", "groups": 4, "members": 1}, lambda: throughput(4, 1, n)))
    return out


def _survivor(kw, topic, group, q, stop, deadline):
    """Polls in a loop and reports (monotonic time, assignment) whenever its assignment changes."""
    import shmlog

    log = shmlog.connect(**kw)
    c = log.consumer(
        group=group,
        topics=[topic],
        auto_offset_reset="latest",
        session_timeout_ms=SESSION_MS,
        heartbeat_interval_ms=HEARTBEAT_MS,
    )
    last = None
    while not stop.is_set() and time.monotonic() < deadline:
        c.poll(timeout=0.005)
        a = sorted(c.assignment())
        if a != last:
            q.put((time.monotonic(), len(a)))
            last = a
    c.close()
    log.close()


def _victim(kw, topic, group):
    import shmlog

    log = shmlog.connect(**kw)
    c = log.consumer(
        group=group,
        topics=[topic],
        auto_offset_reset="latest",
        session_timeout_ms=SESSION_MS,
        heartbeat_interval_ms=HEARTBEAT_MS,
    )
    while True:  # until SIGKILL
        c.poll(timeout=0.05)


def rebalance(quick, kills=None, timeout_each=15.0, instance=None):
    """SIGKILL one of 2 members `kills` times; ms from the kill until the survivor owns all partitions."""
    import queue as _queue

    kills = kills or (3 if quick else 50)
    deadline = time.monotonic() + kills * (timeout_each + 3) + 30
    times, failures = [], []
    with private_instance(instance) as (kw, log):
        log.create_topic("r", partitions=PARTITIONS, ring_bytes=1 << 20, persistence="none")
        reaper = _Reaper(log)
        q, stop = CTX.Queue(), CTX.Event()
        surv = CTX.Process(target=_survivor, args=(kw, "r", "rb", q, stop, deadline), daemon=True)
        surv.start()
        victim = None
        try:
            for _ in range(kills):
                victim = CTX.Process(target=_victim, args=(kw, "r", "rb"), daemon=True)
                victim.start()
                if not _stable(log, "rb", 2, time.monotonic() + timeout_each):
                    failures.append("group did not become stable with 2 members")
                    victim.kill()
                    victim.join(5)
                    continue
                while True:  # drop assignment changes seen so far
                    try:
                        q.get_nowait()
                    except _queue.Empty:
                        break
                t_kill = time.monotonic()
                os.kill(victim.pid, signal.SIGKILL)
                victim.join(5)
                end = t_kill + timeout_each
                while True:
                    try:
                        t, owned = q.get(timeout=max(0.01, end - time.monotonic()))
                    except _queue.Empty:
                        failures.append(f"survivor did not own all partitions {timeout_each:.0f}s after the kill")
                        break
                    if owned == PARTITIONS:
                        times.append((t - t_kill) * 1e3)
                        break
        finally:
            if victim is not None and victim.is_alive():
                victim.kill()
            stop.set()
            surv.join(5)
            if surv.is_alive():
                surv.kill()
            reaper.close()
    if failures or not times:
        return {
            "ok": False,
            "error": failures[0] if failures else "no kill measured",
            "kills": kills,
            "measured": len(times),
        }
    ms = np.array(times)
    return {
        "ok": True,
        "kills": kills,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
        "samples_ms": [round(x, 2) for x in times],
    }


def summarize(runs):
    """{"members": [...], "fanout": {...}, "rebalance": {...}} with median and min-max over repetitions."""
    out = {"members": [], "fanout": None, "rebalance": None}
    by = {}
    for r in runs:
        by.setdefault((r.get("kind"), r.get("groups"), r.get("members")), []).append(r)
    for (kind, groups, members), rs in by.items():
        bad = [r for r in rs if not r.get("ok")]
        if kind == "rebalance":
            out["rebalance"] = rs[0]
            continue
        s = {
            "groups": groups,
            "members": members,
            "reps": len(rs),
            "ok": not bad,
            "error": bad[0].get("error") if bad else None,
        }
        if not bad:
            vals = [r["value"] for r in rs]
            s["value"] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}
        if kind == "fanout":
            out["fanout"] = s
        else:
            out["members"].append(s)
    out["members"].sort(key=lambda s: s["members"])
    return out
