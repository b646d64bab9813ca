"""Group members with records decoded and not yet returned (issue 12 defect 3):
poll() serves up to max_poll_records records it decoded in one read, and a
member working slowly through them must still hand a partition over at once,
and a zombie (SIGSTOP past its session, SIGCONT) must find itself removed on
its next poll, drop the records of partitions it no longer owns, run on_lost
and rejoin. Real processes, real signals, bounded waits; members log JSON
lines (one write each) that the parent reads."""

import json
import os
import signal
import time
import traceback

import shmlog
from test_groups_mp import Member, describe, produce, stable, touch, wait_for

SESSION_MS = 1000
BEAT_MS = 100
RING = 4 << 20
WORK_S = 0.02  # per record: 500 buffered records are 10 s of work


def _slow_member(kwargs, topic, group, logpath, stop, budget_s):
    """poll() one record at a time with WORK_S of work each; auto-commit
    (which commits what poll returned, on revoke too); logs every record,
    callback and assignment change."""
    fd = os.open(logpath, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def note(**ev):
        ev["t"] = time.monotonic()
        os.write(fd, (json.dumps(ev) + "\n").encode())

    try:
        log = shmlog.connect(**kwargs)
        c = log.consumer(
            group=group,
            topics=[topic],
            auto_offset_reset="earliest",
            max_poll_records=500,
            session_timeout_ms=SESSION_MS,
            heartbeat_interval_ms=BEAT_MS,
            auto_commit_interval_ms=200,
            on_assign=lambda cons, tps: note(ev="assign", tps=sorted(p for _, p in tps)),
            on_revoke=lambda cons, tps: note(ev="revoke", tps=sorted(p for _, p in tps)),
            on_lost=lambda cons, tps: note(ev="lost", tps=sorted(p for _, p in tps)),
        )
        note(ev="joined", pid=os.getpid())
        last = None
        deadline = time.monotonic() + budget_s
        while time.monotonic() < deadline and not os.path.exists(stop):
            m = c.poll(0.05)
            a = sorted(p for _, p in c.assignment())
            if a != last:
                note(ev="state", a=a)
                last = a
            if m is not None:
                note(
                    ev="rec", p=m.partition, o=m.offset, v=int(m.value), owned=(m.topic, m.partition) in c.assignment()
                )
                time.sleep(WORK_S)
        c.close()
        log.close()
        note(ev="exit")
    except BaseException:
        note(ev="error", tb=traceback.format_exc())
        raise


class Slow(Member):
    """A _slow_member process and its event log (Member's readers)."""

    def __init__(self, inst, name, topic, group, stop, budget_s=40):
        self.name = name
        self.logpath = str(inst.tmp_path / f"{name}.jsonl")
        self.proc = inst.process(_slow_member, inst.kwargs, topic, group, self.logpath, stop, budget_s)
        self.proc.start()


def _records(members):
    return sorted((e["p"], e["o"]) for m in members for e in m.of("rec"))


def test_slow_member_hands_partitions_over_without_serving_its_buffer_first(inst):
    P, topic, group = 4, "slow", "handover"
    inst.log.create_topic(topic, partitions=P, ring_bytes=RING, persistence="none")
    produce(inst.log, topic, P, 4000)
    stop = str(inst.tmp_path / "stop")
    a = Slow(inst, "a", topic, group, stop)
    wait_for("a to read", lambda: len(a.of("rec")) >= 5, 15, [a])
    b = Slow(inst, "b", topic, group, stop)
    t0 = time.monotonic()
    split = wait_for(
        "b to get partitions", lambda: stable(inst.log, group, [a, b], P), 15, [a, b], describe(inst.log, group)
    )
    took = time.monotonic() - t0
    assert split["b"], split
    # a holds up to 500 decoded records (10 s of its work): the hand-over must not wait for them
    assert took < 4, f"b waited {took:.1f} s for its partitions"
    revoke = a.of("revoke")
    assert revoke and set(revoke[0]["tps"]) == set(split["b"])
    t_rev = revoke[0]["t"]
    late = [e for e in a.of("rec") if e["t"] > t_rev and e["p"] in split["b"]]
    assert not late, f"a returned records of partitions it handed over: {late[:5]}"
    assert all(e["owned"] for m in (a, b) for e in m.of("rec"))
    # the hand-over was committed: no record twice, none lost
    wait_for("b to pass a's position", lambda: len(b.of("rec")) >= 40, 15, [a, b])
    touch(stop)
    for m in (a, b):
        m.proc.join(20)
    got = _records([a, b])
    assert len(got) == len(set(got)), "records consumed twice across a clean hand-over"
    for p in split["b"]:
        mine = sorted(o for q, o in got if q == p)
        assert mine == list(range(len(mine))), f"partition {p}: a gap at the hand-over"


def test_zombie_with_buffered_records_drops_them_runs_on_lost_and_rejoins(inst):
    P, topic, group = 4, "zomb", "zombies"
    inst.log.create_topic(topic, partitions=P, ring_bytes=RING, persistence="none")
    produce(inst.log, topic, P, 4000)
    stop = str(inst.tmp_path / "stop")
    z = Slow(inst, "z", topic, group, stop)
    o = Slow(inst, "o", topic, group, stop)
    before = wait_for("2 members", lambda: stable(inst.log, group, [z, o], P), 15, [z, o], describe(inst.log, group))
    held = before["z"]
    wait_for("z to read its partitions", lambda: len([e for e in z.of("rec") if e["p"] in held]) >= 10, 15, [z, o])
    os.kill(z.pid, signal.SIGSTOP)
    try:
        wait_for(
            "o to take every partition", lambda: stable(inst.log, group, [o], P), 15, [o], describe(inst.log, group)
        )
    finally:
        os.kill(z.pid, signal.SIGCONT)
    t_cont = time.monotonic()
    lost = wait_for("z's on_lost", lambda: z.of("lost"), 10, [z, o])[0]
    assert lost["t"] - t_cont < 2, f"on_lost ran {lost['t'] - t_cont:.1f} s after SIGCONT"
    assert lost["tps"] == held
    stale = [e for e in z.of("rec") if t_cont < e["t"] < lost["t"]]
    assert len(stale) <= 1, f"the zombie returned {len(stale)} records of partitions it had lost"
    again = wait_for("z to rejoin", lambda: stable(inst.log, group, [z, o], P), 15, [z, o], describe(inst.log, group))
    assert again["z"], again
    desc = {d.pid: sorted(p for _, p in d.assignment) for d in inst.log.describe_group(group).members}
    assert desc[z.pid] == z.assignment(), "the zombie's assignment() disagrees with the group"
    touch(stop)
    for m in (z, o):
        m.proc.join(20)
        assert m.proc.exitcode == 0, m.error()
    assert all(e["owned"] for m in (z, o) for e in m.of("rec"))
