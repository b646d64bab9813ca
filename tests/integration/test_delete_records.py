"""Log.delete_records (Kafka's DeleteRecords, natively): a partition's log
start offset moves forward, readers stop below it, and it survives a restart
of a durable topic (an ephemeral one starts again at offset 0 with none)."""

import pytest

from shmlog import errors


def _fill(log, topic, n, **kw):
    log.create_topic(topic, ring_bytes=1 << 16, **kw)
    with log.producer() as p:
        for i in range(n):
            p.send(topic, b"v%d" % i)
        p.flush(durable=kw.get("persistence") == "disk", timeout=20)


def _values(log, topic, **kw):
    with log.consumer(auto_offset_reset="earliest", **kw) as c:
        c.assign([(topic, 0)])
        return [m.offset for m in c.poll_batch(100, timeout=1)]


def test_delete_records_moves_the_start_and_survives_a_restart(inst):
    _fill(inst.log, "d", 10, persistence="disk")
    _fill(inst.log, "e", 10, persistence="none")
    assert inst.log.delete_records("d", {0: 6}) == {0: 6}
    assert inst.log.delete_records("e", {0: 3}) == {0: 3}
    assert inst.log.delete_records("d", {0: 2}) == {0: 6}  # never moves back
    assert _values(inst.log, "d") == [6, 7, 8, 9]
    with inst.log.consumer(auto_offset_reset="earliest") as c:
        c.assign([("d", 0, 1)])  # below the start: reset to it
        assert c.poll(timeout=1).offset == 6
        assert c.beginning_offsets() == {("d", 0): 6}
    with pytest.raises(errors.OffsetOutOfRange):
        inst.log.delete_records("d", {0: 11})
    with pytest.raises(errors.UnknownTopicOrPartition):
        inst.log.delete_records("d", {1: 0})
    assert inst.log.stop_persister()
    inst.log.close()
    inst.drop_shared_memory()  # a reboot
    inst.log = inst.connect()
    assert inst.log.describe_topic("d").partitions[0].log_start_offset == 6
    assert _values(inst.log, "d") == [6, 7, 8, 9]
    assert inst.log.describe_topic("e").partitions[0].log_start_offset == 0  # ephemeral: empty again
    assert inst.log.delete_records("d", {0: -1}) == {0: 10}  # -1: the end offset
    inst.log.delete_topic("d")
    _fill(inst.log, "d", 3, persistence="disk")  # a new life has its own start
    assert inst.log.describe_topic("d").partitions[0].log_start_offset == 0
