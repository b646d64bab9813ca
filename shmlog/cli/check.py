"""cli/check.py — `shmlog check`: offline verification of a data directory.

Owns: walking <data_dir>/topics, verifying every segment of every partition
(storage.check_partition: frames, holes in the segment chain, every .index
and .timeindex row), optional repair of torn tails (storage.recover_partition)
and damaged indexes, the report and a progress bar. Must never: truncate or
rewrite anything without --repair, or repair damage that intact frames follow
(storage refuses; the report names the file and position).
"""

import os

from .. import errors, storage
from . import common

EPILOG = """examples:
  shmlog check                              # the instance's data dir (--data-dir / $SHMLOG_DATA_DIR)
  shmlog check /var/lib/shmlog/default --json
  shmlog check ~/.local/state/shmlog/dev --repair   # truncate torn tails, rebuild indexes (stop the instance first)
"""


def _partitions(data_dir: str):
    """(topic, partition, path) of every partition directory; stray files are
    skipped with a warning (storage.topic_dirs / partition_dirs), never fatal."""
    for topic, _, tdir in storage.topic_dirs(data_dir):
        for part, path in storage.partition_dirs(tdir):
            yield topic, str(part), path


def check_one(path: str, repair: bool) -> dict:
    entry: dict = {"problems": [], "repaired": None}
    if repair:
        try:
            rep = storage.recover_partition(path, repair=True)
            if rep.truncated_bytes:
                entry["repaired"] = f"truncated {rep.truncated_bytes} bytes at file position {rep.truncated_at}"
        except errors.CorruptRecord as e:
            entry["problems"].append(str(e))
    problems, rebuilt = storage.check_partition(path, repair=repair)
    entry["problems"] += [p for p in problems if p not in entry["problems"]]
    if rebuilt:
        entry["repaired"] = "; ".join(([entry["repaired"]] if entry["repaired"] else []) + rebuilt)
    return entry


def cmd_check(args):
    data_dir = args.data_dir_pos or common.settings(args).data_dir
    root = os.path.join(data_dir, "topics")
    if not os.path.isdir(root):
        raise errors.InvalidArgument(f"{data_dir} has no topics/ directory: not a shmlog data dir")
    parts = list(_partitions(data_dir))
    report = []
    bar, task = common.progress(args, len(parts), "checking segments")
    with bar:
        for topic, part, path in parts:
            bar.update(task, description=f"checking {topic}[{part}]")
            report.append({"topic": topic, "partition": part, **check_one(path, args.repair)})
            bar.advance(task)
    bad = [e for e in report if e["problems"]]
    text = (
        "\n".join(
            f"{e['topic']}[{e['partition']}]: {'ok' if not e['problems'] else 'DAMAGED'}"
            + (f" ({e['repaired']})" if e["repaired"] else "")
            + "".join(f"\n  {p}" for p in e["problems"])
            for e in report
        )
        or f"{data_dir}: no partitions"
    )
    common.emit(args, {"data_dir": data_dir, "partitions": report, "ok": not bad}, text)
    if bad:
        raise SystemExit(common.EXIT_PROBLEMS_FOUND)


def register(sub, parent):
    k = sub.add_parser(
        "check",
        parents=[parent],
        help="verify a data directory offline",
        description="Verifies every segment file (framing, CRC-32C, offset continuity), "
        "the segment chain (no missing file) and every index and time-index "
        "row; exits 1 when something is damaged.",
        epilog=EPILOG,
    )
    k.add_argument("data_dir_pos", metavar="DATA_DIR", nargs="?", default=None, help="default: the instance's data dir")
    k.add_argument("--repair", action="store_true", help="truncate torn segment tails and rebuild damaged indexes")
    k.set_defaults(func=cmd_check)
