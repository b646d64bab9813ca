"""client/membership.py — one consumer's place in a consumer group.

Owns: the Membership a group consumer holds: joining (a member entry in the
control segment), the heartbeat thread, following its group's change_seq,
handing partitions over (commit, on_revoke, release), its commits, leaving.
Must never: call a user callback while holding the control lock, or commit
a partition it no longer owns (groups.py fences it).
"""

import inspect
import logging
import threading
import uuid

from .. import errors, liveness
from ..control.assignors import ASSIGNORS, EAGER
from ..control.groups import check_offset, finish_dirty, reap, rebalance
from ..control.offsets_snapshot import snapshot_offsets
from ..control.tables import (
    LIVE,
    MEMBER_TOPICS,
    RELEASE,
    change_seq_reader,
    commit,
    ensure_group,
    free_entry,
    free_slot,
    group_changed,
    member_beat,
    member_fill,
    member_topics,
    monotonic_ms,
    new_member_token,
    offset_index,
    publish,
    same_instance,
    set_member_topics,
    set_owner,
    set_pending,
    short_name,
    tables_of,
    topic_of,
    topics_epoch,
    validate_group_name,
)

# ------------------------------------------------------------------ a member


class Membership:
    """One consumer's place in a group: its member entry, heartbeat thread and
    view of its assignment. The consumer's poll thread calls sync(); the
    heartbeat thread stamps heartbeat_ms/polled_ms, reaps dead members of
    the group and follows topic changes."""

    def __init__(
        self,
        log,
        consumer,
        group: str,
        topics,
        *,
        group_instance_id=None,
        client_id="shmlog",
        session_timeout_ms=45000,
        heartbeat_interval_ms=3000,
        max_poll_interval_ms=300000,
        partition_assignment_strategy="cooperative-sticky",
        on_assign=None,
        on_revoke=None,
        on_lost=None,
        enable_auto_commit=True,
        auto_commit_interval_ms=5000,
    ):
        self.group = validate_group_name(group)
        if partition_assignment_strategy not in ASSIGNORS:
            raise errors.InvalidArgument(f"partition_assignment_strategy must be one of {ASSIGNORS}")
        for name, v in (
            ("session_timeout_ms", session_timeout_ms),
            ("heartbeat_interval_ms", heartbeat_interval_ms),
            ("max_poll_interval_ms", max_poll_interval_ms),
            ("auto_commit_interval_ms", auto_commit_interval_ms),
        ):
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v < 2**31:
                raise errors.InvalidArgument(f"{name} must be a positive int of milliseconds")
        if heartbeat_interval_ms >= session_timeout_ms:
            raise errors.InvalidArgument("heartbeat_interval_ms must be lower than session_timeout_ms")
        for name, cb in (("on_assign", on_assign), ("on_revoke", on_revoke), ("on_lost", on_lost)):
            if cb is not None and not callable(cb):
                raise errors.InvalidType(f"{name} must be callable")
        self.instance_id = None if group_instance_id is None else short_name(group_instance_id, "group_instance_id")
        self.client_id = short_name(client_id, "client_id", 40)
        if isinstance(topics, str):
            topics = [topics]
        topics = list(dict.fromkeys(topics or []))
        if not topics:
            raise errors.InvalidArgument("a group consumer needs topics=[...] to subscribe to")
        if len(topics) > MEMBER_TOPICS:
            raise errors.InvalidArgument(f"a member subscribes to at most {MEMBER_TOPICS} topics")
        self.log, self.consumer, self.topics = log, consumer, topics
        self.session_ms, self.beat_ms = session_timeout_ms, heartbeat_interval_ms
        self.max_poll_ms = max_poll_interval_ms
        self.assignor = ASSIGNORS.index(partition_assignment_strategy)
        self.eager = partition_assignment_strategy in EAGER
        self.on_assign, self.on_revoke, self.on_lost = on_assign, on_revoke, on_lost
        self.auto_commit = enable_auto_commit
        self.auto_commit_ms = auto_commit_interval_ms
        self.t = tables_of(log)
        self.token = 0
        self.entries: dict[tuple[str, int], int] = {}  # (topic, partition) -> offset entry index, owned now
        self.seen_seq = -1
        self.seen_generation = -1
        self.polled = True  # set by every poll, cleared by the heartbeat thread
        self.commit_due = False
        self.topics_epoch = topics_epoch(log)
        self.closed = False
        self.pid, self.start_time = liveness.ensure_token(log.token_prefix)
        self._join()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat_loop, name=f"shmlog-heartbeat-{group}", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------- join / leave

    def _subscription(self):
        out = []
        for name in self.topics:
            h = self.log.topic_handle(name)
            out.append((h.index, h.partitions, h.generation))
        return out

    def _join(self):
        log, t = self.log, self.t
        subs = self._subscription()
        with log._lock():
            finish_dirty(log)
            gi = ensure_group(log, self.group)
            g = t.group(gi)
            others = t.group_members(gi).tolist()
            if others and t.member(others[0]).assignor != self.assignor:
                raise errors.InvalidArgument(
                    f"group {self.group!r} uses the {ASSIGNORS[t.member(others[0]).assignor]!r} assignor; "
                    "every member must use the same partition_assignment_strategy"
                )
            mi = self._static_entry(others)
            token = new_member_token(log)
            if mi >= 0:
                # static member back within its session: same entry and partitions, new token
                m = t.member(mi)
                old = m.token
                same_subs = member_topics(m) == subs
                self._fill(m, gi, token, subs)
                for i in t.group_offsets(gi).tolist():
                    e = t.offset(i)
                    if e.owner == old:
                        set_owner(e, token)
                    if e.pending == old:
                        set_pending(e, token)
                if same_subs:
                    group_changed(g)
                else:
                    rebalance(log, gi)
            else:
                mi = free_slot(
                    t.members, "member", "close idle consumers or recreate the instance with a larger max_members"
                )
                m = t.member(mi)
                self._fill(m, gi, token, subs)
                publish(m)
                rebalance(log, gi)
        self.token, self.gi = token, gi
        self.me = t.member(mi)
        self.gentry = t.group(gi)
        self.seen_seq = -1
        # the poll's one load: `g.read_seq() != g.seen_seq` means the group changed
        # since the last sync (G5); after leave() it reads the control segment no more
        self.read_seq = change_seq_reader(self.gentry)

    def _seen(self) -> int:
        return self.seen_seq

    def _fill(self, m, gi, token, subs):
        now = monotonic_ms()
        member_id = (
            self.instance_id.decode() if self.instance_id else f"{self.client_id.decode()}-{uuid.uuid4().hex[:20]}"
        )
        member_fill(
            m,
            gi,
            token,
            self.pid,
            self.start_time,
            self.instance_id is not None,
            now,
            self.session_ms,
            self.max_poll_ms,
            self.assignor,
            member_id.encode(),
            self.instance_id or b"",
            self.client_id,
        )
        set_member_topics(m, subs)
        self.member_id = member_id

    def _static_entry(self, members) -> int:
        """The entry of our group_instance_id among members, or -1."""
        t, iid = self.t, self.instance_id
        if iid is None:
            return -1
        same = [i for i in members if same_instance(t.member(i), iid)]
        return same[0] if same else -1

    def _still_member(self) -> bool:
        return self.me.state == LIVE and self.me.token == self.token

    def leave(self):
        """Dynamic members leave at once (their partitions move now); static
        members keep their place until the session timeout, like Kafka."""
        if self.closed:
            return
        self.closed = True
        self.read_seq = self._seen  # the control segment is read no more: the log may unmap it
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if self.instance_id is None:
            with self.log._lock():
                if self._still_member():
                    free_entry(self.me)
                    rebalance(self.log, self.gi)

    # ---------------------------------------------------------- heartbeat thread

    def _beat_loop(self):
        last_commit = monotonic_ms()
        while not self._stop.wait(self.beat_ms / 1000):
            try:
                now = monotonic_ms()
                polled = now if self.polled else -1
                self.polled = False
                if self._still_member():
                    member_beat(self.me, now, polled)
                if self.auto_commit and now - last_commit >= self.auto_commit_ms:
                    self.commit_due, last_commit = True, now
                reap(self.log, self.gi, spare=self.token)
                epoch = topics_epoch(self.log)
                if epoch != self.topics_epoch:
                    self.topics_epoch = epoch
                    self._follow_topics()
            except errors.Closed:
                return
            except Exception:  # keep beating: a failed reap is retried next tick
                if self._stop.is_set():
                    return
                logging.getLogger("shmlog").warning("group %r heartbeat: %s", self.group, "failed", exc_info=True)

    def _follow_topics(self):
        """A topic was created, deleted or grew: resubscribe if ours changed."""
        subs = []
        for name in self.topics:
            try:
                h = self.log.topic_handle(name)
            except errors.UnknownTopicOrPartition:
                continue
            subs.append((h.index, h.partitions, h.generation))
        m = self.me
        with self.log._lock():
            if not self._still_member():
                return
            if member_topics(m) != subs:
                set_member_topics(m, subs)
                rebalance(self.log, self.gi)

    # ---------------------------------------------------------- the poll thread

    def sync(self):
        """Brings the consumer's assignment in line with the group: commits and
        revokes what moves away, hands it over, then takes what arrived."""
        if self.closed:
            return
        if self.commit_due:
            self.commit_due = False
            self._commit_quietly(self._positions(self.entries))
        seq = self.read_seq()
        if seq == self.seen_seq:
            return
        consumer = self.consumer
        if not self._still_member():
            lost = sorted(self.entries)
            self.entries = {}
            if lost:
                consumer._drop_parts(lost)
                self._callback(self.on_lost or self.on_revoke, lost)
            if self._static_entry(self.t.group_members(self.gi).tolist()) >= 0:
                # another process took our group_instance_id: we are the zombie (Kafka's FENCED_INSTANCE_ID)
                self.leave()
                assert self.instance_id is not None  # _static_entry found it among the members
                raise errors.FencedInstance(
                    f"another consumer joined group {self.group!r} with group_instance_id "
                    f"{self.instance_id.decode()!r}; this one is fenced and closed"
                )
            self._join()
            seq = self.read_seq()  # the entry _join bound
        self.seen_seq = seq
        generation = self.gentry.generation
        active, revoking = {}, []
        t = self.t
        for i in t.group_offsets(self.gi).tolist():
            e = t.offset(i)
            if e.owner != self.token:
                continue
            found = topic_of(self.log, e.topic, e.topic_generation)
            if found is None:
                revoking.append(i)
                continue
            tp = (found[0], e.partition)
            if e.pending == 0:
                active[tp] = i
            else:
                revoking.append(i)
        # A partition is held as its offset ENTRY, not its name: a topic deleted
        # and re-created between two syncs (one heartbeat) has the same
        # (name, partition) under a new generation and a new entry. Keeping
        # the old entry made the member read the old life's position and
        # commit into the dead generation's entry, which no snapshot writes
        # (chaos seed 100: a durable commit gone at the next reboot). A new
        # entry for a held name is a revoke of the old one and an assign.
        same = {tp for tp, i in self.entries.items() if active.get(tp) == i}
        if self.eager and generation != self.seen_generation:
            revoked, added = sorted(self.entries), sorted(active)
        else:
            revoked, added = sorted(set(self.entries) - same), sorted(set(active) - same)
        self.seen_generation = generation
        if revoked:
            if self.auto_commit:
                live = [
                    tp
                    for tp in revoked
                    if topic_of(self.log, t.offset(self.entries[tp]).topic, t.offset(self.entries[tp]).topic_generation)
                ]
                self._commit_quietly(self._positions({tp: self.entries[tp] for tp in live}))
            self._callback(self.on_revoke, revoked)
            consumer._drop_parts(revoked)
            for tp in revoked:
                self.entries.pop(tp, None)
        if revoking:
            with self.log._lock():
                for i in revoking:
                    e = t.offset(i)
                    if e.owner == self.token and e.pending != 0:
                        set_owner(e, 0 if e.pending == RELEASE else e.pending)
                        set_pending(e, 0)
                group_changed(self.gentry)
        if added:
            starts = []
            for tp in added:
                self.entries[tp] = active[tp]
                c = t.offset(active[tp]).committed
                starts.append((tp[0], tp[1], c if c >= 0 else None))
            consumer._add_parts(starts)
            self._callback(self.on_assign, added)

    def _callback(self, cb, tps):
        if cb is not None and tps:
            cb(self.consumer, list(tps))

    def _positions(self, entries: dict) -> dict:
        """What to commit for these partitions (positions, or stored offsets)."""
        return self.consumer._commit_positions(list(entries))

    def _commit_quietly(self, offsets):
        """Auto-commit: never raises for a partition that moved on (its new
        owner's offsets rule) or whose topic was deleted."""
        live = {}
        for tp, off in offsets.items():
            try:
                self.log.topic_handle(tp[0])
                live[tp] = off
            except errors.UnknownTopicOrPartition:
                pass
        try:
            self.commit(live)
        except errors.CommitFailed:
            pass

    def commit(self, offsets: dict, durable: bool = False):
        """Fenced commit (G2) of {(topic, partition): next offset}."""
        todo = []
        for tp, off in offsets.items():
            i = self.entries.get(tp)
            if i is None:
                raise errors.InvalidArgument(
                    f"{tp} is not assigned to this member of group {self.group!r}; it can commit only "
                    f"its own partitions: {sorted(self.entries)}"
                )
            e = self.t.offset(i)
            if topic_of(self.log, e.topic, e.topic_generation) is None:
                # the snapshot writes live generations only: a commit here would
                # return and never be durable (chaos seed 100)
                raise errors.CommitFailed(
                    f"topic {tp[0]!r} was deleted or re-created since this member was assigned {tp}; "
                    "nothing was committed. Poll to take the new topic's partitions."
                )
            check_offset(self.log, tp[0], tp[1], off)
            todo.append((tp, i, off))
        fenced = [tp for tp, i, off in todo if not commit(self.log, self.t.offset(i), self.token, off)]
        if fenced:
            raise errors.CommitFailed(
                f"group {self.group!r} moved {fenced} to another member (this member was removed or the "
                "group rebalanced); their offsets were not committed. Poll to rejoin and continue."
            )
        if durable:
            snapshot_offsets(self.log)

    def committed(self, topic: str, partition: int):
        h = self.log.topic_handle(topic)
        self.log.ring(h, partition, writable=False)
        key = (self.gi, h.index, h.generation, partition)
        i = offset_index(self.t).get(key)
        if i is None:
            return None
        c = self.t.offset(i).committed
        return c if c >= 0 else None


# the group options a consumer passes through (enable_auto_commit is the consumer's own)
MEMBER_OPTIONS = frozenset(
    name
    for name, prm in inspect.signature(Membership.__init__).parameters.items()
    if prm.kind is inspect.Parameter.KEYWORD_ONLY
) - {"enable_auto_commit"}
