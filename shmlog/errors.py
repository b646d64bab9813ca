"""errors.py — every exception shmlog raises, in one tree.

Owns: the ShmlogError hierarchy. Each class says whether retrying the same
call can succeed (`retriable`) and mixes in the builtin a caller would catch
anyway (ValueError for bad values, TypeError for wrong types, ...).
Must never: import anything from shmlog (every module imports this one).
"""


class ShmlogError(Exception):
    """Base of every shmlog error."""

    retriable = False


class InvalidArgument(ShmlogError, ValueError):
    """An argument has a value shmlog cannot accept; the message says which."""


class InvalidType(ShmlogError, TypeError):
    """An argument has the wrong type (for example str where bytes are needed)."""


class InvalidTopicName(InvalidArgument):
    """Topic names use [a-zA-Z0-9._-], 1 to 249 characters, and are not '.' or '..'."""


class UnknownTopicOrPartition(ShmlogError, KeyError):
    """The topic (or the partition number) does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return Exception.__str__(self)


class TopicExists(ShmlogError):
    """A topic with that name already exists."""


class TopicDeleted(UnknownTopicOrPartition):
    """The topic was deleted (or recreated) while this handle used it."""


class OffsetOutOfRange(ShmlogError):
    """The requested offset is not in the log: older than its start or past its end."""


class BufferFull(ShmlogError):
    """The ring stayed full for the whole producer timeout (Kafka's max.block.ms)."""

    retriable = True


class RecordTooLarge(InvalidArgument):
    """A record (or batch) is larger than the topic's max_message_bytes."""


class CorruptRecord(ShmlogError):
    """A frame failed its CRC, bounds or framing checks; nothing was returned from it."""

    pos: int  # where it is (file position), set by the storage readers that raise it
    offset: int  # the first offset it affects


class PartitionOffline(CorruptRecord):
    """The partition is quarantined: its segment files are damaged (a bad frame
    or a hole in a rolled segment, found at restore). Records before the damage
    are still served; writes are refused, because the log's end past the damage
    is not proven. Not retriable: restore the file (or see `shmlog check
    --repair`) and restart the instance. Kafka's KAFKA_STORAGE_ERROR."""


class SharedMemoryMissing(ShmlogError, FileNotFoundError):
    """A shared-memory object the instance names (a ring, the control
    segment) does not exist. Internal callers turn it into what it means
    where they are (UnknownTopicOrPartition for a ring, UnknownInstance or a
    new control segment for the control segment)."""


class LayoutMismatch(ShmlogError):
    """A shared-memory segment has the wrong magic, layout version or size."""


class TableFull(ShmlogError):
    """A fixed-size table (topics, producer slots, ...) has no free entry."""


class TooManyProducers(TableFull):
    """Every producer slot of a partition ring is taken by a live process."""


class NoSpace(ShmlogError, OSError):
    """/dev/shm (or the disk) has no room for what was asked."""


class PermissionDenied(ShmlogError, PermissionError):
    """The OS refused access to a segment or file of the instance."""


class Timeout(ShmlogError, TimeoutError):
    """A bounded wait ran out."""

    retriable = True


class Closed(ShmlogError):
    """The producer, consumer or connection was closed."""


class LoanError(ShmlogError, RuntimeError):
    """A producer loan (Producer.reserve) was used against its rules: a view
    derived from its buffer outlived it (the record was aborted), a call that
    would wait for the open loan was made while it is open, or the loan
    crossed fork(). The message says which; retrying the same call cannot help."""


class NotSupported(ShmlogError):
    """The feature exists in the API but not in this build yet; the message says what to use."""


class InvalidConfig(InvalidArgument):
    """The service config file is invalid; the message names the file and the key."""


class AlreadyRunning(ShmlogError):
    """Another live supervisor holds the instance."""


class SupervisorError(ShmlogError):
    """The supervisor could not be reached, started or stopped; the message says why."""


class CommitFailed(ShmlogError):
    """The commit was fenced: this member no longer owns the partition (it was
    removed from its group, or the group moved the partition). Poll to rejoin."""


class ProducerFenced(ShmlogError):
    """A newer producer with the same transactional_id fenced this one (or its
    transaction timed out and was aborted); confluent-kafka's _FENCED. Close it."""


class InvalidTxnState(ShmlogError):
    """A transactional call out of order (commit_transaction without
    begin_transaction, a send outside a transaction, ...); Kafka's INVALID_TXN_STATE."""


class FencedInstance(CommitFailed):
    """Another consumer took this one's group_instance_id (static membership):
    this consumer is fenced for good; close it."""


class UnknownGroup(ShmlogError, KeyError):
    """No consumer group has that id."""

    def __str__(self) -> str:
        return Exception.__str__(self)


class GroupNotEmpty(ShmlogError):
    """The operation needs a group without live members (reset offsets, delete)."""


class CorruptMetadata(CorruptRecord):
    """A metadata file of the data dir (meta/topics.json, partition.metadata)
    cannot be read; the message names the file and what to do."""


class UnknownInstance(ShmlogError):
    """A read-only connection found no such instance: no control segment and
    no data in the data dir it looked in (the message names both)."""


class InstanceNotRunning(UnknownInstance):
    """A read-only connection found the instance's data dir but no running
    instance (no control segment): start it (`shmlog up`) or connect for writing."""


class InstanceConflict(ShmlogError):
    """The instance's shared memory belongs to another data dir (one instance =
    one name + one data dir + one shm prefix); the message names both dirs."""


# every public exception: `from shmlog import X` works for each (shmlog/__init__.py)
__all__ = [
    "ShmlogError",
    "ProducerFenced",
    "InvalidTxnState",
    "SharedMemoryMissing",
    "InvalidArgument",
    "InvalidType",
    "InvalidTopicName",
    "UnknownTopicOrPartition",
    "TopicExists",
    "TopicDeleted",
    "OffsetOutOfRange",
    "BufferFull",
    "LoanError",
    "RecordTooLarge",
    "CorruptRecord",
    "PartitionOffline",
    "LayoutMismatch",
    "TableFull",
    "TooManyProducers",
    "NoSpace",
    "PermissionDenied",
    "Timeout",
    "Closed",
    "NotSupported",
    "InvalidConfig",
    "AlreadyRunning",
    "SupervisorError",
    "CommitFailed",
    "FencedInstance",
    "UnknownGroup",
    "GroupNotEmpty",
    "CorruptMetadata",
    "UnknownInstance",
    "InstanceNotRunning",
    "InstanceConflict",
]
