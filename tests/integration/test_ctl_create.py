"""test_ctl_create.py — creating the control segment: no process ever sees a half-made one.

What must hold (shmlog/instance.py _attach_ctl, csrc/shm.c
shm_segment_create_hidden): a control segment's name exists only once its
header is whole (made under no name, stamped, locked, then linked), so a
creator killed -9 at any step leaves either nothing or a finished segment the
next connect restores, and a process racing creators never gets
LayoutMismatch ("not a shmlog control segment of layout version 3", seen once
as a supervisor FATAL in the chaos campaign); and a process that attached a
segment whose creator's restore then failed attaches the next one instead of
finishing the restore in the orphan (which nobody else would see).
Children are forked; every wait is bounded.
"""

import os
import signal
import time

import pytest

import shmlog
from shmlog import _native, errors, permissions
from shmlog.control import plane
from shmlog.control.ring_map import Ring
from shmlog._native import ShmMapping, ffi, lib

SHM = "/dev/shm"


def _produce(log, topic, n):
    p = log.producer()
    offs = [p.send(topic, b"v%d" % i, partition=0) for i in range(n)]
    p.flush(durable=True)
    p.close()
    return offs


def _stop_everything(inst):
    inst.log.stop_persister()
    inst.log.close()
    inst.drop_shared_memory()


class _DieAt:
    """The C core as control/plane.py and _native.py see it, except that calling
    `step` kills this process with SIGKILL first."""

    def __init__(self, real, step):
        self._real, self._step = real, step

    def __getattr__(self, name):
        if name == self._step:
            os.kill(os.getpid(), signal.SIGKILL)
        return getattr(self._real, name)


def _connect_and_die_at(kwargs, step):
    real = plane.lib
    plane.lib = _native.lib = _DieAt(real, step)
    shmlog.connect(**kwargs)
    return "survived"


STEPS = [
    "shm_segment_create_hidden",
    "shm_segment_create",
    "shm_ctl_init",
    "shm_ctl_lock",
    "shm_segment_publish",
    "shm_ctl_set_restored",
]


@pytest.mark.parametrize("step", STEPS)
def test_kill_minus_9_of_a_control_segment_creator_at_each_step(inst, step):
    if not hasattr(lib, step):
        pytest.skip(f"this tree's creator has no step {step}")
    inst.log.create_topic("d", partitions=1, ring_bytes=1 << 16, persistence="disk")
    _produce(inst.log, "d", 50)
    _stop_everything(inst)
    pr = inst.process(_connect_and_die_at, inst.kwargs, step)
    pr.start()
    pr.join(30)
    assert pr.exitcode == -signal.SIGKILL, f"the creator did not reach {step} (exit {pr.exitcode})"
    inst.log = inst.connect()  # no LayoutMismatch, no "never finished by its creator"
    assert inst.log.list_topics() == ["d"]
    c = inst.log.consumer(auto_offset_reset="earliest")
    c.assign([("d", 0, 0)])
    got = []
    deadline = time.monotonic() + 10
    while len(got) < 50 and time.monotonic() < deadline:
        got += [m.value for m in c.poll_batch(100, timeout=0.2)]
    assert got == [b"v%d" % i for i in range(50)]
    c.close()


def _watch(name, trust, stop_path, budget_s=30):
    """Opens the control segment as fast as it can until stop_path exists:
    how many opens found it, and every status other than OK or not-there."""
    seen, bad = 0, []
    deadline = time.monotonic() + budget_s
    while not os.path.exists(stop_path) and time.monotonic() < deadline:
        try:
            seg = ShmMapping.open(name, writable=False, trust=trust)
        except errors.SharedMemoryMissing:
            continue
        except errors.LayoutMismatch as e:
            bad.append(str(e))
            continue
        rc = lib.shm_ctl_check(seg.base, seg.size)
        seg.close()
        seen += 1
        if rc != lib.SHM_OK:
            bad.append(f"shm_ctl_check {rc}")
    return seen, bad[:5], len(bad)


def test_a_process_racing_creators_never_sees_a_half_made_control_segment(inst, tmp_path):
    name = inst.settings.ctl_name
    _stop_everything(inst)
    stop = str(tmp_path / "stop")
    watchers = [
        inst.spawn(f"w{i}", _watch, name, permissions.segment_trust(inst.kwargs["data_dir"]), stop) for i in range(2)
    ]
    try:
        deadline = time.monotonic() + 20
        cycles = 0
        while cycles < 150 and time.monotonic() < deadline:
            log = inst.connect()
            log.close()
            _native.unlink_segment(name)
            cycles += 1
    finally:
        open(stop, "w").close()
    res = inst.collect(watchers, time.monotonic() + 40)
    assert all(r[1] == [] for r in res.values()), res
    assert sum(r[0] for r in res.values()) > 0, "the watchers never saw a control segment"


def _mapped_inodes(pid):
    """{start address: inode} of every mapping of pid (/proc/<pid>/maps)."""
    out = {}
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            fields = line.split()
            out[int(fields[0].split("-")[0], 16)] = int(fields[4])
    return out


def _attach_when_it_exists(kwargs, path):
    """Connects once the control segment exists: the inode of the control
    segment it works with, the inode at the name, the topics it sees."""
    deadline = time.monotonic() + 20
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.001)
    log = shmlog.connect(**kwargs)
    mine = _mapped_inodes(os.getpid())[int(ffi.cast("uintptr_t", log._ctl.base))]
    topics = log.list_topics()
    named = os.stat(path).st_ino if os.path.exists(path) else None  # None: it works in an orphan
    log.close()
    return mine, named, topics


def test_a_waiter_on_a_failed_restore_attaches_the_next_control_segment(inst, monkeypatch):
    inst.log.create_topic("d", partitions=1, ring_bytes=1 << 16, persistence="disk")
    _stop_everything(inst)
    path = SHM + inst.settings.ctl_name
    waiter = inst.spawn("waiter", _attach_when_it_exists, inst.kwargs, path)
    pid = waiter[1].pid

    def failing_restore(log):
        """The creator's restore fails once the waiter has attached the segment (it then waits for the lock)."""
        deadline = time.monotonic() + 20
        ino = os.stat(path).st_ino
        while ino not in _mapped_inodes(pid).values() and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.3)
        raise errors.NoSpace("injected: the restore failed")

    monkeypatch.setattr(plane.offsets_snapshot, "restore_offsets", failing_restore)
    with pytest.raises(errors.NoSpace, match="injected"):
        inst.connect()
    monkeypatch.undo()
    mine, named, topics = inst.collect([waiter], time.monotonic() + 30)["waiter"]
    assert mine == named, "the waiter restored into the abandoned (unlinked) control segment"
    assert topics == ["d"]
    inst.log = inst.connect()
    assert os.path.exists(path) and inst.log.list_topics() == ["d"]


def test_a_missing_shared_memory_object_is_not_a_topic_error(inst):
    """A missing shm object is SharedMemoryMissing where it is opened; only the
    ring mapping turns it into UnknownTopicOrPartition (issue 16.5)."""
    trust = _native.trust_of(inst.settings.data_dir)
    with pytest.raises(errors.SharedMemoryMissing) as e:
        ShmMapping.open(inst.settings.ring_name(999999, 0), writable=False, trust=trust)
    assert not isinstance(e.value, errors.UnknownTopicOrPartition)
    inst.log.create_topic("gone", partitions=1, ring_bytes=1 << 16, persistence="none")
    h = inst.log.topic_handle("gone")
    _native.unlink_segment(inst.settings.ring_name(h.generation, 0))
    with pytest.raises(errors.UnknownTopicOrPartition, match="ring .* is missing"):
        Ring(inst.settings.ring_name(h.generation, 0), "gone", 0, False, trust)
