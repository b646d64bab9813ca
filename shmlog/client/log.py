"""client/log.py — a client's connection to one instance: `shmlog.connect()`.

Owns: Log, the control plane (control/plane.py) as a client uses it: topic
changes sent to the supervisor over its admin socket while one runs (it is
then the one writer of metadata) and made here under the control lock when
none does; starting the instance's persister when no supervisor runs and
durable topics need one; autostarting the supervisor; making the producers
and consumers of this connection and closing them with it.
Must never: carry out a topic change itself while a supervisor runs, or
produce or consume (producer.py and consumer.py do).
"""

import logging
import os
import weakref
from collections.abc import Iterable
from typing import Any

import msgspec

from .. import config, errors
from ..control.plane import ControlPlane
from ..ipc import admin, daemons
from .consumer import Consumer
from .producer import Producer

logger = logging.getLogger("shmlog")


class Log(ControlPlane):
    """A connection to one instance. Use shmlog.connect() to make one."""

    def __init__(self, settings: config.Settings, *, start_persister: bool = True, **limits: Any) -> None:
        super().__init__(settings, **limits)
        self._clients: weakref.WeakSet[Producer | Consumer] = weakref.WeakSet()
        self._start_persister = start_persister and self._create  # a read-only connection starts nothing
        if self._start_persister and self.has_durable():
            self.ensure_persister()

    # ------------------------------------------------------------ topic changes: the supervisor's, or ours

    def _supervisor(self) -> admin.Client | None:
        """The admin client of the supervisor running this instance, or None:
        then topic changes are made here."""
        return admin.client(self.settings)

    def _create_topic(self, name: str, cfg: config.TopicConfig) -> None:
        sup = self._supervisor()
        if sup is not None:
            sup.call("create_topic", name=name, config=msgspec.to_builtins(cfg))
            return
        super()._create_topic(name, cfg)
        if cfg.persistence == "disk" and self._start_persister:
            self.ensure_persister()

    def _delete_topic(self, name: str) -> None:
        sup = self._supervisor()
        if sup is not None:
            sup.call("delete_topic", name=name)
            return
        super()._delete_topic(name)

    def _alter_topic(self, name: str, changes: dict[str, Any]) -> config.TopicConfig | None:
        sup = self._supervisor()
        if sup is not None:
            sup.call("alter_topic", name=name, changes=changes)
            return None
        new = super()._alter_topic(name, changes)
        if new is not None and new.persistence == "disk" and self._start_persister:
            self.ensure_persister()
        return new

    # ------------------------------------------------------------ the persister, when no supervisor runs

    def ensure_persister(self, timeout: float = 10.0) -> None:
        """Starts this instance's persister unless one runs; while a supervisor
        runs it is asked to (it owns the persister)."""
        if daemons.persister_running(self.settings.data_dir):
            return
        sup = self._supervisor()
        if sup is not None:
            sup.call("ensure_persister")
            return
        daemons.start_persister(self.settings, timeout=timeout).close()

    def stop_persister(self, timeout: float = 30.0) -> bool:
        """SIGTERM to the persister; waits until it has fsynced and exited."""
        return daemons.stop_persister(self.settings, timeout)

    # ------------------------------------------------------------ clients

    def producer(self, **options: Any) -> Producer:
        p = Producer(self, **options)
        self._clients.add(p)
        return p

    def consumer(self, topics: str | Iterable[str] | None = None, group: str | None = None, **options: Any) -> Consumer:
        c = Consumer(self, topics=topics, group=group, **options)
        self._clients.add(c)
        return c

    def close(self) -> None:
        if self._closed:
            return
        for c in list(self._clients):
            c.close()
        super().close()

    def destroy(self) -> None:
        """Deletes every topic and the control segment of this instance (tests,
        `shmlog down --purge`): the supervisor is stopped first (it would
        re-create what we remove), the persister after the topics are gone."""
        self._check_open()
        daemons.down(self.settings)
        self.delete_all_topics()
        self.stop_persister()
        super().destroy()


def connect(
    instance: str | None = None,
    data_dir: str | None = None,
    autostart: bool | None = None,
    *,
    shm_prefix: str | None = None,
    max_topics: int = 1024,
    max_groups: int = 1024,
    max_members: int = 4096,
    max_offsets: int = 65536,
    unblock_timeout_ms: int = 500,
    create: bool = True,
) -> Log:
    """Attaches to (creating if needed) the instance's control segment.

    instance and data_dir default to $SHMLOG_INSTANCE / $SHMLOG_DATA_DIR, then
    "default" and ~/.local/state/shmlog/<instance>. With autostart (the
    default; $SHMLOG_AUTOSTART=0 changes the default to off) a background
    supervisor is started for the instance unless one runs (`shmlog down`
    stops it); it restores a new control segment from the data dir and runs
    the persister. Without autostart and with no supervisor running, this
    connection does that work itself: it restores the control segment and
    starts the persister when durable topics need one. The data path never
    needs the supervisor. The max_* limits size the control segment's tables
    when this call creates it; an existing instance keeps its own (a
    supervisor creates it with the defaults).

    create=False attaches to a running instance only, with no side effect:
    no data dir, control segment or ring is made, no supervisor or persister
    started (autostart is ignored); UnknownInstance (InstanceNotRunning when
    the data dir holds topics) names the data dir it looked in. Read-only
    commands of the CLI connect this way. A data dir that is not the one the
    instance was created with is refused (InstanceConflict, both dirs named)."""
    settings = config.resolve(instance, data_dir, shm_prefix)
    if not create:
        autostart = False
    if autostart is None:
        autostart = os.environ.get("SHMLOG_AUTOSTART", "1").lower() not in ("0", "false", "no", "off")
    if autostart:
        try:
            daemons.up(settings)
        except errors.ShmlogError as e:
            # the data path never needs it: go on as without autostart, and say why
            logger.warning("no supervisor for instance %s: %s; this connection works without one", settings.instance, e)
    return Log(
        settings,
        max_topics=max_topics,
        max_groups=max_groups,
        max_members=max_members,
        max_offsets=max_offsets,
        unblock_timeout_ms=unblock_timeout_ms,
        create=create,
    )
