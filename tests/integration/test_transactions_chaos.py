"""Exactly-once under kill -9: a consume-transform-produce service over 4
input partitions writing 2 output topics in transactions with its offsets
(send_offsets_to_transaction), killed at random points 100 times (inside the
transaction, between the output writes and the commit, right after it),
plus zombies (SIGSTOP, a successor, SIGCONT). A read_committed reader of the
outputs must see every input record exactly once; read_uncommitted sees the
aborted attempts too; the zombie is fenced."""

import os
import random
import signal
import time
from collections import Counter

import psutil
import pytest

import shmlog
from shmlog import errors
from test_transactions import drain

PARTITIONS = 4
PER_PARTITION = 1000
KILLS = 100
STEPS = ("begin", "mid-writes", "after-writes", "after-offsets", "after-commit")


def _worker(kwargs, seed, mark_dir):
    """One incarnation of the service. seed >= 0: dies (SIGKILL to itself) at
    a step the seed picks, or is killed by the test; seed -1: runs until the
    input is consumed; seed -2: the same, but stops itself (SIGSTOP: a long
    pause) inside its third transaction, between its output writes and its
    offsets. Writes `fenced` in mark_dir if it finds itself fenced."""
    rnd = random.Random(seed)
    log = shmlog.connect(**kwargs)
    p = log.producer(transactional_id="eos")
    p.init_transactions()
    start = log.committed_offsets("eos")
    c = log.consumer(group="eos", auto_offset_reset="earliest", enable_auto_commit=False)
    c.assign([("in", q, start.get(("in", q), 0)) for q in range(PARTITIONS)])
    die_batch = rnd.randrange(0, 4) if seed >= 0 and seed % 2 == 0 else None
    die_step = rnd.choice(STEPS)
    open(os.path.join(mark_dir, f"up-{os.getpid()}"), "w").close()
    batches = 0

    def maybe_die(step):
        if batches == die_batch and step == die_step:
            os.kill(os.getpid(), signal.SIGKILL)

    while seed < 0 or batches < 5:  # an incarnation that is killed gets a few batches done at most
        ms = c.poll_batch(rnd.randint(1, 40), timeout=0.05)
        if not ms:
            ends = c.end_offsets()
            if all(c.position("in", q) >= ends[("in", q)] for q in range(PARTITIONS)):
                return  # the input is consumed (an incarnation whose kill step never came exits)
            continue
        try:
            p.begin_transaction()
            maybe_die("begin")
            for i, m in enumerate(ms):
                p.send("o1", m.value, key=m.key)
                if i == len(ms) // 2:
                    maybe_die("mid-writes")
                p.produce("o2", m.value)
            maybe_die("after-writes")
            if seed == -2 and batches == 2:
                os.kill(os.getpid(), signal.SIGSTOP)  # paused outside every coordinator call
            ends = {}
            for m in ms:
                ends[(m.topic, m.partition)] = m.offset + 1
            p.send_offsets_to_transaction(ends, c.consumer_group_metadata())
            maybe_die("after-offsets")
            p.commit_transaction()
        except errors.ProducerFenced:
            open(os.path.join(mark_dir, "fenced"), "w").close()
            return
        maybe_die("after-commit")
        batches += 1
        time.sleep(0.002)  # the work a real service does per batch


def _values(log, topic, isolation):
    with log.consumer(topics=[topic], auto_offset_reset="earliest", isolation_level=isolation) as c:
        return [m.value for m in drain(c, 0.5)]


def _wait_up(inst, proc, mark_dir, timeout=20):
    deadline = time.monotonic() + timeout
    while not os.path.exists(os.path.join(mark_dir, f"up-{proc.pid}")):
        if not proc.is_alive():
            return
        assert time.monotonic() < deadline, "worker did not start"
        time.sleep(0.005)


@pytest.mark.slow
def test_consume_transform_produce_is_exactly_once_across_100_kills(inst):
    log = inst.log
    log.create_topic("in", partitions=PARTITIONS)
    log.create_topic("o1", partitions=2)
    log.create_topic("o2", partitions=1, persistence="none")
    feed = log.producer()
    inputs = []
    for q in range(PARTITIONS):
        vals = [b"r%d-%04d" % (q, i) for i in range(PER_PARTITION)]
        feed.send_batch("in", vals, keys=[v[:2] for v in vals], partition=q)
        inputs += vals
    mark = str(inst.tmp_path / "marks")
    os.makedirs(mark)
    rnd = random.Random(1234)
    killed = fenced_checks = 0
    for seed in range(KILLS):
        proc = inst.process(_worker, inst.kwargs, seed, mark)
        proc.start()
        if seed % 2:  # the test kills it at a random moment
            _wait_up(inst, proc, mark)
            time.sleep(rnd.uniform(0, 0.03))
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGKILL)
        proc.join(20)
        if proc.is_alive():
            os.system(f"py-spy dump --pid {proc.pid} > {inst.tmp_path}/hung.txt 2>&1")
            print(open(f"{inst.tmp_path}/hung.txt").read())
        assert not proc.is_alive(), f"worker {seed} hung"
        killed += proc.exitcode == -signal.SIGKILL
        if seed % 25 == 24:  # a zombie: paused mid-transaction, succeeded, resumed
            for q in range(PARTITIONS):  # fresh input, so the zombie has transactions to be in
                vals = [b"z%d-%d-%04d" % (seed, q, i) for i in range(60)]
                feed.send_batch("in", vals, keys=[v[:2] for v in vals], partition=q)
                inputs += vals
            zombie = inst.process(_worker, inst.kwargs, -2, mark)
            zombie.start()
            deadline = time.monotonic() + 20
            while psutil.Process(zombie.pid).status() != psutil.STATUS_STOPPED:
                assert time.monotonic() < deadline and zombie.is_alive(), "the zombie never paused"
                time.sleep(0.005)
            heir = inst.process(_worker, inst.kwargs, 10_000 + seed, mark)  # fences the zombie's epoch
            heir.start()
            heir.join(20)
            assert not heir.is_alive(), "the heir hung"
            os.kill(zombie.pid, signal.SIGCONT)
            zombie.join(30)
            assert not zombie.is_alive(), "the zombie hung"
            assert os.path.exists(os.path.join(mark, "fenced")), "the resumed zombie was not fenced"
            os.unlink(os.path.join(mark, "fenced"))
            fenced_checks += 1
    assert killed >= KILLS * 0.9  # (a worker whose kill step comes after the input ran out exits)
    assert fenced_checks == KILLS // 25
    last = inst.process(_worker, inst.kwargs, -1, mark)
    last.start()
    last.join(120)
    assert last.exitcode == 0
    ends = {("in", q): log.describe_topic("in").partitions[q].end_offset for q in range(PARTITIONS)}
    assert log.committed_offsets("eos") == ends
    want = Counter(inputs)
    for topic in ("o1", "o2"):
        got = Counter(_values(log, topic, "read_committed"))
        assert got == want, f"{topic}: {sum((got - want).values())} duplicates, {sum((want - got).values())} missing"
        dirty = _values(log, topic, "read_uncommitted")
        assert len(dirty) > len(inputs), f"{topic}: no aborted attempt was ever written (kills too early?)"
