"""storage — a partition's log on disk: segment files, their indexes, recovery.

Layer: above the primitives (errors, safefile, the C core), below the
control plane, which restores from it, and the persister, which writes
through it. It knows nothing of topics' configuration, groups or clients.

    layout.py    where files live: topic and partition directories, trash
    segment.py   reading: SegmentFile, PartitionLog, the frame scan
    writer.py    appending, rolling, fsync, retention (the persister's)
    recovery.py  crash recovery, quarantine of damaged files, `shmlog check`
    compact.py   log compaction of closed segments (the cleaner's)

The names below are the package's interface; the modules' other names are
their own.
"""

from .layout import (
    adopt_legacy_dir,
    discard_topic_dir,
    empty_trash,
    make_partition_dir,
    partition_dir,
    partition_dirs,
    topic_dir,
    topic_dirs,
    write_atomically,
)
from .recovery import Damage, RecoveryReport, check_partition, describe_offline, recover_partition
from .compact import read_checkpoint
from .segment import INDEX_EVERY, INDEX_PAIR, CorruptSegment, PartitionLog, SegmentFile, SegmentGap, SegmentReplaced
from .writer import PartitionWriter

__all__ = [
    "adopt_legacy_dir",
    "discard_topic_dir",
    "empty_trash",
    "make_partition_dir",
    "partition_dir",
    "partition_dirs",
    "topic_dir",
    "topic_dirs",
    "write_atomically",
    "Damage",
    "RecoveryReport",
    "check_partition",
    "describe_offline",
    "recover_partition",
    "INDEX_EVERY",
    "INDEX_PAIR",
    "CorruptSegment",
    "PartitionLog",
    "SegmentFile",
    "SegmentGap",
    "SegmentReplaced",
    "PartitionWriter",
    "read_checkpoint",
]
