"""PNG plots from a results dict (matplotlib, the optional `bench` extra): results.png (throughput and
p50 bars with min-max whiskers), latency.png (T2 round-trip percentile curves), scaling.png (record
size, partitions, consumers in a group). Returns the file names written; [] without matplotlib."""

import os

import numpy as np

from .workloads import PERCENTILES

BARS = [
    ("T1-msg", "value", "msgs/s"),
    ("T1-batch", "value", "msgs/s"),
    ("T2-spin", "p50", "round trip p50 µs (lower is better)"),
    ("T2-block", "p50", "round trip p50 µs (lower is better)"),
    ("T3", "value", "GB/s"),
    ("T4", "value", "records/s to all 4"),
]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _bars(plt, res, out_dir):
    panels = [p for p in BARS if any(s["row"] == p[0] and s["ok"] for s in res["summary"])]
    if not panels:
        return None
    cols = 3
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 4.2 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, (row, key, unit) in zip(axes.flat, panels):
        rs = [s for s in res["summary"] if s["row"] == row and s["ok"]]
        med = [s[key]["median"] for s in rs]
        err = [[m - s[key]["min"] for m, s in zip(med, rs)], [s[key]["max"] - m for m, s in zip(med, rs)]]
        ax.bar(
            range(len(rs)),
            med,
            yerr=err,
            capsize=3,
            color=["tab:red" if s["peer"] == "shmlog" else "tab:gray" for s in rs],
        )
        ax.set_xticks(range(len(rs)), [f"{s['peer']}\n{s['mode']}" for s in rs], fontsize=7, rotation=45)
        ax.set_title(row)
        ax.set_ylabel(unit)
        if key == "p50" or row == "T1-msg":
            ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "results.png"), dpi=100)
    plt.close(fig)
    return "results.png"


def _latency(plt, res, out_dir):
    rows = [r for r in ("T2-spin", "T2-block") if any(s["row"] == r and s["ok"] for s in res["summary"])]
    if not rows:
        return None
    pct = np.array(PERCENTILES[:-1], float)  # the max is not a percentile on this axis
    x = -np.log10(1 - pct / 100.0)  # 50 % -> 0.3, 99 % -> 2, 99.99 % -> 4
    fig, axes = plt.subplots(1, len(rows), figsize=(7 * len(rows), 4.5), squeeze=False)
    for ax, row in zip(axes[0], rows):
        for s in (s for s in res["summary"] if s["row"] == row and s["ok"]):
            ax.plot(
                x,
                s["curve"][:-1],
                marker=".",
                label=f"{s['peer']} {s['mode']}",
                linewidth=2.5 if s["peer"] == "shmlog" else 1.2,
            )
        ticks = [0, 50, 90, 99, 99.9, 99.99]
        ax.set_xticks([-np.log10(1 - t / 100) for t in ticks], [f"{t}%" for t in ticks])
        ax.set_yscale("log")
        ax.set_xlabel("percentile")
        ax.set_ylabel("round trip µs (median of repetitions)")
        ax.set_title(f"{row}: 64 B ping-pong")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "latency.png"), dpi=100)
    plt.close(fig)
    return "latency.png"


def _scaling(plt, res, out_dir):
    cv = res.get("curves", {})
    size, parts = cv.get("size") or [], cv.get("partitions") or []
    members = (cv.get("groups") or {}).get("members") or []
    panels = [p for p, have in (("size", size), ("partitions", parts), ("members", members)) if have]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        if panel == "size":
            for peer in dict.fromkeys(p["peer"] for p in size):
                pts = sorted((p for p in size if p["peer"] == peer and p["ok"]), key=lambda p: p["size"])
                ax.plot(
                    [p["size"] for p in pts],
                    [p["bytes_per_s"]["median"] / 1e6 for p in pts],
                    marker="o",
                    label=peer,
                    linewidth=2.5 if peer == "shmlog" else 1.2,
                )
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("record size (bytes)")
            ax.set_ylabel("MB/s of payload")
            ax.set_title("throughput vs record size")
            ax.legend(fontsize=7)
        elif panel == "partitions":
            pts = sorted((p for p in parts if p["ok"]), key=lambda p: p["partitions"])
            xs = [p["partitions"] for p in pts]
            ax.plot(xs, [p["p99_us"]["median"] for p in pts], marker="o", label="latency p99 µs")
            ax.plot(xs, [p["p50_us"]["median"] for p in pts], marker="o", label="latency p50 µs")
            ax.plot(xs, [p["cpu_us_per_record"]["median"] for p in pts], marker="s", label="consumer CPU µs/record")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("partitions")
            ax.set_title(f"fixed total rate {parts[0]['offered']:,}/s")
            ax.legend(fontsize=7)
        else:
            pts = [m for m in members if m["ok"]]
            ax.errorbar(
                [m["members"] for m in pts],
                [m["value"]["median"] for m in pts],
                yerr=[
                    [m["value"]["median"] - m["value"]["min"] for m in pts],
                    [m["value"]["max"] - m["value"]["median"] for m in pts],
                ],
                marker="o",
                capsize=3,
            )
            ax.set_xlabel("consumers in the group")
            ax.set_ylabel("records/s")
            ax.set_ylim(bottom=0)
            ax.set_title(f"group consumption ({res['machine']['cores']} cores)")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "scaling.png"), dpi=100)
    plt.close(fig)
    return "scaling.png"


def plot(res, out_dir):
    try:
        plt = _plt()
    except ImportError:
        print("plots skipped: matplotlib is not installed (pip install 'shmlog[bench]')")
        return []
    return [f for f in (_bars(plt, res, out_dir), _latency(plt, res, out_dir), _scaling(plt, res, out_dir)) if f]
