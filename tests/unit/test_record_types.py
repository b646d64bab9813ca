"""test_record_types.py — Message and RecordMetadata are C types
(csrc/pyrecords.c) standing in for the frozen msgspec structs they replaced:
construction by position and keyword, read-only fields, ==, hash, repr,
pickle and pattern matching, and clear TypeErrors for bad construction."""

import copy
import pickle

import pytest

from shmlog import Message, RecordMetadata

FIELDS = ("topic", "partition", "offset", "key", "value", "headers", "timestamp_ms")


def _m(**kw):
    base = dict(topic="t", partition=3, offset=2**40, key=b"k", value=b"v", headers=(("h", b"x"),), timestamp_ms=7)
    base.update(kw)
    return Message(**base)


def test_fields_by_position_and_keyword():
    a = Message("t", 3, 2**40, b"k", b"v", (("h", b"x"),), 7)
    b = _m()
    assert a == b and hash(a) == hash(b) and not (a != b)
    assert tuple(getattr(a, f) for f in FIELDS) == ("t", 3, 2**40, b"k", b"v", (("h", b"x"),), 7)
    assert Message.__match_args__ == FIELDS and RecordMetadata.__match_args__ == ("topic", "partition", "offset")
    match a:
        case Message(topic, partition, offset):
            assert (topic, partition, offset) == ("t", 3, 2**40)
        case _:
            pytest.fail("Message did not match its own pattern")


@pytest.mark.parametrize("field", FIELDS)
def test_each_field_takes_part_in_equality(field):
    other = {"topic": "u", "partition": 4, "offset": 1, "key": None, "value": b"w", "headers": (), "timestamp_ms": 8}
    assert _m() != _m(**{field: other[field]})


def test_frozen_and_no_new_attributes():
    m = _m()
    for f in FIELDS:
        with pytest.raises(AttributeError):
            setattr(m, f, None)
    with pytest.raises(AttributeError):
        m.extra = 1
    r = RecordMetadata("t", 0, 5)
    with pytest.raises(AttributeError):
        r.offset = 6


def test_repr_pickle_copy():
    m = _m(value=None, key=None)
    assert repr(m) == (
        "Message(topic='t', partition=3, offset=1099511627776, key=None, value=None, "
        "headers=(('h', b'x'),), timestamp_ms=7)"
    )
    assert repr(RecordMetadata("t", 1, -1)) == "RecordMetadata(topic='t', partition=1, offset=-1)"
    for obj in (m, RecordMetadata("t", 1, 2)):
        for proto in range(pickle.HIGHEST_PROTOCOL + 1):
            assert pickle.loads(pickle.dumps(obj, proto)) == obj
        assert copy.copy(obj) == obj and copy.deepcopy(obj) == obj
    assert {m: 1}[_m(value=None, key=None)] == 1
    assert Message("t", 0, 0, None, None, (), 0) != RecordMetadata("t", 0, 0)


def test_bad_construction_is_a_type_error():
    with pytest.raises(TypeError, match="missing required argument 'timestamp_ms'"):
        Message("t", 0, 0, None, None, ())
    with pytest.raises(TypeError, match="takes 7 arguments"):
        Message("t", 0, 0, None, None, (), 0, 9)
    with pytest.raises(TypeError, match="unexpected keyword argument 'offst'"):
        RecordMetadata("t", 0, offst=1)
    with pytest.raises(TypeError, match="multiple values for argument 'topic'"):
        RecordMetadata("t", 0, 1, topic="u")
    with pytest.raises(TypeError, match="offset must be an int"):
        RecordMetadata("t", 0, "1")
    with pytest.raises(TypeError, match="timestamp_ms must be an int"):
        Message("t", 0, 0, None, None, (), 1.5)
    with pytest.raises(OverflowError):
        RecordMetadata("t", 0, 2**63)
    assert RecordMetadata("t", 0, -(2**63)).offset == -(2**63)
    assert RecordMetadata(*("t", 0), **{"offset": True}).offset == 1  # bool is an int, as in msgspec


def test_a_record_holding_itself_does_not_crash_repr():
    # not garbage-collected (nothing a record holds can point back at it in normal use),
    # but a user can build one that does: repr must not recurse forever
    box = []
    m = Message("t", 0, 0, None, box, (), 0)
    box.append(m)
    assert "Message(...)" in repr(m)
    box.clear()
