#!/usr/bin/python3
"""Chart of a pgbench_compare.py result (its --json output): one column of panels per
pgbench mode; rows: median TPS (whiskers: min..max over rounds), pooler CPU microseconds
per transaction, and p99 latency (median over rounds) when the run logged latencies.
Grouped bars: x = pgbench clients, one bar per target.

    /usr/bin/python3 bench/plot_bench.py result.json chart.png

pgbench_compare.py --png FILE calls plot() directly. Matplotlib's Agg backend: no display.
"""
from __future__ import annotations

import json
import sys
import textwrap
from typing import Any, Dict, List

COLORS = {"direct": "#7f7f7f", "sluice": "#1f77b4", "pgbouncer": "#ff7f0e",
          "baseline": "#2ca02c", "sluice+limiter": "#9467bd"}
MODE_ORDER = ["simple", "extended", "prepared"]


def cells_of(result: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The matrix cells, or the single cell of a run without --matrix."""
    if "cells" in result:
        return result["cells"]
    st = result.get("settings", {})
    return [{"mode": st.get("mode"), "clients": st.get("clients"),
             "targets": list(result.get("summary", {})), "summary": result.get("summary", {}),
             "ratios": result.get("ratios", {})}]


def plot(result: Dict[str, Any], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = cells_of(result)
    modes = sorted({c["mode"] for c in cells},
                   key=lambda m: MODE_ORDER.index(m) if m in MODE_ORDER else 99)
    targets: List[str] = []
    for c in cells:
        targets += [t for t in c["summary"] if t not in targets]
    has_lat = any(s.get("lat_p99_ms_median") is not None
                  for c in cells for s in c["summary"].values())
    rows = [("tps_median", "median TPS (higher is better)"),
            ("cpu_us_per_xact_median", "pooler CPU µs / transaction (lower is better)")]
    if has_lat:
        rows.append(("lat_p99_ms_median", "p99 latency, ms (lower is better)"))

    width_in = max(11.0, 4.6 * len(modes) + 0.8)
    fig, axes = plt.subplots(len(rows), len(modes), figsize=(width_in, 3.3 * len(rows) + 0.9),
                             squeeze=False)
    for j, mode in enumerate(modes):
        mc = sorted((c for c in cells if c["mode"] == mode), key=lambda c: c["clients"])
        xs = list(range(len(mc)))
        for i, (key, label) in enumerate(rows):
            ax = axes[i][j]
            # the targets run in this mode (PgBouncer 1.18 skips -M prepared); direct has
            # no pooler CPU
            shown = [t for t in targets if any(t in c["summary"] for c in mc)
                     and not (key == "cpu_us_per_xact_median" and t == "direct")]
            width = 0.8 / max(1, len(shown))
            top = 0.0
            for k, t in enumerate(shown):
                off = (k - (len(shown) - 1) / 2) * width
                for x, c in zip(xs, mc):
                    s = c["summary"].get(t)
                    v = s.get(key) if s else None
                    if v is None:
                        ax.text(x + off, 0, f"{t}: n/a", ha="center", va="bottom",
                                fontsize=7, rotation=90, color=COLORS.get(t, "k"))
                        continue
                    err = None
                    if key == "tps_median" and s.get("tps_min") is not None:
                        err = [[v - s["tps_min"]], [s["tps_max"] - v]]
                        top = max(top, s["tps_max"])
                    top = max(top, v)
                    ax.bar(x + off, v, width, color=COLORS.get(t, None), yerr=err,
                           capsize=2, error_kw={"elinewidth": 0.8},
                           label=t if x == xs[0] else None)
                    txt = f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"
                    ty = s["tps_max"] if err else v  # above the whisker
                    ax.text(x + off, ty, txt, ha="center", va="bottom", fontsize=6)
            ax.set_xticks(xs)
            ax.set_xticklabels([str(c["clients"]) for c in mc])
            ax.set_ylim(0, top * 1.15 if top else 1)
            ax.grid(axis="y", alpha=0.3)
            if i == 0:
                ax.set_title(f"-M {mode}")
            if i == len(rows) - 1:
                ax.set_xlabel("pgbench clients (-c)")
            if j == 0:
                ax.set_ylabel(label, fontsize=8)
    handles, labels = [], []
    for ax in axes.flat:
        for h, l in zip(*ax.get_legend_handles_labels()):
            if l not in labels:
                handles.append(h)
                labels.append(l)
    fig.legend(handles, labels, loc="upper right", ncol=len(labels), fontsize=8,
               bbox_to_anchor=(0.995, 0.995))

    st = result.get("settings", {})
    pin = result.get("pinning")
    script = st.get("script_file") or st.get("builtin", "select-only")
    sub = (f"pgbench -b {script} -j {st.get('threads')}, scale {st.get('scale')}, pool size "
           f"{st.get('pool_size')}, sluice workers {result.get('sluice_workers', '?')}"
           + (", TLS" if st.get("tls") else "")
           + (", auth_file: PostgreSQL's SCRAM verifier" if st.get("auth_secret") == "verifier"
              else ", auth_file: plaintext password")
           + (f"; pooler pinned to CPU {pin['pooler_cpus']}, the rest on {pin['other_cpus']}"
              if pin else "; no pinning")
           + "\nn/a = no successful run in that cell (see the notes); a target absent from a "
             "mode's panels was not run in that mode (PgBouncer 1.18: no -M prepared)")
    wrap = int(width_in * 13)  # characters per title line at fontsize 9
    sub = "\n".join(textwrap.fill(part, wrap) for part in sub.split("\n"))
    fig.suptitle(f"Sluice vs PgBouncer vs direct — {str(result.get('started', ''))[:16]} — "
                 f"{result.get('cpus')} cores ({result.get('host', '')}) — "
                 f"{st.get('rounds')} rounds x {st.get('seconds')} s, medians\n{sub}",
                 fontsize=9, x=0.01, ha="left")
    fig.tight_layout()  # leaves room for the suptitle (matplotlib >= 3.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    with open(sys.argv[1]) as f:
        plot(json.load(f), sys.argv[2])
    print(f"chart written to {sys.argv[2]}")
