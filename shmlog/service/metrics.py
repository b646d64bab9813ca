"""service/metrics.py — the supervisor's Prometheus exposition (prometheus-client).

Owns: the metric families (per partition: end and start offsets, bytes
produced, produce and consume rates, persisted and fsynced lag, ring fill,
sealed writes; per group: committed offsets, lag, members, rebalances; per
worker: restarts, up), sampling rates, and the loopback HTTP endpoint.
Must never: write to the instance; every value is read through the Log API
(describe_topic, describe_group) or a ring counter, under the supervisor's lock.
"""

import time

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import CollectorRegistry

from .. import errors


class _Rates:
    """Per-key rate of a growing number between the two latest samples."""

    def __init__(self):
        self.last: dict = {}
        self.rate: dict = {}

    def sample(self, key, value: float, now: float):
        prev = self.last.get(key)
        if prev is not None and now > prev[0]:
            self.rate[key] = max(value - prev[1], 0) / (now - prev[0])
        self.last[key] = (now, value)

    def get(self, key) -> float:
        return self.rate.get(key, 0.0)


class InstanceCollector:
    """Collects on every scrape; sample() (once a second, from the supervisor's
    loop) keeps the rates."""

    def __init__(self, supervisor):
        self.sup = supervisor
        self.produce_records = _Rates()
        self.produce_bytes = _Rates()
        self.consume_records = _Rates()

    def _partitions(self):
        """(topic description, partition info, ring) of every live partition."""
        log = self.sup.plane
        for name in log.list_topics():
            try:
                d = log.describe_topic(name)
                h = log.topic_handle(name)
            except errors.UnknownTopicOrPartition:
                continue  # deleted meanwhile
            for p in d.partitions:
                yield d, p, log.ring(h, p.partition, writable=False)

    def sample(self):
        now = time.monotonic()
        for d, p, r in self._partitions():
            self.produce_records.sample((d.name, p.partition), p.end_offset, now)
            self.produce_bytes.sample((d.name, p.partition), r.ends()[3], now)
        for g, _, parts, _ in self._groups():
            for pl in parts:
                if pl.committed is not None:
                    self.consume_records.sample((g, pl.topic, pl.partition), pl.committed, now)

    def _groups(self):
        log = self.sup.plane
        for g in log.list_groups():
            try:
                d = log.describe_group(g)
            except Exception:
                continue
            yield g, d.members, d.partitions, d

    def collect(self):
        with self.sup.lock:
            yield from self._collect()

    def _collect(self):
        P = ["topic", "partition"]
        fam: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
            "end": GaugeMetricFamily("shmlog_partition_end_offset", "Offset the next record will get", labels=P),
            "start": GaugeMetricFamily("shmlog_partition_log_start_offset", "Oldest readable offset", labels=P),
            "bytes": CounterMetricFamily(
                "shmlog_partition_produced_bytes", "Frame bytes written since creation", labels=P
            ),
            "prate": GaugeMetricFamily(
                "shmlog_partition_produce_records_per_second",
                "Records produced per second (last sampling interval)",
                labels=P,
            ),
            "brate": GaugeMetricFamily(
                "shmlog_partition_produce_bytes_per_second",
                "Bytes produced per second (last sampling interval)",
                labels=P,
            ),
            "plag": GaugeMetricFamily(
                "shmlog_partition_persisted_lag_bytes",
                "Bytes written to the ring but not yet to the segment files",
                labels=P,
            ),
            "flag": GaugeMetricFamily(
                "shmlog_partition_fsynced_lag_bytes", "Bytes written but not yet fsynced", labels=P
            ),
            "used": GaugeMetricFamily("shmlog_partition_ring_used_bytes", "Bytes the ring holds", labels=P),
            "cap": GaugeMetricFamily("shmlog_partition_ring_capacity_bytes", "Ring capacity", labels=P),
            "resident": GaugeMetricFamily(
                "shmlog_partition_ring_resident_bytes",
                "Shared memory the ring holds (header + the data its first lap reached)",
                labels=P,
            ),
            "fill": GaugeMetricFamily("shmlog_partition_ring_fill_ratio", "Ring used / capacity", labels=P),
            "sealed": CounterMetricFamily(
                "shmlog_partition_sealed_writes", "Writes of dead producers sealed as offset gaps", labels=P
            ),
            "over": CounterMetricFamily(
                "shmlog_partition_overwritten_frames", "Ephemeral frames dropped to make room", labels=P
            ),
            "rlag": GaugeMetricFamily(
                "shmlog_partition_slowest_reader_lag_bytes",
                "Bytes the slowest attached consumer has not read (ephemeral topics with a consumer)",
                labels=P,
            ),
            "blocked": CounterMetricFamily(
                "shmlog_partition_producer_blocked_seconds",
                'overflow="block": time producers waited on a consumer that is behind',
                labels=P,
            ),
            "cleaned": GaugeMetricFamily(
                "shmlog_partition_cleaned_offset",
                "Compacted topics: offsets below this were compacted by the cleaner's last pass",
                labels=P,
            ),
            "reclaimed": CounterMetricFamily(
                "shmlog_partition_cleaner_reclaimed_bytes",
                "Compacted topics: segment bytes the cleaner removed",
                labels=P,
            ),
            "offline": GaugeMetricFamily(
                "shmlog_partition_offline",
                "1: quarantined at restore (damaged segment files, writes refused; the "
                "supervisor log and `shmlog status` name the file and position)",
                labels=P,
            ),
        }
        for d, p, r in self._partitions():
            name = d.name
            durable = d.config.persistence == "disk"
            lv = [name, str(p.partition)]
            tail = r.ends()[3]
            fam["end"].add_metric(lv, p.end_offset)
            fam["start"].add_metric(lv, p.log_start_offset)
            fam["bytes"].add_metric(lv, tail)
            fam["prate"].add_metric(lv, self.produce_records.get((name, p.partition)))
            fam["brate"].add_metric(lv, self.produce_bytes.get((name, p.partition)))
            if durable:
                persisted, fsynced = r.persisted()
                fam["plag"].add_metric(lv, tail - persisted)
                fam["flag"].add_metric(lv, tail - fsynced)
            fam["used"].add_metric(lv, p.ring_used_bytes)
            fam["cap"].add_metric(lv, p.ring_bytes)
            fam["resident"].add_metric(lv, p.resident_bytes)
            fam["fill"].add_metric(lv, p.ring_used_bytes / p.ring_bytes)
            fam["sealed"].add_metric(lv, p.sealed_writes)
            fam["over"].add_metric(lv, p.overwritten_frames)
            if p.slowest_reader_lag_bytes is not None:
                fam["rlag"].add_metric(lv, p.slowest_reader_lag_bytes)
            if d.config.overflow == "block":
                fam["blocked"].add_metric(lv, p.blocked_ms / 1000)
            fam["offline"].add_metric(lv, 1 if p.offline else 0)
            if p.cleaned_to is not None:
                fam["cleaned"].add_metric(lv, p.cleaned_to)
                fam["reclaimed"].add_metric(lv, p.cleaner_bytes_reclaimed)
        yield from fam.values()
        yield from self._collect_groups()
        yield from self._collect_processes()

    def _collect_groups(self):
        G, GP = ["group"], ["group", "topic", "partition"]
        members = GaugeMetricFamily("shmlog_group_members", "Live members of the group", labels=G)
        rebal = CounterMetricFamily("shmlog_group_rebalances", "Rebalances of the group", labels=G)
        lag = GaugeMetricFamily(
            "shmlog_group_lag",
            "end offset - committed offset (no sample while the partition "
            "has no committed offset: see shmlog_group_lag_unknown_partitions)",
            labels=GP,
        )
        unknown = GaugeMetricFamily(
            "shmlog_group_lag_unknown_partitions",
            "Partitions of the group with no committed offset, so no known lag",
            labels=G,
        )
        committed = GaugeMetricFamily("shmlog_group_committed_offset", "Committed offset", labels=GP)
        crate = GaugeMetricFamily(
            "shmlog_group_consume_records_per_second",
            "Committed records per second (last sampling interval)",
            labels=GP,
        )
        for g, mem, parts, d in self._groups():
            members.add_metric([g], len(mem))
            rebal.add_metric([g], d.rebalances)
            n_unknown = 0
            for pl in parts:
                lv = [g, pl.topic, str(pl.partition)]
                if pl.lag is None:  # nothing committed yet: an absent sample, not a made-up 0 or NaN
                    n_unknown += 1
                else:
                    lag.add_metric(lv, pl.lag)
                if pl.committed is not None:
                    committed.add_metric(lv, pl.committed)
                crate.add_metric(lv, self.consume_records.get((g, pl.topic, pl.partition)))
            unknown.add_metric([g], n_unknown)
        return [members, rebal, lag, unknown, committed, crate]

    def _collect_processes(self):
        W = ["process", "replica"]
        restarts = CounterMetricFamily("shmlog_worker_restarts", "Restarts of a declared worker", labels=W)
        up = GaugeMetricFamily("shmlog_worker_up", "1 while the worker runs", labels=W)
        for w in self.sup.workers.describe():
            lv = [w["process"], str(w["replica"])]
            restarts.add_metric(lv, w["restarts"])
            up.add_metric(lv, 1 if w["pid"] else 0)
        prestarts = CounterMetricFamily("shmlog_persister_restarts", "Persister restarts by the supervisor")
        prestarts.add_metric([], self.sup.persister_restarts)
        return [restarts, up, prestarts]


class MetricsServer:
    """prometheus-client's HTTP server on 127.0.0.1:port (0 = a free port)."""

    def __init__(self, collector: InstanceCollector, port: int):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        self.httpd, self.thread = start_http_server(port, addr="127.0.0.1", registry=self.registry)
        self.port = self.httpd.server_port

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)
