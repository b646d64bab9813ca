"""Optional bar charts (results.png) from a results dict; skipped silently when matplotlib is missing."""
import os


def plot(res, out_dir):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    panels = [("T1-msg", "value", "msgs/s"), ("T1-batch", "value", "msgs/s"),
              ("T2", "p50", "round trip p50 (µs, lower is better)"), ("T3", "value", "GB/s")]
    panels = [p for p in panels if any(s["row"] == p[0] and s["ok"] for s in res["summary"])]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
    for ax, (row, key, unit) in zip(axes[0], panels):
        rows = [s for s in res["summary"] if s["row"] == row and s["ok"]]
        med = [s[key]["median"] for s in rows]
        err = [[m - s[key]["min"] for m, s in zip(med, rows)], [s[key]["max"] - m for m, s in zip(med, rows)]]
        ax.bar(range(len(rows)), med, yerr=err, capsize=3,
               color=["tab:red" if s["peer"] == "shmlog" else "tab:gray" for s in rows])
        ax.set_xticks(range(len(rows)), [f"{s['peer']}\n{s['mode']}" for s in rows], fontsize=7, rotation=45)
        ax.set_title(row)
        ax.set_ylabel(unit)
    fig.tight_layout()
    path = os.path.join(out_dir, "results.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
