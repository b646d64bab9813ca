"""checker.py — the campaign's independent judge: histories in, figures and violations out.

Owns: reading a run's history/*.jsonl (what the campaign did, what every
worker acknowledged and read, the final read-back after a clean stop and a
restart from disk) and deciding, from those alone, whether shmlog kept its
promises. Must never: import shmlog or look at the data dir, the rings or
any shmlog internals — it trusts only what clients were told and what they read.

Topic generations ("incarnations"): a topic deleted and created again is a
new incarnation. shmlog's generation number is per control segment (a
reboot renumbers), so the checker maps (boot, generation) pairs to
incarnations from the describe events the campaign records after every
admin request and every reboot: across a reboot with no create/delete in
between, the restored topic is the same incarnation.

Checks (each violation names the check, the seed and a short trace):
  lost-durable       a record acknowledged with flush(durable=True) missing
                     from the read-back (its incarnation still live, offset
                     at or above the final log start) and no refusal there
  lost-ring          a record acknowledged in the ring of a durable topic,
                     since the last fault reboot, missing after the clean stop
  offset-reused      two different records at one (incarnation, partition,
                     offset) in one boot, or replacing a durably acknowledged one
  duplicated         one record id at two offsets
  other-generation   a record read under an incarnation it was not written to
  skipped            a consumer read offsets a and b > a+1 of a durable topic
                     in one session while the read-back holds a record between
                     (above the final log start)
  unrefused-damage   a record in a segment the campaign damaged is missing, no refusal
  refused-intact     a reader got CorruptRecord where the campaign damaged nothing
  offline-intact     the final describe reports a partition offline (quarantined)
                     where the campaign damaged nothing

Quarantine: a partition whose files the campaign damaged may be reported
offline (describe's "offline": the first offset the damage affects) after
the restore or a persister restart that found it; it then refuses writes and
copies nothing more, so ring-acknowledged records at or above that offset
that were not yet persisted are not "lost-ring" (counted as
acked_ring_quarantined). Durable acknowledgements are not excused: they are
on disk, and must be read back or refused (the damaged range) as before.
  silent-stall       the read-back stopped for 5 s with no error
  redelivered        a group delivered a record below an offset it had
                     committed (durably) before — outside the at-least-once window
  stall              a producer made no progress for longer than
                     unblock_timeout + slack, beyond what faults on its own
                     path excuse (its own stop/kill, reboot, ENOSPC,
                     persister/supervisor/listener faults it depends on)
"""

import bisect
import collections
import re

from . import history

SLACK_S = 3.0
_REFUSED = re.compile(r"'([^']+)' partition (\d+).*?\(offsets from (\d+)\)")


class Checker:
    def __init__(self, run_dir: str, slack_s: float = SLACK_S):
        self.files = history.read_dir(run_dir)
        self.slack = slack_s
        camp = self.files.get("campaign", [])
        setup = next((e for e in camp if e["ev"] == "setup"), {})
        self.seed = setup.get("seed")
        self.unblock_s = setup.get("unblock_ms", 500) / 1000
        self.durable_topics = {t for t, c in setup.get("topics", {}).items() if c.get("persistence") == "disk"}
        self.camp = camp
        self.violations = []
        self.stats = collections.Counter()

    def violation(self, check, msg, trace=None):
        self.violations.append({"check": check, "seed": self.seed, "msg": msg, "trace": trace or []})

    # ------------------------------------------------------------ incarnations

    def _incarnations(self):
        evs = []
        for _name, es in self.files.items():
            for e in es:
                if e["ev"] == "describe":
                    evs.append((e["t"], 1, e))
                elif e["ev"] == "admin" and e.get("op") in ("create", "delete"):
                    evs.append((e["t0"], 0, e))
        for e in self.camp:
            if e["ev"] == "admin-done" and e.get("timed_out") and e.get("op") in ("create", "delete"):
                evs.append((e["t0"], 0, {**e, "ok": None}))
        evs.sort(key=lambda x: (x[0], x[1]))
        self.inc = {}  # (topic, boot, gen) -> incarnation number or None (ambiguous)
        self.inc_durable = {}
        last = {}  # topic -> (boot, gen) last described
        pending = collections.defaultdict(bool)
        count = collections.Counter()
        self.final = {}
        for _, kind, e in evs:
            if kind == 0:
                if e.get("ok") is not False or e.get("err") not in ("TopicExists", "UnknownTopicOrPartition"):
                    pending[e["topic"]] = True
                continue
            seen = set()
            for t, d in e["topics"].items():
                seen.add(t)
                key = (t, e["boot"], d["gen"])
                if key not in self.inc:
                    prev = last.get(t)
                    if prev is not None and prev[0] != e["boot"] and not pending[t]:
                        self.inc[key] = self.inc.get((t,) + prev)
                    elif prev is not None and prev[0] != e["boot"] and pending[t]:
                        count[t] += 1
                        self.inc[key] = None  # restored across a reboot after an unfinished change
                    else:
                        count[t] += 1
                        self.inc[key] = count[t]
                last[t] = (e["boot"], d["gen"])
                pending[t] = False
                if e.get("final"):
                    self.final[t] = dict(d, inc=self.inc[key])
            for t in list(last):
                if t not in seen and e.get("topics") is not None:
                    last.pop(t)
                    pending[t] = False

    def inc_of(self, topic, boot, gen, gen2=None):
        if gen is None or (gen2 is not None and gen2 != gen):
            return None
        return self.inc.get((topic, boot, gen))

    # ------------------------------------------------------------ collection

    def _collect(self):
        self.at = collections.defaultdict(list)  # (topic, inc, p, off) -> [(id, boot, what, file, t)]
        self.where = collections.defaultdict(set)  # id -> {(topic, inc, p, off)}
        self.acks = []  # (lvl, topic, inc, boot, p, off, id, t, file)
        self.sessions = collections.defaultdict(list)  # (file, sess, topic, inc, p) -> [off]
        self.group_deliv = collections.defaultdict(list)  # (group, topic, inc, p) -> [(t, off, id, file)]
        self.commits = collections.defaultdict(list)  # (group, topic, inc, p) -> [(t, off)]
        self.refusals = collections.defaultdict(list)  # (topic, p) -> [(at, next)]
        self.progress = collections.defaultdict(list)  # file -> [t of each ack]
        self.first_read = {}
        self.stuck = []
        self.refused_events = []
        self.kack_window = {}  # Kafka record id -> (t0, t) of its batch
        for f, es in self.files.items():
            for e in es:
                ev = e["ev"]
                if ev == "ack":
                    inc = self.inc_of(e["topic"], e["boot"], e["gen"], e["gen2"])
                    if e["lvl"] == "ring":
                        self.progress[f].append(e["t"])
                    for i in range(e["n"]):
                        rid = f"{e['w']}:{e['s0'] + i}"
                        self.acks.append((e["lvl"], e["topic"], inc, e["boot"], e["p"], e["off"] + i, rid, e["t"], f))
                        self.stats[f"acked_{e['lvl']}"] += 1
                elif ev == "kack":
                    self.progress[f].append(e["t"])
                    inc = self._inc_at(e["topic"], e["boot"], e["t0"], e["t"])
                    for s, p, off in e["recs"]:
                        rid = f"{e['w']}:{s}"
                        self.kack_window[rid] = (e["t0"], e["t"])
                        self.acks.append(("ring", e["topic"], inc, e["boot"], p, off, rid, e["t"], f))
                        self.stats["acked_ring_kafka"] += 1
                elif ev == "read":
                    inc = self.inc_of(e["topic"], e["boot"], e["gen"], e["gen2"])
                    if e["kind"] == "readback":
                        inc = self.final.get(e["topic"], {}).get("inc")
                    for p, off, rid, pboot, pgen in e["recs"]:
                        self.stats[f"read_{e['kind']}"] += 1
                        if inc is None:
                            self.stats["reads_unmapped"] += 1
                            continue
                        key = (e["topic"], inc, p, off)
                        self.at[key].append((rid, e["boot"], e["kind"], f, e["t"]))
                        self.where[rid].add(key)
                        if pgen is not None:
                            pinc = self.inc.get((e["topic"], pboot, pgen))
                            if pinc is not None and pinc != inc:
                                self.violation(
                                    "other-generation",
                                    f"{e['topic']} incarnation {inc} p{p} offset {off} returned {rid}, "
                                    f"written to incarnation {pinc}",
                                    [f, e["t"]],
                                )
                        if e["kind"] != "readback":
                            self.sessions[(f, e["sess"], e["topic"], inc, p)].append(off)
                            self.first_read.setdefault((e["kind"], rid), e["t"])
                        if e["kind"] == "member":
                            self.group_deliv[(e["group"], e["topic"], inc, p)].append((e["t"], off, rid, f))
                elif ev == "commit":
                    inc = self.inc_of(e["topic"], e["boot"], e["gen"], e["gen2"])
                    if inc is not None:
                        for p, off in e["offs"].items():
                            self.commits[(e["group"], e["topic"], inc, int(p))].append((e["t"], off))
                elif ev == "refused":
                    self.stats["refusals"] += 1
                    self.refused_events.append((f, e))
                    if "p" in e:
                        self.refusals[(e["topic"], e["p"])].append((e["at"], e["next"]))
                elif ev == "stuck":
                    self.stuck.append(e)
        for lvl, topic, inc, boot, p, off, rid, t, f in self.acks:
            if inc is not None:
                key = (topic, inc, p, off)
                self.at[key].append((rid, boot, "ack-" + lvl, f, t))
                self.where[rid].add(key)

    def _inc_at(self, topic, boot, t0, t1):
        """The incarnation live over [t0, t1] in this boot, from describes (a Kafka client knows no generation)."""
        if not hasattr(self, "_desc_idx"):
            self._desc_idx = collections.defaultdict(list)  # (topic, boot) -> [(t, gen)] sorted
            self._change_idx = collections.defaultdict(list)  # topic -> [t0 of create/delete] sorted
            for es in self.files.values():
                for e in es:
                    if e["ev"] == "describe":
                        for t, d in e["topics"].items():
                            self._desc_idx[(t, e["boot"])].append((e["t"], d["gen"]))
                    elif e["ev"] == "admin" and e.get("op") in ("create", "delete"):
                        self._change_idx[e.get("topic")].append(e["t0"])
            for v in self._desc_idx.values():
                v.sort()
            for v in self._change_idx.values():
                v.sort()
        ds = self._desc_idx.get((topic, boot), [])
        i = bisect.bisect_right(ds, (t0, float("inf"))) - 1
        if i < 0:
            return None
        dt, gen = ds[i]
        ch = self._change_idx.get(topic, [])
        if bisect.bisect_left(ch, dt) < bisect.bisect_right(ch, t1):
            return None
        return self.inc.get((topic, boot, gen))

    # ------------------------------------------------------------ checks

    def check_offsets(self):
        bad = collections.defaultdict(list)
        for key, ents in self.at.items():
            ids = {e[0] for e in ents}
            if len(ids) < 2:
                continue
            boots = collections.defaultdict(set)  # id -> boots it was seen in
            for e in ents:
                boots[e[0]].add(e[1])
            durable_boot = {e[0]: e[1] for e in ents if e[2] == "ack-durable"}
            by_boot = collections.defaultdict(set)
            for e in ents:
                by_boot[e[1]].add(e[0])
            if any(len(s) > 1 for s in by_boot.values()):
                why = "two records in one boot"
            elif any(
                b2 >= bd for rid, bd in durable_boot.items() for other, bs in boots.items() if other != rid for b2 in bs
            ):
                why = "a durably acknowledged record replaced"
            else:
                self.stats["offsets_reused_after_reboot_not_durable"] += 1
                continue
            bad[(key[0], key[1], key[2], why)].append((key[3], sorted(ents, key=lambda e: e[4])[:4]))
        for (topic, inc, p, why), rows in bad.items():
            rows.sort()
            self.violation(
                "offset-reused",
                f"{topic} incarnation {inc} p{p}: {why} at {len(rows)} offsets {_ranges([r[0] for r in rows])}",
                rows[0][1],
            )

    def check_duplicates(self):
        """One id at two offsets. Native sends never retry, so any is a violation; a
        Kafka client retries a batch in flight when the listener dies, and the
        listener's idempotence state dies with it (documented), so a Kafka record
        whose batch overlapped a listener kill or a reboot may be there twice."""
        restarts = [
            e["t0"]
            for e in self.camp
            if e["ev"] == "fault" and (e["kind"] == "reboot" or (e["kind"] == "kill" and e.get("target") == "listener"))
        ]
        dups = []
        for rid, keys in self.where.items():
            if len(keys) < 2:
                continue
            w = self.kack_window.get(rid)
            if w is not None and any(w[0] - 5 <= t <= w[1] for t in restarts):
                self.stats["kafka_duplicates_after_listener_restart"] += 1
                continue
            dups.append((rid, sorted(keys)))
        if dups:
            self.violation(
                "duplicated",
                f"{len(dups)} record ids at more than one offset; first: {dups[0][0]} at {dups[0][1][:4]}",
                dups[1:4],
            )

    def check_refusals(self):
        """A refusal (CorruptRecord) where the campaign damaged nothing: an intact record
        reported as corrupt (and, when the reader seeks past it as told, skipped)."""
        bad = collections.defaultdict(list)
        for f, e in self.refused_events:
            m = _REFUSED.search(e.get("msg") or "")
            p = e.get("p", int(m.group(2)) if m else None)
            off = int(m.group(3)) if m else e.get("at")
            if p is None or off is None:
                continue
            if any(
                d["topic"] == e["topic"] and d["p"] == p and d["base"] <= off < d["next"] and d["t0"] <= e["t"]
                for d in self.damage
            ):
                self.stats["refusals_of_damage"] += 1
                continue
            bad[(e["topic"], p)].append((off, f, (e.get("msg") or "")[:160]))
        for (topic, p), rows in bad.items():
            self.violation(
                "refused-intact",
                f"{len(rows)} refusals (CorruptRecord) of {topic} p{p} where nothing was "
                f"damaged, at offsets {_ranges([r[0] for r in rows])}",
                rows[:3],
            )

    def check_stuck(self):
        """The read-back stopped making progress without an error (then went on at the next segment)."""
        for e in self.stuck:
            self.violation(
                "silent-stall",
                f"the read-back of {e['topic']} p{e['p']} stopped at offset {e['at']} "
                f"for 5 s with no error (next segment file starts at {e['next']})",
                [e],
            )

    def check_losses(self, camp_final_clean):
        read_back = {k for k, ents in self.at.items() if any(e[2] == "readback" for e in ents)}
        rb_ids = collections.defaultdict(set)
        for k in read_back:
            for e in self.at[k]:
                if e[2] == "readback":
                    rb_ids[k].add(e[0])
        last_fault_boot = max([e["boot"] for e in self.camp if e["ev"] == "reboot" and not e.get("final")] + [0])
        lost = collections.defaultdict(list)
        durable_ids = {a[6] for a in self.acks if a[0] == "durable"}
        for lvl, topic, inc, boot, p, off, rid, t, _f in self.acks:
            if lvl == "ring" and rid in durable_ids:
                continue  # judged at its stronger level
            fin = self.final.get(topic)
            if inc is None or fin is None or fin["inc"] != inc or p >= fin["partitions"] or off < fin["start"][p]:
                self.stats[f"acked_{lvl}_not_checkable"] += 1
                continue
            if lvl == "ring" and not (topic in self.durable_topics and boot == last_fault_boot and camp_final_clean):
                continue
            q = (fin.get("offline") or [None] * (p + 1))[p]
            if lvl == "ring" and q is not None and off >= q and self._damaged(topic, p):
                self.stats["acked_ring_quarantined"] += 1
                continue
            key = (topic, inc, p, off)
            self.stats[f"acked_{lvl}_checked"] += 1
            if rid in rb_ids.get(key, ()):
                continue
            if any(a <= off and (n is None or off < n) for a, n in self.refusals.get((topic, p), [])):
                self.stats["acked_refused_expected"] += 1
                continue
            damaged = any(
                d["topic"] == topic and d["p"] == p and d["base"] <= off < d["next"] and d["t0"] > t
                for d in self.damage
            )
            lost[(lvl, topic, inc, p, damaged)].append((off, rid, t))
        for (lvl, topic, inc, p, damaged), recs in lost.items():
            recs.sort()
            offs = [o for o, _, _ in recs]
            check = "unrefused-damage" if damaged else "lost-durable" if lvl == "durable" else "lost-ring"
            self.violation(
                check,
                f"{len(recs)} records acknowledged ({lvl}) "
                f"{'in a damaged segment, missing without a refusal,' if damaged else 'lost'} "
                f"from {topic} incarnation {inc} p{p}: "
                f"offsets {_ranges(offs)}; final log start {self.final[topic]['start'][p]}, "
                f"end {self.final[topic]['end'][p]}",
                recs[:5],
            )

    def _damaged(self, topic, p) -> bool:
        return any(d["topic"] == topic and d["p"] == p for d in self.damage)

    def check_quarantine(self):
        """A partition reported offline must be one the campaign damaged."""
        for topic, fin in self.final.items():
            for p, q in enumerate(fin.get("offline") or []):
                if q is None:
                    continue
                if self._damaged(topic, p):
                    self.stats["quarantined_partitions"] += 1
                else:
                    self.violation(
                        "offline-intact",
                        f"{topic} p{p} is reported offline (from offset {q}) but "
                        "the campaign damaged none of its files",
                        [fin],
                    )

    def check_skips(self):
        present = collections.defaultdict(list)
        for topic, inc, p, off in self.at:
            present[(topic, inc, p)].append(off)
        for v in present.values():
            v.sort()
        bad = collections.defaultdict(lambda: [0, set(), []])  # (kind, topic, inc, p) -> [sessions, offsets, who]
        for (f, sess, topic, inc, p), offs in self.sessions.items():
            if topic not in self.durable_topics:
                continue
            fin = self.final.get(topic)
            if not (fin and fin["inc"] == inc and p < fin["partitions"]):
                continue  # the incarnation is gone: retention cannot be ruled out
            start = fin["start"][p]
            pres = present[(topic, inc, p)]
            skipped = []
            for a, b in zip(offs, offs[1:]):
                if b > a + 1:
                    i, j = bisect.bisect_right(pres, a), bisect.bisect_left(pres, b)
                    skipped += [o for o in pres[i:j] if o >= start]
            if skipped:
                self.stats["skip_sessions"] += 1
                kind = f.split(".")[0]
                row = bad[(kind, topic, inc, p)]
                row[0] += 1
                row[1].update(skipped)
                row[2].append(f"{f} session {sess}")
        for (kind, topic, inc, p), (n, offs, who) in bad.items():
            self.violation(
                "skipped",
                f"{kind}: {n} read sessions of {topic} incarnation {inc} p{p} went past "
                f"{len(offs)} distinct records they never returned: offsets {_ranges(offs)}",
                who[:3],
            )

    def check_groups(self):
        for key, dels in self.group_deliv.items():
            dels.sort()
            commits = sorted(self.commits.get(key, []))
            seen = set()
            bad = []
            ct = [c[0] for c in commits]
            for t, off, rid, f in dels:
                # a delivery again is the same record at the same offset: a
                # reboot gives the offsets of ring-only records it lost to new
                # records, which a group reads for the first time
                if (rid, off) in seen:
                    i = bisect.bisect_left(ct, t)
                    committed = max((c[1] for c in commits[:i]), default=0)
                    if off < committed:
                        bad.append((off, f, t, committed))
                    else:
                        self.stats["redelivered_in_window"] += 1
                seen.add((rid, off))
            if bad:
                self.violation(
                    "redelivered",
                    f"group {key[0]} {key[1]} incarnation {key[2]} p{key[3]}: "
                    f"{len(bad)} records delivered again below an offset already committed "
                    f"(first: offset {bad[0][0]} to {bad[0][1]}, committed {bad[0][3]})",
                    bad[:5],
                )

    def _windows(self):
        """Fault windows [t0, t1 + restart allowance] by what they affect."""
        w = []
        for e in self.camp:
            if e["ev"] != "fault":
                continue
            t0, t1 = e["t0"], e.get("t1", e["t0"])
            kind = e["kind"]
            target = e.get("target")
            extra = 3.0 if kind in ("kill", "reboot", "admin+kill") else 1.0
            if kind == "admin" and e.get("op") in ("recreate", "delete"):
                kind = "admin-delete"
            w.append((t0, t1 + extra, kind, target))
        return w

    def check_stalls(self):
        bound = self.unblock_s + self.slack
        wins = self._windows()
        longest = (0.0, None)
        longest_raw = 0.0
        for f, ts in self.progress.items():
            ts.sort()
            name = f.split(".")[0]
            kafka = name.startswith("kafka")
            for a, b in zip(ts, ts[1:]):
                gap = b - a
                if kafka:
                    # a Kafka client's gaps are its own timeouts and backoffs (request_timeout_ms,
                    # reconnects): a figure, not judged against shmlog's unblock timeout
                    client_max = max(gap, self.stats["kafka_client_longest_gap_s"])
                    self.stats["kafka_client_longest_gap_s"] = round(client_max, 3)
                    continue
                longest_raw = max(longest_raw, gap)
                if gap <= bound:
                    continue
                covered = 0.0
                for w0, w1, kind, target in wins:
                    relevant = (
                        target == name
                        or kind in ("reboot", "enospc", "admin-delete", "admin+kill")
                        or (kind in ("kill", "stop") and target in ("persister", "supervisor"))
                        or (kafka and target == "listener")
                    )
                    if relevant:
                        covered += max(0.0, min(b, w1) - max(a, w0))
                unexcused = gap - min(covered, gap)
                if unexcused > longest[0]:
                    longest = (unexcused, (f, a, b))
                if unexcused > bound:
                    near = [(round(w0 - a, 2), kind, target) for (w0, w1, kind, target) in wins if w1 >= a and w0 <= b]
                    self.violation(
                        "stall",
                        f"{f}: no acknowledgement for {gap:.2f} s ({unexcused:.2f} s not "
                        f"excused by faults on its path; bound {bound:.2f} s)",
                        near[:8],
                    )
        self.stats["longest_gap_s"] = round(longest_raw, 3)
        self.stats["longest_unexcused_stall_s"] = round(longest[0], 3)

    def delivery_latency(self):
        """A figure, not a check: ack-to-first-read time of the plain consumers (a consumer
        that was killed re-reads from the earliest offset, so the tail includes catch-up)."""
        lat = []
        unread = 0
        for lvl, _topic, _inc, _boot, _p, _off, rid, t, _f in self.acks:
            if lvl != "ring":
                continue
            r = self.first_read.get(("consumer", rid))
            if r is None:
                unread += 1
            else:
                lat.append(max(0.0, r - t))
        lat.sort()
        if lat:
            self.stats["consumer_latency_p50_s"] = round(lat[len(lat) // 2], 3)
            self.stats["consumer_latency_p99_s"] = round(lat[int(len(lat) * 0.99)], 3)
            self.stats["consumer_latency_max_s"] = round(lat[-1], 3)
        self.stats["acked_never_read_by_a_plain_consumer"] = unread

    def run(self):
        self._incarnations()
        self._collect()
        clean = any(e["ev"] == "final-stop" and e.get("clean") for e in self.camp)
        if not any(e["ev"] == "done" for e in self.files.get("readback", [])):
            self.violation("readback", "the final read-back did not finish (see logs/ and the readback history)")
        for e in self.files.get("readback", []):
            if e["ev"] == "short":
                self.stats["readback_short"] += 1
        self.damage = [e for e in self.camp if e["ev"] == "fault" and e["kind"] == "damage"]
        self.check_offsets()
        self.check_duplicates()
        self.check_stuck()
        self.check_refusals()
        self.check_losses(clean)
        self.check_quarantine()
        self.check_skips()
        self.check_groups()
        self.check_stalls()
        self.delivery_latency()
        faults = collections.Counter()
        for e in self.camp:
            if e["ev"] == "fault":
                faults[
                    e["kind"]
                    + (
                        f":{e['target']}"
                        if e.get("target")
                        and e["kind"] in ("kill", "stop")
                        and e["target"] in ("supervisor", "persister", "listener")
                        else ""
                    )
                ] += 1
        return {
            "seed": self.seed,
            "final_clean_stop": clean,
            "faults": dict(sorted(faults.items())),
            "faults_total": sum(faults.values()),
            "stats": dict(sorted(self.stats.items())),
            "violations_by_check": dict(collections.Counter(v["check"] for v in self.violations)),
            "violations": self.violations,
        }


def _ranges(offs):
    offs = sorted(set(offs))
    out = []
    for o in offs:
        if out and o == out[-1][1] + 1:
            out[-1][1] = o
        else:
            out.append([o, o])
    s = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in out[:8])
    return s + (f" (+{len(out) - 8} ranges)" if len(out) > 8 else "")


def check(run_dir: str, slack_s: float = SLACK_S) -> dict:
    return Checker(run_dir, slack_s).run()
