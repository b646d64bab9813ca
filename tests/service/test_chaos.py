"""test_chaos.py — a short seeded fault campaign (tools/chaos) in CI, and the checker's own tests.

Owns: running tools.chaos for a few seeds on a scratch instance (its own
name, shm prefix, tmpfs data dir; the campaign cleans up after itself) and
asserting, check by check, what must hold; a check that fails here because
of a defect of issue 11 being fixed on another branch is marked
xfail(strict=False) naming the defect, to be removed after the merge.
Must never: share an instance with another test, or pass without the
campaign having injected faults and checked acknowledged records.
"""

import collections
import fcntl
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # a seeded fault campaign: about a minute

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tools.chaos import campaign, checker, history  # noqa: E402

SEEDS = (17, 26)  # their 14-fault schedules hold every fault kind (reboots, damage, ENOSPC...)
FAULTS, DURATION = 14, 12.0

# check -> a known defect that makes it fail (xfail naming it); empty when every check must hold
KNOWN: dict[str, str] = {}
# Damage faults (bit flips and truncations of closed segments) are back in the
# CI seeds: a damaged partition is quarantined at the next restore (or
# persister start) and the rest of the instance is served; the checker
# excuses only what quarantine documents (checker.py, "Quarantine").
WEIGHTS = campaign.WEIGHTS
CHECKS = [
    "lost-durable",
    "lost-ring",
    "offset-reused",
    "duplicated",
    "other-generation",
    "skipped",
    "redelivered",
    "stall",
    "silent-stall",
    "unrefused-damage",
    "refused-intact",
    "offline-intact",
    "readback",
]


@pytest.fixture(scope="session")
def reports(tmp_path_factory, worker_id):
    """The campaign runs once per session even under xdist: the first worker runs it
    under an flock in the directory all workers share and leaves the reports there."""
    shared = tmp_path_factory.getbasetemp().parent if worker_id != "master" else tmp_path_factory.getbasetemp()
    done = shared / "chaos-reports.json"
    with open(shared / "chaos.lock", "w") as lk:
        fcntl.flock(lk, fcntl.LOCK_EX)
        if done.exists():
            return {int(k): v for k, v in json.loads(done.read_text()).items()}
        out = {}
        for seed in SEEDS:
            run_dir = str(tmp_path_factory.mktemp(f"chaos{seed}") / "run")
            c = campaign.Campaign(seed, FAULTS, DURATION, run_dir, tmpfs_mb=96, quiet=True, weights=WEIGHTS)
            c.run()
            rep = checker.check(run_dir)
            rep["instance"], rep["shm_prefix"], rep["data_dir"] = c.instance, c.shm_prefix, c.data_dir
            out[seed] = rep
        done.write_text(json.dumps(out, default=str))
        return out


def _fmt(vs):
    return "\n".join(f"[{v['check']}] seed {v['seed']}: {v['msg']}\n    {v['trace'][:2]}" for v in vs[:10])


@pytest.mark.parametrize("check", CHECKS)
def test_campaign_holds(reports, check, request):
    if check in KNOWN:
        request.applymarker(pytest.mark.xfail(strict=False, reason=KNOWN[check]))
    bad = [v for r in reports.values() for v in r["violations"] if v["check"] == check]
    assert not bad, _fmt(bad)


def test_campaign_did_its_work_and_left_nothing(reports):
    """The campaign is no campaign unless it injected faults and checked acknowledged records."""
    checked = {}
    for seed, r in reports.items():
        # the schedule can fall behind a loaded machine (an admin request waits on a slow start-up):
        # a few faults must still have fired
        assert r["faults_total"] >= 3, (seed, r["faults"])
        s = r["stats"]
        assert s.get("acked_durable", 0) > 20, (seed, s)
        checked[seed] = s.get("acked_durable_checked", 0)
        assert s.get("read_readback", 0) > 0, (seed, s)
        assert r["final_clean_stop"], seed
        assert not [n for n in os.listdir("/dev/shm") if n.startswith(r["shm_prefix"])]
        with open("/proc/mounts") as f:
            assert r["data_dir"] not in f.read()
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        assert r["instance"] not in ps
    # checked over the campaign: one seed's acknowledged durable records can all be uncheckable
    # when its schedule re-created the durable topic or shrank its retention after them (seen
    # once in a loaded CI run: 10,133 acked, all below retention or of the older topic life)
    assert sum(checked.values()) > 0, checked


def test_schedule_is_a_function_of_the_seed(tmp_path):
    a = campaign.Campaign(5, 40, 30, str(tmp_path / "a")).schedule()
    b = campaign.Campaign(5, 40, 30, str(tmp_path / "b")).schedule()
    c = campaign.Campaign(6, 40, 30, str(tmp_path / "c")).schedule()
    assert a == b and a != c and len(a) == 40
    assert set(k for _, k in a) <= set(campaign.WEIGHTS)


# ------------------------------------------------------------------ the checker finds what it must


def _write(run_dir, name, events):
    os.makedirs(os.path.join(run_dir, "history"), exist_ok=True)
    with open(os.path.join(run_dir, "history", name + ".jsonl"), "w") as f:
        for e in events:
            f.write(json.dumps(e) + "\n")


def _synthetic(run_dir, readback_recs, member_offs=(), commits=()):
    """A run with one durable topic 'dur' (1 partition) and producer acks for offsets 0-4."""
    topics = {"dur": {"persistence": "disk"}}
    d0 = {"dur": {"gen": 1, "persistence": "disk", "partitions": 1, "start": [0], "end": [5]}}
    _write(
        run_dir,
        "campaign",
        [
            {"ev": "setup", "t": 0, "seed": 99, "unblock_ms": 500, "topics": topics},
            {"ev": "reboot", "t": 50, "boot": 1, "final": True},
            {"ev": "final-stop", "t": 49, "clean": True, "boot": 0},
        ],
    )
    _write(run_dir, "admin.1", [{"ev": "describe", "t": 1, "boot": 0, "topics": d0}])
    acks = [
        {
            "ev": "ack",
            "t": 10 + i,
            "lvl": lvl,
            "topic": "dur",
            "boot": 0,
            "gen": 1,
            "gen2": 1,
            "p": 0,
            "off": i,
            "w": "producer0.0.1",
            "s0": i,
            "n": 1,
            "t0": 10 + i,
        }
        for i in range(5)
        for lvl in ("ring", "durable")
    ]
    _write(run_dir, "producer0.0.1", acks)
    reads = [
        {
            "ev": "read",
            "t": 30 + i,
            "kind": "member",
            "topic": "dur",
            "boot": 0,
            "gen": 1,
            "gen2": 1,
            "sess": 1,
            "group": "g",
            "recs": [[0, o, f"producer0.0.1:{o}", 0, 1]],
        }
        for i, o in enumerate(member_offs)
    ]
    _write(
        run_dir,
        "member.0.1",
        reads
        + [
            {"ev": "commit", "t": t, "group": "g", "topic": "dur", "boot": 0, "gen": 1, "gen2": 1, "offs": {"0": o}}
            for t, o in commits
        ],
    )
    _write(
        run_dir,
        "readback",
        [
            {"ev": "describe", "t": 51, "boot": 1, "final": True, "topics": {"dur": {**d0["dur"], "gen": 1}}},
            {
                "ev": "read",
                "t": 52,
                "kind": "readback",
                "topic": "dur",
                "boot": 1,
                "gen": 1,
                "gen2": 1,
                "sess": 0,
                "recs": [[0, o, rid, 0, 1] for o, rid in readback_recs],
            },
            {"ev": "done", "t": 53},
        ],
    )


def test_checker_passes_a_clean_history(tmp_path):
    _synthetic(str(tmp_path), [(o, f"producer0.0.1:{o}") for o in range(5)], member_offs=range(5), commits=[(40, 5)])
    rep = checker.check(str(tmp_path))
    assert rep["violations"] == [] and rep["stats"]["acked_durable_checked"] == 5


def test_checker_finds_loss_reuse_skip_and_redelivery(tmp_path):
    # offset 1 lost, offset 3 holds another record, the member skipped 2 and got 0 again below its commit
    _synthetic(
        str(tmp_path),
        [(0, "producer0.0.1:0"), (2, "producer0.0.1:2"), (3, "producer9.0.1:7"), (4, "producer0.0.1:4")],
        member_offs=[0, 1, 3, 4, 0],
        commits=[(32, 2)],
    )
    rep = checker.check(str(tmp_path))
    got = collections.Counter(v["check"] for v in rep["violations"])
    assert got["lost-durable"] == 1 and got["offset-reused"] == 1, rep["violations"]
    assert got["skipped"] == 1 and got["redelivered"] == 1, rep["violations"]
    lost = next(v for v in rep["violations"] if v["check"] == "lost-durable")
    assert "offsets 1, 3" in lost["msg"] and lost["seed"] == 99


def test_checker_counts_a_new_record_at_a_freed_offset_as_no_redelivery(tmp_path):
    # after a commit of 5 the member gets offset 3 holding another record (a reboot
    # lost the ring-only one and gave its offset away) and offset 1 again: one redelivery
    run = str(tmp_path)
    _synthetic(run, [(o, f"producer0.0.1:{o}") for o in range(5)], member_offs=range(5), commits=[(40, 5)])
    with open(os.path.join(run, "history", "member.0.1.jsonl"), "a") as f:
        for t, o, rid in ((41, 3, "producer1.0.2:0"), (42, 1, "producer0.0.1:1")):
            f.write(
                json.dumps(
                    {
                        "ev": "read",
                        "t": t,
                        "kind": "member",
                        "topic": "dur",
                        "boot": 0,
                        "gen": 1,
                        "gen2": 1,
                        "sess": 2,
                        "group": "g",
                        "recs": [[0, o, rid, 0, 1]],
                    }
                )
                + "\n"
            )
    bad = [v for v in checker.check(run)["violations"] if v["check"] == "redelivered"]
    assert len(bad) == 1 and "1 records delivered again" in bad[0]["msg"] and "offset 1 " in bad[0]["msg"], bad


def test_history_drops_a_torn_last_line(tmp_path):
    p = str(tmp_path / "h.jsonl")
    w = history.Writer(p)
    w.event("a", x=1)
    w.close()
    with open(p, "a") as f:
        f.write('{"ev": "b", "x"')  # the writer was killed mid-line
    assert [e["ev"] for e in history.read(p)] == ["a"]


def test_checker_finds_a_false_refusal_and_a_stall(tmp_path):
    _synthetic(str(tmp_path), [(o, f"producer0.0.1:{o}") for o in range(5)])
    with open(tmp_path / "history" / "consumer-dur.0.1.jsonl", "w") as f:
        f.write(
            json.dumps(
                {
                    "ev": "refused",
                    "t": 20,
                    "topic": "dur",
                    "boot": 0,
                    "sess": 1,
                    "msg": "'dur' partition 0: the frame at position 0 (offsets from 2) fails its CRC",
                }
            )
            + "\n"
        )
    with open(tmp_path / "history" / "producer0.0.1.jsonl", "a") as f:  # then 10 s without an ack, no fault
        f.write(
            json.dumps(
                {
                    "ev": "ack",
                    "t": 24,
                    "lvl": "ring",
                    "topic": "dur",
                    "boot": 0,
                    "gen": 1,
                    "gen2": 1,
                    "p": 0,
                    "off": 9,
                    "w": "producer0.0.1",
                    "s0": 99,
                    "n": 0,
                    "t0": 24,
                }
            )
            + "\n"
        )
    rep = checker.check(str(tmp_path))
    got = collections.Counter(v["check"] for v in rep["violations"])
    assert got == {"refused-intact": 1, "stall": 1}, rep["violations"]
