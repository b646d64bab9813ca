"""test_groups_mp.py — consumer groups across real processes.

What must hold (issue 4, shmlog/groups.py, invariants G1-G5 in csrc/shmlog.h):
the members of a group hold disjoint partitions that cover the topic; a join,
a leave, a kill -9, a session timeout (SIGSTOP) or a max-poll-interval breach
moves partitions to the live members within about the session timeout; a
partition handed over by a live member is committed first (on_revoke), so
records are duplicated only when a member dies or is removed, and then only
inside its uncommitted window; a zombie cannot commit (CommitFailed) and
rejoins cleanly when it polls; a static member (group_instance_id) that
restarts within its session gets its partitions back and nobody else is
revoked; committed offsets survive every process exiting (shared memory kept)
and, when committed with durable=True, a reboot (shared memory dropped);
every group on a topic sees every record.

Records carry their sequence number; the producer sends seq to partition
seq % P, so a record at (p, off) must hold seq == off * P + p. Member
processes log every event (assignment, callbacks, records consumed, commits)
as JSON lines appended with one write() each, so a member killed with
SIGKILL leaves a readable log (a torn last line is ignored). Members commit
only what they logged as consumed, and log a commit only after it returned,
so the parent's view of a killed member's last commit is never ahead of the
truth. Every wait has a deadline; children have their own time budget.
"""

import json
import os
import signal
import time
import traceback

import pytest

import shmlog
from shmlog import errors

SESSION_MS = 1000
BEAT_MS = 100
RING = 1 << 20
GROUP_TIMEOUTS = dict(session_timeout_ms=SESSION_MS, heartbeat_interval_ms=BEAT_MS)


# ------------------------------------------------------------------ children


def _exists(path):
    return path is not None and os.path.exists(path)


def _member(kwargs, topic, group, logpath, opts):
    """A group member: polls, logs what it consumes, commits every `commit_every`
    records (and every 0.2 s), commits revoked partitions in on_revoke. Control
    files in opts: go (wait before joining), stop, freeze/thaw (stop polling
    until thaw, then try to commit the positions held when frozen)."""
    fd = os.open(logpath, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def note(**ev):
        ev["t"] = time.monotonic()
        os.write(fd, (json.dumps(ev) + "\n").encode())

    deadline = time.monotonic() + opts.get("budget_s", 45)
    try:
        log = shmlog.connect(**kwargs, **opts.get("connect", {}))
        go = opts.get("go")
        if go is not None:
            while not os.path.exists(go):
                if time.monotonic() > deadline:
                    raise TimeoutError("never told to go")
                time.sleep(0.002)
        caps = opts.get("caps")  # {partition: offset}: records from there on are not processed
        durable = opts.get("durable", False)
        every = opts.get("commit_every", 50)
        nxt = {}  # (topic, partition) -> next offset to process

        def on_assign(cons, tps):
            note(ev="assign", tps=sorted(p for _, p in tps))

        def on_revoke(cons, tps):
            offs = {tp: nxt[tp] for tp in tps if tp in nxt}
            if offs:
                cons.commit(offs, durable=durable)
            for tp in tps:
                nxt.pop(tp, None)
            note(ev="revoke", tps=sorted(p for _, p in tps), committed={str(p): o for (_, p), o in offs.items()})

        def on_lost(cons, tps):
            for tp in tps:
                nxt.pop(tp, None)
            note(ev="lost", tps=sorted(p for _, p in tps))

        c = log.consumer(
            group=group,
            topics=[topic],
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            on_assign=on_assign,
            on_revoke=on_revoke,
            on_lost=on_lost,
            **{**GROUP_TIMEOUTS, **opts.get("group_options", {})},
        )
        note(ev="joined", pid=os.getpid())

        def commit_now(what):
            offs = {tp: nxt[tp] for tp in c.assignment() if tp in nxt}
            if not offs:
                return
            try:
                c.commit(offs, durable=durable)
            except errors.CommitFailed as e:
                note(ev="commit_failed", where=what, error=str(e))
                return
            note(ev="commit", where=what, committed={str(p): o for (_, p), o in offs.items()})

        last_assign = None
        since, last_commit = 0, time.monotonic()
        froze = False
        while time.monotonic() < deadline:
            if _exists(opts.get("stop")):
                break
            if not froze and _exists(opts.get("freeze")):
                froze = True
                commit_now("freeze")
                held = c.assignment()
                stale = {tp: c.position(*tp) for tp in held}
                note(ev="frozen", held=sorted(p for _, p in held), stale={str(p): o for (_, p), o in stale.items()})
                while not _exists(opts.get("thaw")) and time.monotonic() < deadline:
                    time.sleep(0.01)
                note(ev="thawed")
                try:
                    c.commit(stale)
                    note(ev="stale_commit", ok=True)
                except errors.CommitFailed as e:
                    note(ev="stale_commit", ok=False, error=str(e))
                continue
            msgs = c.poll_batch(500, timeout=0.05)
            rec = []
            for m in msgs:
                if caps is not None and m.offset >= caps[m.partition]:
                    continue
                rec.append([m.partition, m.offset, int(m.value)])
                nxt[(m.topic, m.partition)] = m.offset + 1
            if rec:
                note(ev="rec", r=rec)
                since += len(rec)
            a = sorted(p for _, p in c.assignment())
            if a != last_assign:
                note(ev="state", a=a)
                last_assign = a
            now = time.monotonic()
            if since >= every or (since and now - last_commit >= 0.2):
                commit_now("loop")
                since, last_commit = 0, now
        commit_now("stop")
        c.close()
        log.close()
        note(ev="exit")
    except BaseException:
        note(ev="error", tb=traceback.format_exc())
        raise


def _producer(kwargs, topic, partitions, stop, n_max, per_batch, pause_s):
    """Sends seq to partition seq % partitions until stop exists (or n_max); returns how many."""
    log = shmlog.connect(**kwargs)
    p = log.producer()
    seq = 0
    deadline = time.monotonic() + 40
    while seq < n_max and not os.path.exists(stop) and time.monotonic() < deadline:
        for _ in range(per_batch):
            md = p.send(topic, str(seq).encode(), partition=seq % partitions)
            assert md.offset == seq // partitions, (seq, md)
            seq += 1
        time.sleep(pause_s)
    p.close()
    log.close()
    return seq


# ------------------------------------------------------------------ parent side


class Member:
    """A member process and its event log."""

    def __init__(self, inst, name, topic, group, **opts):
        self.name = name
        self.logpath = str(inst.tmp_path / f"{name}.jsonl")
        self.proc = inst.process(_member, inst.kwargs, topic, group, self.logpath, opts)
        self.proc.start()

    @property
    def pid(self):
        return self.proc.pid

    def events(self):
        try:
            with open(self.logpath, "rb") as f:
                lines = f.read().split(b"\n")
        except FileNotFoundError:
            return []
        out = []
        for i, line in enumerate(lines):
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except ValueError:
                assert i == len(lines) - 1, f"{self.name}: damaged log line {i}: {line[:200]!r}"
        return out

    def of(self, kind, events=None):
        return [e for e in (self.events() if events is None else events) if e["ev"] == kind]

    def assignment(self, events=None):
        st = self.of("state", events)
        return st[-1]["a"] if st else None

    def consumed(self, events=None):
        return [tuple(r) for e in self.of("rec", events) for r in e["r"]]

    def commits(self, events=None):
        """{partition: last committed offset} from commit and revoke events, in order."""
        last = {}
        for e in self.events() if events is None else events:
            if e["ev"] in ("commit", "revoke"):
                for p, o in e["committed"].items():
                    last[int(p)] = o
        return last

    def error(self):
        errs = self.of("error")
        return errs[0]["tb"] if errs else None

    def kill(self, sig=signal.SIGKILL):
        os.kill(self.pid, sig)


def _check_errors(members):
    for m in members:
        tb = m.error()
        if tb:
            pytest.fail(f"member {m.name} failed:\n{tb}")


def wait_for(what, cond, timeout, members=(), diag=None):
    """Polls cond() until it returns something truthy; fails with diagnostics at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        _check_errors(members)
        res = cond()
        if res:
            return res
        if time.monotonic() > deadline:
            info = diag() if diag else ""
            states = {m.name: (m.assignment(), m.proc.is_alive()) for m in members}
            pytest.fail(
                f"timed out after {timeout} s waiting for {what}; members (assignment, alive): {states}\n{info}"
            )
        time.sleep(0.05)


def stable(log, group, members, partitions):
    """{name: partitions} once the group's table and every member's own view
    agree, the members are exactly `members`, no move is pending, and the
    assignments are disjoint and cover every partition; else None."""
    if group not in log.list_groups():
        return None  # no member joined yet
    desc = log.describe_group(group)
    if desc.state != "Stable" or len(desc.members) != len(members):
        return None
    by_pid = {d.pid: sorted(p for _, p in d.assignment) for d in desc.members}
    out = {}
    for m in members:
        if m.pid not in by_pid or m.assignment() != by_pid[m.pid]:
            return None
        out[m.name] = by_pid[m.pid]
    if sorted(p for a in out.values() for p in a) != list(range(partitions)):
        return None
    return out


def describe(log, group):
    return lambda: f"describe_group: {log.describe_group(group) if group in log.list_groups() else None}"


def join_all(members, timeout):
    deadline = time.monotonic() + timeout
    for m in members:
        m.proc.join(max(0.0, deadline - time.monotonic()))
    hung = [m.name for m in members if m.proc.is_alive()]
    assert not hung, f"members still running at the deadline (killed at teardown): {hung}"
    _check_errors(members)
    bad = {m.name: m.proc.exitcode for m in members if m.proc.exitcode != 0}
    assert not bad, f"members exited with non-zero codes: {bad}"


def check_records(consumed, partitions):
    """Every (p, off, seq) holds the record the producer wrote there."""
    wrong = [r for r in consumed if r[2] != r[1] * partitions + r[0]]
    assert not wrong, f"records with the wrong value for their place (p, off, seq): {wrong[:10]}"


def produce(log, topic, partitions, n, start=0, durable=False):
    p = log.producer()
    for seq in range(start, start + n):
        md = p.send(topic, str(seq).encode(), partition=seq % partitions)
        assert md.offset == seq // partitions
    if durable:
        p.flush(durable=True, timeout=20)
    p.close()


def touch(path):
    open(path, "w").close()


# ------------------------------------------------------------------ 1. join, rebalance, kill -9


def test_group_rebalances_on_join_and_kill9_without_loss(inst):
    P, topic, group = 6, "orders", "billing"
    inst.log.create_topic(topic, partitions=P, ring_bytes=RING, persistence="none")
    d = inst.tmp_path
    stop, prod_stop = str(d / "stop"), str(d / "prod_stop")
    members = [Member(inst, f"m{i}", topic, group, stop=stop, commit_every=40) for i in range(3)]

    three = wait_for(
        "3 members to settle", lambda: stable(inst.log, group, members, P), 15, members, describe(inst.log, group)
    )
    assert all(len(a) == 2 for a in three.values()), three

    prod = inst.spawn("producer", _producer, inst.kwargs, topic, P, prod_stop, 30_000, 6, 0.005)
    wait_for("records to flow", lambda: all(m.consumed() for m in members), 10, members)

    members.append(Member(inst, "m3", topic, group, stop=stop, commit_every=40))
    four = wait_for(
        "4 members to settle", lambda: stable(inst.log, group, members, P), 15, members, describe(inst.log, group)
    )
    assert sorted(len(a) for a in four.values()) == [1, 1, 2, 2], four

    victim = next(m for m in members if len(four[m.name]) == 2)
    moved = set(four[victim.name])
    n_before = len(victim.consumed())
    wait_for("the victim to consume after the rebalance", lambda: len(victim.consumed()) > n_before, 10, members)
    victim.kill()
    t_kill = time.monotonic()
    victim.proc.join(5)
    survivors = [m for m in members if m is not victim]
    after = wait_for(
        "the victim's partitions to move",
        lambda: stable(inst.log, group, survivors, P),
        15,
        survivors,
        describe(inst.log, group),
    )
    took = time.monotonic() - t_kill
    assert took < 3 * SESSION_MS / 1000, f"partitions of a kill -9'ed member moved after {took:.2f} s"
    for m in survivors:  # cooperative-sticky: survivors keep what they had
        assert set(four[m.name]) <= set(after[m.name]), (four, after)
    assert moved <= {p for a in after.values() for p in a}

    # consumption continues on the moved partitions
    seen = {p: max((r[1] for m in survivors for r in m.consumed() if r[0] == p), default=-1) for p in moved}
    wait_for(
        "survivors to consume the moved partitions",
        lambda: all(
            max((r[1] for m in survivors for r in m.consumed() if r[0] == p), default=-1) > seen[p] for p in moved
        ),
        10,
        survivors,
    )
    time.sleep(1.0)  # and keeps going for a while
    touch(prod_stop)
    n = inst.collect([prod], time.monotonic() + 30)["producer"]

    everything = {(s % P, s // P) for s in range(n)}

    def all_consumed():
        got = {(r[0], r[1]) for m in members for r in m.consumed()}
        return got >= everything

    wait_for(f"all {n} records to be consumed", all_consumed, 20, survivors)
    touch(stop)
    join_all(survivors, 20)

    consumed = [(m.name, r) for m in members for r in m.consumed()]
    check_records([r for _, r in consumed], P)
    assert {(r[0], r[1]) for _, r in consumed} == everything, "records consumed that were never produced"
    counts = {}
    for name, r in consumed:
        counts.setdefault((r[0], r[1]), []).append(name)
    victim_ev = victim.events()
    floor = victim.commits(victim_ev)
    for p in moved:
        if p not in floor:  # never committed: the next owner starts where the victim started
            floor[p] = min((r[1] for r in victim.consumed(victim_ev) if r[0] == p), default=float("inf"))
    bad = {
        k: v
        for k, v in counts.items()
        if len(v) > 1 and not (len(v) == 2 and victim.name in v and k[0] in moved and k[1] >= floor[k[0]])
    }
    assert not bad, (
        f"duplicates outside the killed member's uncommitted window (its last commits "
        f"{floor}): {sorted(bad.items())[:10]}"
    )
    for m in survivors:
        ev = m.events()
        assert not m.of("lost", ev) and not m.of("commit_failed", ev), (m.name, m.of("lost", ev))
        assert m.of("exit", ev), m.name
    assert inst.log.describe_group(group).members == []
    assert inst.log.committed_offsets(group) == {(topic, p): (n - p + P - 1) // P for p in range(P)}


# ------------------------------------------------------------------ 2. static membership


def test_static_member_restarting_within_session_keeps_partitions(inst):
    P, topic, group = 6, "events", "static"
    inst.log.create_topic(topic, partitions=P, ring_bytes=RING, persistence="none")
    produce(inst.log, topic, P, 120)
    d = inst.tmp_path
    stop, go = str(d / "stop"), str(d / "go")
    members = [
        Member(
            inst, f"s{i}", topic, group, stop=stop, commit_every=5, group_options={"group_instance_id": f"worker-{i}"}
        )
        for i in range(3)
    ]
    # the replacement is forked and connected now, and joins the moment it is told to
    heir = Member(
        inst,
        "s1-restarted",
        topic,
        group,
        stop=stop,
        go=go,
        commit_every=5,
        group_options={"group_instance_id": "worker-1"},
    )
    before = wait_for(
        "3 static members to settle",
        lambda: stable(inst.log, group, members, P),
        15,
        members,
        describe(inst.log, group),
    )
    wait_for(
        "everything to be consumed and committed",
        lambda: inst.log.committed_offsets(group) == {(topic, p): 20 for p in range(P)},
        15,
        members,
    )
    marks = {m.name: len(m.events()) for m in members}
    victim = members[1]
    victim.kill()
    t_kill = time.monotonic()
    victim.proc.join(5)
    # a restart takes a while: long enough for the others' heartbeat threads (every BEAT_MS) to look
    # at the dead member several times, well inside its session
    time.sleep(3 * BEAT_MS / 1000)
    touch(go)
    live = [members[0], heir, members[2]]
    wait_for("the restarted member's assignment", lambda: heir.assignment() is not None, 10, live)
    back = time.monotonic() - t_kill
    assert back < SESSION_MS / 1000, f"restart took {back:.2f} s, longer than the session: the test is invalid"
    after = wait_for(
        "the group to settle", lambda: stable(inst.log, group, live, P), 10, live, describe(inst.log, group)
    )
    assert after["s1-restarted"] == before["s1"], (before, after)
    # stay past the dead process's session timeout: nothing may move then either
    time.sleep(max(0.0, t_kill + 2 * SESSION_MS / 1000 - time.monotonic()))
    assert stable(inst.log, group, live, P) == after
    desc = inst.log.describe_group(group)
    assert sorted(m.group_instance_id for m in desc.members) == ["worker-0", "worker-1", "worker-2"]
    for m in (members[0], members[2]):
        later = m.events()[marks[m.name] :]
        moves = [e for e in later if e["ev"] in ("revoke", "lost", "assign")]
        assert not moves, f"{m.name} saw {moves} when a static member restarted"
        assert m.assignment() == before[m.name]
    first = heir.of("assign")
    assert first and first[0]["tps"] == before["s1"], first
    assert not heir.of("revoke") and not heir.of("lost")
    produce(inst.log, topic, P, 60, start=120)
    wait_for(
        "the restarted member to consume from its committed offsets",
        lambda: {(r[0], r[1]) for r in heir.consumed()} >= {(p, o) for p in before["s1"] for o in range(20, 30)},
        10,
        live,
    )
    touch(stop)
    join_all(live, 20)
    got = heir.consumed()
    for p in before["s1"]:
        offs = sorted(r[1] for r in got if r[0] == p)
        assert offs == list(range(20, 30)), (p, offs)  # resumed at the committed 20, nothing lost or repeated


# ------------------------------------------------------------------ 3. zombie fencing (SIGSTOP)


def test_sigstopped_member_is_fenced_then_rejoins(inst):
    P, topic, group = 4, "jobs", "fenced"
    inst.log.create_topic(topic, partitions=P, ring_bytes=RING, persistence="none")
    produce(inst.log, topic, P, 40)
    d = inst.tmp_path
    stop, freeze, thaw = str(d / "stop"), str(d / "freeze"), str(d / "thaw")
    zombie = Member(inst, "zombie", topic, group, stop=stop, freeze=freeze, thaw=thaw, commit_every=5)
    wait_for("the first member", lambda: stable(inst.log, group, [zombie], P), 10, [zombie])
    other = Member(inst, "other", topic, group, stop=stop, commit_every=5)
    members = [zombie, other]
    before = wait_for(
        "2 members to settle", lambda: stable(inst.log, group, members, P), 15, members, describe(inst.log, group)
    )
    held = before["zombie"]
    assert len(held) == 2, before
    wait_for(
        "everything to be committed",
        lambda: inst.log.committed_offsets(group) == {(topic, p): 10 for p in range(P)},
        15,
        members,
    )

    touch(freeze)
    frozen = wait_for("the member to freeze", lambda: zombie.of("frozen"), 10, members)[0]
    assert frozen["held"] == held
    zombie.kill(signal.SIGSTOP)
    t_stop = time.monotonic()
    try:
        taken = wait_for(
            "the stopped member's partitions to move",
            lambda: stable(inst.log, group, [other], P),
            15,
            [other],
            describe(inst.log, group),
        )
        took = time.monotonic() - t_stop
        assert taken == {"other": list(range(P))}
        assert 0.8 * SESSION_MS / 1000 <= took < 4 * SESSION_MS / 1000, (
            f"a stopped (alive) member lost its partitions after {took:.2f} s, session timeout is {SESSION_MS} ms"
        )
        produce(inst.log, topic, P, 40, start=40)  # the new owner commits past the zombie's positions
        wait_for(
            "the new owner to commit everything",
            lambda: inst.log.committed_offsets(group) == {(topic, p): 20 for p in range(P)},
            15,
            [other],
        )
        touch(thaw)
    finally:
        zombie.kill(signal.SIGCONT)
    res = wait_for("the zombie's stale commit", lambda: zombie.of("stale_commit"), 10, members)[0]
    assert res["ok"] is False, "a member removed from its group could still commit"
    assert inst.log.committed_offsets(group) == {(topic, p): 20 for p in range(P)}, (
        "the zombie's stale commit overwrote the new owner's offsets"
    )
    assert {int(p): o for p, o in frozen["stale"].items()} == {p: 10 for p in held}

    # it polls, learns it was removed, rejoins and works again
    again = wait_for(
        "the zombie to rejoin", lambda: stable(inst.log, group, members, P), 15, members, describe(inst.log, group)
    )
    assert again["zombie"], again
    ev = zombie.events()
    lost = zombie.of("lost", ev)
    assert lost and lost[0]["tps"] == held, lost
    mark = len(ev)
    produce(inst.log, topic, P, 40, start=80)
    wait_for(
        "everything to be committed after the rejoin",
        lambda: inst.log.committed_offsets(group) == {(topic, p): 30 for p in range(P)},
        15,
        members,
    )
    wait_for(
        "a successful commit by the rejoined member",
        lambda: any(e["ev"] == "commit" for e in zombie.events()[mark:]),
        10,
        members,
    )
    touch(stop)
    join_all(members, 20)
    consumed = [r for m in members for r in m.consumed()]
    check_records(consumed, P)
    keys = sorted((r[0], r[1]) for r in consumed)
    assert keys == sorted((p, o) for p in range(P) for o in range(30)), (
        "records lost or consumed twice (every hand-over here was committed)"
    )
    assert not [e for e in zombie.events()[mark:] if e["ev"] == "commit_failed"]


# ------------------------------------------------------------------ 4. restart everything

CAPS = {0: 57, 1: 123, 2: 181}
TOTAL_PER_PARTITION = 200


def _commit_to_caps_and_exit(inst, topic, members_per_group, connect=None):
    """Two groups ("durable" commits with durable=True, "plain" without)
    process each partition up to CAPS, commit, and every member exits."""
    d = inst.tmp_path
    stop = str(d / "stop-phase1")
    members = []
    for group, durable in (("durable", True), ("plain", False)):
        for i in range(members_per_group):
            members.append(
                Member(
                    inst,
                    f"{group}{i}",
                    topic,
                    group,
                    stop=stop,
                    caps=CAPS,
                    durable=durable,
                    commit_every=20,
                    connect=connect or {},
                )
            )
    want = {(topic, p): c for p, c in CAPS.items()}
    for group in ("durable", "plain"):
        wait_for(
            f"group {group} to commit up to the caps",
            lambda group=group: inst.log.committed_offsets(group) == want,
            20,
            members,
            describe(inst.log, group),
        )
    touch(stop)
    join_all(members, 20)
    for group in ("durable", "plain"):
        assert inst.log.describe_group(group).members == []
        assert inst.log.committed_offsets(group) == want, group
    return want


def _resume(inst, topic, group, start, connect=None):
    """New member processes of group: each partition must be read from start[p]
    to the end, exactly once."""
    d = inst.tmp_path
    stop = str(d / f"stop-{group}")
    members = [
        Member(inst, f"{group}-again{i}", topic, group, stop=stop, commit_every=20, connect=connect or {})
        for i in range(2)
    ]
    want = sorted((p, o) for p in range(len(CAPS)) for o in range(start[p], TOTAL_PER_PARTITION))
    wait_for(
        f"group {group} to read on from its offsets",
        lambda: {(r[0], r[1]) for m in members for r in m.consumed()} >= set(want),
        20,
        members,
        describe(inst.log, group),
    )
    touch(stop)
    join_all(members, 20)
    consumed = [r for m in members for r in m.consumed()]
    check_records(consumed, len(CAPS))
    firsts = {p: min(r[1] for r in consumed if r[0] == p) for p in range(len(CAPS))}
    assert firsts == start, f"group {group} resumed at {firsts}, its committed offsets are {start}"
    assert sorted((r[0], r[1]) for r in consumed) == want, f"group {group}: records repeated"


def test_groups_resume_at_committed_offsets_after_every_process_exits(inst):
    topic, P = "ledger", len(CAPS)
    inst.log.create_topic(topic, partitions=P, ring_bytes=RING, persistence="none")
    produce(inst.log, topic, P, P * TOTAL_PER_PARTITION)
    _commit_to_caps_and_exit(inst, topic, 2)
    inst.log.close()  # the test's own connection too: nothing of the groups is in a process
    inst.log = inst.connect()
    for group in ("durable", "plain"):
        _resume(inst, topic, group, CAPS)


def test_durably_committed_group_resumes_after_shared_memory_is_lost(inst):
    topic, P = "ledger", len(CAPS)
    inst.log.create_topic(topic, partitions=P, ring_bytes=RING, persistence="disk", fsync="interval:10")
    # the records reach the disk through stop_persister (it persists and fsyncs everything first)
    produce(inst.log, topic, P, P * TOTAL_PER_PARTITION, durable=False)
    assert inst.log.stop_persister(), "the disk topic should have started a persister"
    # no persister while the groups commit: only commit(durable=True) may put offsets on disk
    no_persister = {"autostart": False}
    _commit_to_caps_and_exit(inst, topic, 2, connect=no_persister)
    inst.log.close()
    inst.drop_shared_memory()
    assert inst.segments() == [], inst.segments()
    inst.log = inst.connect(autostart=False)
    assert inst.log.describe_topic(topic) is not None
    restored = inst.log.committed_offsets("durable")
    assert restored == {(topic, p): c for p, c in CAPS.items()}, f"durable commits lost in the restart: {restored}"
    plain = inst.log.committed_offsets("plain")
    assert all(plain.get((topic, p), 0) <= c for p, c in CAPS.items()), (
        f"restored plain offsets beyond what was committed: {plain}"
    )
    _resume(inst, topic, "durable", CAPS, connect=no_persister)
    _resume(inst, topic, "plain", {p: plain.get((topic, p), 0) for p in CAPS}, connect=no_persister)


# ------------------------------------------------------------------ 5. fan-out


def test_two_groups_on_one_topic_each_see_every_record(inst):
    P, topic, N = 4, "feed", 2000
    inst.log.create_topic(topic, partitions=P, ring_bytes=RING, persistence="none")
    d = inst.tmp_path
    stop, prod_stop = str(d / "stop"), str(d / "prod_stop")
    members = {"sticky": [], "range": []}
    for group, strategy in (("sticky", "cooperative-sticky"), ("range", "range")):
        for i in range(2):
            members[group].append(
                Member(
                    inst,
                    f"{group}{i}",
                    topic,
                    group,
                    stop=stop,
                    commit_every=30,
                    group_options={"partition_assignment_strategy": strategy},
                )
            )
    everyone = members["sticky"] + members["range"]
    prod = inst.spawn("producer", _producer, inst.kwargs, topic, P, prod_stop, N, 4, 0.002)
    for group, ms in members.items():
        wait_for(
            f"group {group} to settle",
            lambda group=group, ms=ms: stable(inst.log, group, ms, P),
            15,
            everyone,
            describe(inst.log, group),
        )
    assert inst.collect([prod], time.monotonic() + 30)["producer"] == N
    want = sorted((s % P, s // P) for s in range(N))
    for group, ms in members.items():
        wait_for(
            f"group {group} to consume all {N} records",
            lambda ms=ms: {(r[0], r[1]) for m in ms for r in m.consumed()} >= set(want),
            20,
            everyone,
        )
    touch(stop)
    join_all(everyone, 20)
    for group, ms in members.items():
        consumed = [r for m in ms for r in m.consumed()]
        check_records(consumed, P)
        assert sorted((r[0], r[1]) for r in consumed) == want, f"group {group}: records repeated"
        assert inst.log.committed_offsets(group) == {(topic, p): N // P for p in range(P)}
    assert set(inst.log.list_groups()) >= {"sticky", "range"}


# ------------------------------------------------------------------ 6. max poll interval


def test_member_that_stops_polling_is_removed_after_max_poll_interval(inst):
    P, topic, group = 4, "tasks", "slow"
    max_poll_ms = 1500
    inst.log.create_topic(topic, partitions=P, ring_bytes=RING, persistence="none")
    produce(inst.log, topic, P, 40)
    d = inst.tmp_path
    stop, freeze, thaw = str(d / "stop"), str(d / "freeze"), str(d / "thaw")
    slow = Member(
        inst,
        "slow",
        topic,
        group,
        stop=stop,
        freeze=freeze,
        thaw=thaw,
        commit_every=5,
        group_options={"max_poll_interval_ms": max_poll_ms},
    )
    wait_for("the first member", lambda: stable(inst.log, group, [slow], P), 10, [slow])
    other = Member(inst, "other", topic, group, stop=stop, commit_every=5)
    members = [slow, other]
    before = wait_for(
        "2 members to settle", lambda: stable(inst.log, group, members, P), 15, members, describe(inst.log, group)
    )
    wait_for(
        "everything to be committed",
        lambda: inst.log.committed_offsets(group) == {(topic, p): 10 for p in range(P)},
        15,
        members,
    )
    touch(freeze)  # its main thread stops polling; its heartbeat thread keeps beating
    frozen = wait_for("the member to stop polling", lambda: slow.of("frozen"), 10, members)[0]
    t_freeze = frozen["t"]
    taken = wait_for(
        "the idle member's partitions to move",
        lambda: stable(inst.log, group, [other], P),
        15,
        members,
        describe(inst.log, group),
    )
    took = time.monotonic() - t_freeze
    assert taken == {"other": list(range(P))}
    assert took >= 0.8 * max_poll_ms / 1000, (
        f"removed after {took:.2f} s: a member that heartbeats must stay for max_poll_interval_ms={max_poll_ms}"
    )
    assert took < max_poll_ms / 1000 + 3, f"removed only after {took:.2f} s"
    assert slow.proc.is_alive()
    touch(thaw)
    res = wait_for("its stale commit", lambda: slow.of("stale_commit"), 10, members)[0]
    assert res["ok"] is False, "a member removed for not polling could still commit"
    again = wait_for(
        "the slow member to rejoin", lambda: stable(inst.log, group, members, P), 15, members, describe(inst.log, group)
    )
    assert again["slow"], again
    lost = slow.of("lost")
    assert lost and lost[0]["tps"] == before["slow"], lost
    touch(stop)
    join_all(members, 20)
    consumed = [r for m in members for r in m.consumed()]
    check_records(consumed, P)
    assert sorted((r[0], r[1]) for r in consumed) == sorted((p, o) for p in range(P) for o in range(10))


# ------------------------------------------------------------------ chaos seed 100: admin+kill, then reboot


def _durable_member(kwargs, path):
    """Polls group gdur on dur; after each commit(durable=True) returns, one
    write(2) of 'partition offset' (a kill -9 leaves whole lines)."""
    log = shmlog.connect(**kwargs)
    c = log.consumer(
        group="gdur",
        topics=["dur"],
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=3000,
        heartbeat_interval_ms=300,
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    while True:
        msgs = c.poll_batch(100, timeout=0.2)
        last = {}
        for m in msgs:
            last[m.partition] = m.offset + 1
        if last:
            c.commit({("dur", p): o for p, o in last.items()}, durable=True)
            os.write(fd, "".join(f"{p} {o}\n" for p, o in last.items()).encode())


def _dur_producer(kwargs):
    log = shmlog.connect(**kwargs)
    p = log.producer()
    i = 0
    while True:
        p.send_batch("dur", [b"r%d" % (i + k) for k in range(20)], partition=(i // 20) % 2)
        p.flush(durable=True)
        i += 20
        time.sleep(0.002)


def _recreate(kwargs):
    log = shmlog.connect(**kwargs)
    log.delete_topic("kaf")
    log.create_topic("kaf", partitions=1, segment_bytes=1 << 16)


@pytest.mark.parametrize("kill_after_ms", [0, 40])
def test_durable_commits_survive_admin_kill_then_reboot(inst, tmp_path, kill_after_ms):
    """Chaos seed 100: the supervisor killed -9 0-60 ms into a delete and
    re-create of another topic, members going on committing durably with no
    supervisor, then a reboot (every process killed, /dev/shm dropped): every
    commit(durable=True) that returned is restored, for every partition."""
    sup = inst.start_supervisor()
    log = inst.log
    log.create_topic("dur", partitions=2, ring_bytes=1 << 18, segment_bytes=1 << 16)
    log.create_topic("kaf", partitions=1, segment_bytes=1 << 16)
    kw = inst.kwargs
    prod = inst.process(_dur_producer, kw)
    prod.start()
    paths = [str(tmp_path / f"m{i}.commits") for i in range(2)]
    members = [inst.process(_durable_member, kw, p) for p in paths]
    for m in members:
        m.start()
    time.sleep(2.5)
    admin = inst.process(_recreate, kw)
    admin.start()
    time.sleep(kill_after_ms / 1000)
    sup.kill()
    sup.wait(10)
    time.sleep(1.5)  # members commit durably with no supervisor
    for pr in [*members, prod, admin]:
        if pr.is_alive():
            os.kill(pr.pid, signal.SIGKILL)
        pr.join(5)
    inst.kill_persister()
    try:
        log.close()
    except Exception:
        pass
    inst.drop_shared_memory()
    acked = {}
    for path in paths:
        if os.path.exists(path):
            for line in open(path).read().splitlines():
                p, o = map(int, line.split())
                acked[p] = max(acked.get(p, 0), o)
    assert set(acked) == {0, 1}, f"the members committed too little to judge: {acked}"
    inst.log = log2 = inst.connect()  # the reboot's restore
    got = log2.committed_offsets("gdur")
    lost = {p: (o, got.get(("dur", p))) for p, o in acked.items() if (got.get(("dur", p)) or -1) < o}
    assert not lost, f"durable commits lost across the reboot: {{partition: (acked, restored)}} = {lost}"
