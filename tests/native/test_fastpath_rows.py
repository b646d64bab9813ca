"""test_fastpath_rows.py — the C batch builders (csrc/fastpath.c messages and
values) check every decoded row against the bytes the read filled: a row
pointing outside them is ValueError, never a read outside the buffer (run
under ASan by `make sanitize`)."""

import pytest

from shmlog import _fastpath
from shmlog._native import address_of, ffi, lib
from shmlog.records import Message


def test_a_row_outside_the_read_buffer_is_an_error_not_a_read():
    buf = ffi.new("uint8_t[]", 64)
    rows = ffi.new("int64_t[]", 2 * lib.SHM_ROW_FIELDS)
    for i in range(2):
        r = i * lib.SHM_ROW_FIELDS
        rows[r + lib.SHM_ROW_KEY_LEN] = -1
        rows[r + lib.SHM_ROW_VALUE_START], rows[r + lib.SHM_ROW_VALUE_LEN] = 8 * i, 8
    msgs, with_headers = _fastpath.messages(address_of(buf), 64, address_of(rows), 2, "t", 0)
    assert [m.value for m in msgs] == [bytes(8), bytes(8)] and with_headers == 0
    assert _fastpath.values(address_of(buf), 64, address_of(rows), 2) == [bytes(8), bytes(8)]
    rows[lib.SHM_ROW_FIELDS + lib.SHM_ROW_VALUE_START] = 60  # 60 + 8 > the 64 bytes the read filled
    with pytest.raises(ValueError, match="outside the read buffer"):
        _fastpath.messages(address_of(buf), 64, address_of(rows), 2, "t", 0)
    with pytest.raises(ValueError, match="outside the read buffer"):
        _fastpath.values(address_of(buf), 64, address_of(rows), 2)
    rows[lib.SHM_ROW_FIELDS + lib.SHM_ROW_VALUE_START] = -5
    with pytest.raises(ValueError):
        _fastpath.values(address_of(buf), 64, address_of(rows), 2)
    with pytest.raises(ValueError, match="null"):
        _fastpath.values(0, 64, address_of(rows), 2)
