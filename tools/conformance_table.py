#!/usr/bin/env python3
"""tools/conformance_table.py — the README's Kafka client x feature table, from a test run.

Owns: running the tests marked `conformance(client=..., feature=...)` (tests/
conftest.py writes their outcomes per cell to $SHMLOG_CONFORMANCE_OUT), and
rendering the outcomes as a markdown table with the date, the machine and
each client's version; --write puts it in README.md between the
`<!-- conformance-table:begin -->` and `<!-- conformance-table:end -->` lines.
Must never: write a cell no test decided (no test is "—", never "pass"), or
change the README outside those two lines.

    python tools/conformance_table.py            # run, print the table
    python tools/conformance_table.py --write    # run, put it in README.md
    python tools/conformance_table.py --from results.json   # render a saved run
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIENTS = ("kcat", "confluent-kafka", "kafka-python", "aiokafka", "sarama")
FEATURES = (
    "produce/consume",
    "groups eager",
    "groups cooperative",
    "groups static",
    "commits",
    "admin",
    "configs",
    "codecs",
    "transactions",
)
BEGIN, END = "<!-- conformance-table:begin -->", "<!-- conformance-table:end -->"


def cell(results: list[dict]) -> str:
    """One cell: pass with the number of tests, FAIL with how many of them failed, skip, or — (no test)."""
    if not results:
        return "—"
    failed = sum(r["outcome"] == "failed" for r in results)
    passed = sum(r["outcome"] == "passed" for r in results)
    if failed:
        return f"**FAIL** ({failed} of {len(results)})"
    if passed:
        return f"pass ({passed})"
    return "skip"


def versions() -> dict[str, str]:
    out = {}
    for name, mod, attr in (
        ("confluent-kafka", "confluent_kafka", None),
        ("kafka-python", "kafka", "__version__"),
        ("aiokafka", "aiokafka", "__version__"),
    ):
        try:
            m = __import__(mod)
            if attr is None:  # confluent_kafka.version() is a str, libversion() a (str, int)
                out[name] = f"{m.version()} (librdkafka {m.libversion()[0]})"
            else:
                out[name] = getattr(m, attr)
        except ImportError:
            out[name] = "not installed"
    for name, cmd in (
        ("kcat", ["dpkg-query", "-W", "-f=${Version}", "kcat"]),
        ("sarama", ["dpkg-query", "-W", "-f=${Version}", "golang-github-shopify-sarama-dev"]),
    ):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            out[name] = f"{r.stdout.strip()} (Debian)" if r.returncode == 0 and r.stdout.strip() else "not installed"
        except (OSError, subprocess.TimeoutExpired):
            out[name] = "not installed"
    return out


def render(results: dict, when: str, machine: str, vers: dict[str, str]) -> str:
    """results: {"client|feature": [{"test", "outcome"}]} as tests/conftest.py writes it."""
    unknown = sorted({k for k in results if k.split("|", 1)[0] not in CLIENTS or k.split("|", 1)[1] not in FEATURES})
    if unknown:
        raise SystemExit(f"conformance markers name cells the table does not have: {unknown}")
    lines = [
        f"Run {when} on {machine}: `python tools/conformance_table.py --write` "
        "(the tests marked `conformance`; each cell counts its tests).",
        "",
        "| client | " + " | ".join(FEATURES) + " |",
        "|---|" + "---|" * len(FEATURES),
    ]
    for c in CLIENTS:
        cells = [cell(results.get(f"{c}|{f}", [])) for f in FEATURES]
        lines.append(f"| {c} {vers.get(c, '')} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "pass (n): n tests passed; **FAIL** (k of n): k failed; skip: the client is not installed here; —: no test.",
    ]
    return "\n".join(lines)


def write_readme(table: str, path: str = os.path.join(ROOT, "README.md")) -> None:
    with open(path) as f:
        text = f.read()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{path} has no {BEGIN} ... {END} block")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    with open(path, "w") as f:
        f.write(f"{head}{BEGIN}\n{table}\n{END}{tail}")


def run_tests() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "conformance.json")
        env = {**os.environ, "SHMLOG_CONFORMANCE_OUT": out}
        cmd = [sys.executable, "-m", "pytest", "-q", "-n", "auto", "-m", "conformance", "tests/kafka"]
        subprocess.run(cmd, cwd=ROOT, env=env, check=False)
        with open(out) as f:
            return json.load(f)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true", help="put the table in README.md")
    ap.add_argument("--from", dest="source", help="render a saved $SHMLOG_CONFORMANCE_OUT file instead of running")
    args = ap.parse_args(argv)
    if args.source:
        with open(args.source) as f:
            results = json.load(f)
    else:
        results = run_tests()
    when = datetime.date.today().isoformat()
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Linux {platform.release()}"
    table = render(results, when, machine, versions())
    print(table)
    if args.write:
        write_readme(table)
    failed = any(r["outcome"] == "failed" for rs in results.values() for r in rs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
