"""control/assignors.py — the three partition assignors of consumer groups
(range, roundrobin, cooperative-sticky), as Kafka's clients define them.

Owns: pure functions from (members, subscriptions, partition counts, current
owners) to owners. Must never: touch shared memory or take a lock (the
rebalance in groups.py calls them under the lock).
"""

ASSIGNORS = ("range", "roundrobin", "cooperative-sticky")
EAGER = {"range", "roundrobin"}  # Kafka's eager protocol: revoke everything, then assign


# ------------------------------------------------------------------ assignors
# Each takes members (ids, sorted), subs {member: set(topics)}, partitions
# {topic: count}, current {(topic, partition): member} and returns
# {(topic, partition): member} for every subscribed partition.


def assign_range(members, subs, partitions, current):
    out = {}
    for topic in sorted(partitions):
        ms = [m for m in members if topic in subs[m]]
        if not ms:
            continue
        n, extra = divmod(partitions[topic], len(ms))
        p = 0
        for i, m in enumerate(ms):
            for _ in range(n + (i < extra)):
                out[(topic, p)] = m
                p += 1
    return out


def assign_roundrobin(members, subs, partitions, current):
    out, i = {}, 0
    for tp in sorted((t, p) for t in partitions for p in range(partitions[t])):
        for _ in range(len(members)):
            m = members[i % len(members)]
            i += 1
            if tp[0] in subs[m]:
                out[tp] = m
                break
    return out


def assign_sticky(members, subs, partitions, current):
    """Cooperative-sticky: keeps every partition where it is unless balance
    needs it elsewhere; moves only what must move. Balance among members of
    one subscription: each holds floor(partitions / members), and only
    `remainder` of them one more; unowned partitions go to the least-loaded
    subscriber."""
    tps = sorted((t, p) for t in partitions for p in range(partitions[t]))
    eligible = {tp: [m for m in members if tp[0] in subs[m]] for tp in tps}
    out, load = {}, {m: 0 for m in members}
    floor, peer_set = {}, {}
    extra: dict[frozenset, int] = {}  # peers -> how many of them hold one more
    for m in members:
        mine = [tp for tp in tps if m in eligible[tp]]
        peers = frozenset(x for tp in mine for x in eligible[tp]) or frozenset([m])
        floor[m], peer_set[m] = divmod(len(mine), len(peers))[0], peers
        extra.setdefault(peers, len(mine) % len(peers))
    keep = sorted((tp for tp in tps if current.get(tp) in eligible[tp]), key=lambda tp: (tp[1], tp[0]))
    for tp in keep:  # up to the floor: stay
        m = current[tp]
        if load[m] < floor[m]:
            out[tp] = m
            load[m] += 1
    for tp in keep:  # one more, while the remainder lasts
        m = current[tp]
        if tp not in out and load[m] == floor[m] and extra[peer_set[m]] > 0:
            out[tp] = m
            load[m] += 1
            extra[peer_set[m]] -= 1
    for tp in tps:
        if tp not in out and eligible[tp]:
            m = min(eligible[tp], key=lambda x: (load[x], x))
            out[tp] = m
            load[m] += 1
    return out


ASSIGN = {"range": assign_range, "roundrobin": assign_roundrobin, "cooperative-sticky": assign_sticky}
