# Types of shmlog._fastpath, the CPython-API half of the per-record calls
# (csrc/fastpath.c, csrc/pyrecords.c). Kept in step with those files by hand:
# mypy checks the Python side against this.
from typing import Any, ClassVar

class Message:
    """One consumed record. headers is a tuple of (str, bytes | None) pairs."""

    __match_args__: ClassVar[tuple[str, ...]]
    __struct_fields__: ClassVar[tuple[str, ...]]
    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> Any: ...  # bytes | None; a read-only memoryview from Consumer(copy=False)
    @property
    def headers(self) -> tuple[tuple[str, bytes | None], ...]: ...
    @property
    def timestamp_ms(self) -> int: ...
    def __init__(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: Any,
        headers: tuple[tuple[str, bytes | None], ...],
        timestamp_ms: int,
    ) -> None: ...

class RecordMetadata:
    """Where a sent record landed; known when send() returns."""

    __match_args__: ClassVar[tuple[str, ...]]
    __struct_fields__: ClassVar[tuple[str, ...]]
    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    def __init__(self, topic: str, partition: int, offset: int) -> None: ...

class ProducerBase:
    _express: dict[str, int]
    _writers: dict[str, Any]  # topic -> its writer (a WriterBase subclass)
    def send(
        self,
        topic: str,
        value: Any,
        key: Any = None,
        headers: Any = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> RecordMetadata: ...
    def produce(
        self,
        topic: str,
        value: Any = None,
        key: Any = None,
        headers: Any = None,
        partition: int | None = None,
        timestamp: int | None = None,
        on_delivery: Any = None,
        callback: Any = None,
    ) -> None: ...

class WriterBase:
    sticky: int
    sticky_left: int
    def _xset(self, p: int, addr: int, owner: object) -> None: ...
    def _xclear(self) -> None: ...

class ConsumerBase:
    _pending: list[Message]
    _pi: int
    _views: list[Any] | None
    _group: Any
    _error: Any  # None, or the shmlog error the next poll raises
    _epoch: int
    @property
    def _xpart(self) -> Any: ...
    def poll(self, timeout: float | None = None) -> Message | None: ...
    def _xset(self, *addresses_and_owners: Any) -> None: ...
    def _xclear(self) -> None: ...

class ViewSource: ...

def view(addr: int, length: int, views: list[Any], /) -> memoryview: ...
def loan_view(addr: int, length: int, /) -> memoryview: ...
def release(views: list[Any], /) -> int: ...
def bind(accum_add: int, send: int, large_copy: int, read: int, wait_any: int, ctl_epoch: int, /) -> None: ...
def large_value(ring: int, cursor: int, peeked: int, verify_crc: int, /) -> tuple[int, bytes | None]: ...
def messages(
    buf: int, used: int, rows: int, n: int, topic: str, partition: int, views: list[Any] | None = None, /
) -> tuple[list[Message], int]: ...
def pack(items: list[Any] | tuple[Any, ...], /) -> tuple[bytes, bytes] | None: ...
def values(buf: int, used: int, rows: int, n: int, views: list[Any] | None = None, /) -> list[Any]: ...
