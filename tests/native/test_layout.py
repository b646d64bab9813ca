"""test_layout.py — Python's (cffi's) view of every shared-memory struct equals C's.

The layout is defined once, in csrc/shmlog.h. cffi parses the same header,
the C compiler lays the structs out, and csrc/layout.c exports the compiler's
word as a table. These tests prove the two agree, that the table covers the
shared structs' fields, and pin the constants the format depends on. A last
test compiles a probe with the system C compiler for every field cffi knows,
independent of layout.c.
"""

import os
import pathlib
import shutil
import subprocess

import pytest

from shmlog import config, errors
from shmlog._native import STATUS_ERRORS, ffi, layout_table, lib

CSRC = pathlib.Path(__file__).resolve().parents[2] / "csrc"

# structs that live in shared memory (or on disk): their bytes are the contract
SHARED_STRUCTS = [
    "shm_frame_header",
    "shm_gap_body",
    "shm_producer_slot",
    "shm_reader_slot",
    "shm_ring_header",
    "shm_topic_config",
    "shm_topic_entry",
    "shm_ctl_header",
    "shm_group_entry",
    "shm_member_topic",
    "shm_member_entry",
    "shm_offset_entry",
]


@pytest.fixture(scope="module")
def table():
    t = layout_table()
    assert t, "layout_table() is empty"
    return t


def _field(struct: str, name: str):
    fields = dict(ffi.typeof(f"struct {struct}").fields)
    assert name in fields, f"cffi's struct {struct} has no field {name}"
    return fields[name]


def test_table_entries_match_cffi(table):
    mismatches = []
    for key, (c_off, c_size) in table.items():
        if "." not in key:
            py = (0, ffi.sizeof(f"struct {key}"))
        else:
            struct, name = key.split(".", 1)
            f = _field(struct, name)
            # ffi.sizeof of the field's type; arrays and nested structs included
            py = (ffi.offsetof(f"struct {struct}", name), ffi.sizeof(f.type))
            assert f.offset == py[0]
        if py != (c_off, c_size):
            mismatches.append(f"{key}: C {(c_off, c_size)} != cffi {py}")
    assert not mismatches, "\n".join(mismatches)


def test_table_covers_every_shared_struct(table):
    for s in SHARED_STRUCTS:
        assert s in table, f"layout.c does not export the size of struct {s}"
    for key in table:
        assert key.split(".")[0] in SHARED_STRUCTS, f"unexpected table entry {key}"


def test_array_fields_match_via_typeof(table):
    # arrays: the element type and length as cffi sees them, times each other
    for key in ("shm_ring_header.slots", "shm_ring_header.seal_lock", "shm_topic_entry.name", "shm_ctl_header.lock"):
        struct, name = key.split(".")
        t = ffi.typeof(f"struct {struct}")
        ft = dict(t.fields)[name].type
        assert ft.kind == "array"
        assert ft.length * ffi.sizeof(ft.item) == table[key][1]
        assert ffi.sizeof(ft) == table[key][1]
    slots = dict(ffi.typeof("struct shm_ring_header").fields)["slots"].type
    assert slots.length == lib.SHM_PRODUCER_SLOTS
    assert slots.item is ffi.typeof("struct shm_producer_slot")


def test_table_covers_every_named_field(table):
    missing = []
    for s in SHARED_STRUCTS:
        for name, _ in ffi.typeof(f"struct {s}").fields:
            if not name.startswith("_") and f"{s}.{name}" not in table:
                missing.append(f"{s}.{name}")
    assert not missing, "layout.c does not export: " + ", ".join(missing)


def test_fields_do_not_overlap_and_fill_struct():
    # every shared struct is explicitly padded: fields tile it exactly, no holes
    for s in SHARED_STRUCTS:
        t = ffi.typeof(f"struct {s}")
        at = 0
        for name, f in t.fields:
            assert f.offset == at, f"struct {s}: hole or overlap before {name} ({f.offset} != {at})"
            at = f.offset + ffi.sizeof(f.type)
        assert at == ffi.sizeof(t), f"struct {s}: {ffi.sizeof(t) - at} bytes of implicit tail padding"


def test_constants():
    assert lib.SHM_FRAME_HEADER_BYTES == 16 == ffi.sizeof("struct shm_frame_header")
    assert lib.SHM_RING_HEADER_BYTES == 16384 == ffi.sizeof("struct shm_ring_header")
    assert ffi.sizeof("struct shm_producer_slot") == 64
    assert ffi.sizeof("struct shm_gap_body") == 16
    assert ffi.sizeof("struct shm_topic_config") == 88
    assert ffi.sizeof("struct shm_topic_entry") == 512
    assert ffi.sizeof("struct shm_ctl_header") == 4096
    assert lib.SHM_BATCH_HEADER_BYTES == 61
    assert lib.SHM_FRAME_ALIGN == 8
    assert lib.SHM_RING_MIN_BYTES == 1 << 16 == config.RING_MIN
    assert lib.SHM_RING_MAX_BYTES == 1 << 36 == config.RING_MAX
    assert lib.SHM_TOPIC_NAME_MAX == config.TOPIC_NAME_MAX == 249
    assert dict(ffi.typeof("struct shm_topic_entry").fields)["name"].type.length > lib.SHM_TOPIC_NAME_MAX
    assert lib.SHM_LAYOUT_VERSION >= 1
    assert lib.SHM_RING_MAGIC.to_bytes(8, "little") == b"SMLGRING"
    assert lib.SHM_CTL_MAGIC.to_bytes(8, "little") == b"\0SMLGCTL"
    # the slot table fits in the ring header, after the 1 KiB of spans
    assert ffi.offsetof("struct shm_ring_header", "slots") == 1024
    assert 1024 + lib.SHM_PRODUCER_SLOTS * 64 <= lib.SHM_RING_HEADER_BYTES
    lim = ffi.new("struct shm_ctl_limits *", [1, 1, 1, 1])
    assert lib.shm_ctl_size(lim) % 4096 == 0
    lim = ffi.new("struct shm_ctl_limits *", [1024, 16, 32, 64])
    assert lib.shm_ctl_size(lim) >= 4096 + 1024 * 512 + 16 * 512 + 32 * 1024 + 64 * 64
    assert ffi.sizeof("struct shm_group_entry") == 512
    assert ffi.sizeof("struct shm_member_entry") == 1024
    assert ffi.sizeof("struct shm_offset_entry") == 64
    # the commit pair is one cmpxchg16b operand: 16-aligned, committed then owner
    assert ffi.offsetof("struct shm_offset_entry", "committed") % 16 == 0
    assert ffi.offsetof("struct shm_offset_entry", "owner") == ffi.offsetof("struct shm_offset_entry", "committed") + 8
    assert dict(ffi.typeof("struct shm_group_entry").fields)["name"].type.length > lib.SHM_GROUP_NAME_MAX


def test_hot_fields_on_separate_spans():
    # DESIGN: hot fields written by different parties sit on separate cache lines
    # (128-byte spans so the adjacent-line prefetcher does not pair them)
    off = lambda f: ffi.offsetof("struct shm_ring_header", f)  # noqa: E731
    assert off("tail_pos") == 128 and off("tail_pos") % 16 == 0  # cmpxchg16b pair
    assert off("tail_offset") == off("tail_pos") + 8
    assert off("head_pos") == 256 and off("head_offset") == off("head_pos") + 8
    assert off("persisted_pos") == 384
    assert off("data_waiters") == 512
    assert off("space_waiters") == 640
    assert off("sealed_count") == 768
    spans = [
        off(f) // 128
        for f in ("magic", "tail_pos", "head_pos", "persisted_pos", "data_waiters", "space_waiters", "sealed_count")
    ]
    assert len(set(spans)) == len(spans)
    for f in ("data_seq", "space_seq", "persist_seq"):
        assert off(f) % 4 == 0  # futex words aligned
    assert ffi.offsetof("struct shm_ctl_header", "lock") == 128
    assert ffi.offsetof("struct shm_ctl_header", "topics_epoch") == 256
    assert ffi.offsetof("struct shm_ctl_header", "commit_seq") == 384  # every commit bumps it
    assert ffi.offsetof("struct shm_producer_slot", "owner") == 0


def test_every_cffi_field_matches_the_c_compiler(tmp_path):
    """Independent of layout.c: compile a probe printing offsetof/sizeof for every
    field of every struct cffi knows, and compare."""
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    _, structs, _ = ffi.list_types()
    lines, expect = [], []
    for s in structs:
        t = ffi.typeof(f"struct {s}")
        lines.append(f'printf("%zu %zu\\n", (size_t)0, sizeof(struct {s}));')
        expect.append((s, 0, ffi.sizeof(t)))
        for name, f in t.fields:
            lines.append(f'printf("%zu %zu\\n", offsetof(struct {s}, {name}), sizeof(((struct {s} *)0)->{name}));')
            expect.append((f"{s}.{name}", f.offset, ffi.sizeof(f.type)))
    src = tmp_path / "probe.c"
    src.write_text(
        '#include <stdio.h>\n#include <stddef.h>\n#include "shmlog.h"\n'
        "int main(void) {\n" + "\n".join(lines) + "\nreturn 0;\n}\n"
    )
    exe = tmp_path / "probe"
    r = subprocess.run(
        [cc, "-std=gnu11", "-O0", f"-I{CSRC}", str(src), "-o", str(exe)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=10, check=True).stdout.split("\n")
    bad = []
    for (key, off, size), line in zip(expect, out):
        c_off, c_size = map(int, line.split())
        if (c_off, c_size) != (off, size):
            bad.append(f"{key}: C {(c_off, c_size)} != cffi {(off, size)}")
    assert len(out) - 1 == len(expect)
    assert not bad, "\n".join(bad)


def test_layout_stamp_folds_the_build():
    """The header word every segment carries: SHM_LAYOUT_VERSION folded with
    the architecture, the pointer size and sizeof(pthread_mutex_t)."""
    import platform

    stamp = lib.shm_layout_stamp()
    assert stamp & 0xFF == lib.SHM_LAYOUT_VERSION
    arch = {"x86_64": 1, "amd64": 1, "aarch64": 2, "arm64": 2}.get(platform.machine())
    if arch is not None:
        assert (stamp >> 8) & 0xF == arch
    assert (stamp >> 12) & 0xF == ffi.sizeof("void *")
    assert (stamp >> 16) & 0xFF >= 24  # a pthread_mutex_t is at least 24 bytes on every libc we know
    assert stamp >> 24 == 0


def test_layout_stamp_matches_the_c_compiler(tmp_path):
    """Independent of layout.c: the system compiler's SHM_LAYOUT_STAMP and
    sizeof(pthread_mutex_t) agree with the module's."""
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    src = tmp_path / "stamp.c"
    src.write_text(
        '#include <stdio.h>\n#include "shmlog.h"\n'
        'int main(void) { printf("%u %zu\\n", (unsigned)SHM_LAYOUT_STAMP, sizeof(pthread_mutex_t)); return 0; }\n'
    )
    exe = tmp_path / "stamp"
    r = subprocess.run(
        [cc, "-std=gnu11", "-O0", f"-I{CSRC}", str(src), "-o", str(exe)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    stamp, mutex = map(int, subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split())
    assert stamp == lib.shm_layout_stamp()
    assert (stamp >> 16) & 0xFF == mutex


@pytest.mark.parametrize(
    "foreign",
    [
        lambda s: s ^ (0x3 << 8),  # another architecture
        lambda s: (s & ~(0xF << 12)) | (4 << 12),  # 32-bit pointers
        lambda s: (s & ~(0xFF << 16)) | (((s >> 16) & 0xFF) + 8) << 16,  # another libc's pthread_mutex_t
        lambda s: lib.SHM_LAYOUT_VERSION,  # the bare number: a build before the stamp
    ],
)
def test_segment_of_an_incompatible_build_is_refused(foreign):
    """A control segment or ring whose header was made by a build with other
    layout facts fails the attach check (LayoutMismatch in Python)."""
    lim = ffi.new("struct shm_ctl_limits *", [1, 1, 1, 1])
    size = lib.shm_ctl_size(lim)
    buf = ffi.new("uint64_t[]", size // 8)  # 8-aligned, like a mapping
    assert lib.shm_ctl_init(buf, size, lim, b"/d", 2, 1, 2) == lib.SHM_OK
    assert lib.shm_ctl_check(buf, size) == lib.SHM_OK
    hdr = ffi.cast("struct shm_ctl_header *", buf)
    assert hdr.version == lib.shm_layout_stamp()
    hdr.version = foreign(lib.shm_layout_stamp())
    assert hdr.version != lib.shm_layout_stamp()
    assert lib.shm_ctl_check(buf, size) == lib.SHM_E_LAYOUT
    assert STATUS_ERRORS[lib.SHM_E_LAYOUT] is errors.LayoutMismatch
