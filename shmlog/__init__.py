"""shmlog — Kafka's model (topics, partitions, offsets, replay) on one host,
over shared memory. Start with `shmlog.connect()`; see README.md.

This module is the public facade: it re-exports and owns nothing else.
"""
from . import errors
from .errors import (BufferFull, Closed, CorruptRecord, InvalidArgument, InvalidTopicName,
                     InvalidType, LayoutMismatch, NoSpace, NotSupported, OffsetOutOfRange,
                     PermissionDenied, RecordTooLarge, ShmlogError, TableFull, Timeout,
                     TooManyProducers, TopicDeleted, TopicExists, UnknownTopicOrPartition)
from .instance import Log, PartitionInfo, TopicDescription, connect
from .records import BatchMetadata, Columns, Message, RecordMetadata

__version__ = "0.1.0"

__all__ = [
    "connect", "Log", "Message", "RecordMetadata", "BatchMetadata", "Columns", "TopicDescription",
    "PartitionInfo", "errors", "ShmlogError", "BufferFull", "Closed", "CorruptRecord",
    "InvalidArgument", "InvalidTopicName", "InvalidType", "LayoutMismatch", "NoSpace",
    "NotSupported", "OffsetOutOfRange", "PermissionDenied", "RecordTooLarge", "TableFull",
    "Timeout", "TooManyProducers", "TopicDeleted", "TopicExists", "UnknownTopicOrPartition",
]
