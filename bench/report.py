"""`dr-lb bench`'s output: the terminal table and the plot, from the result dict that
bench/measure.py returns (the same dict `--json` writes)."""
from __future__ import annotations


def _n(v, fmt="{:.0f}") -> str:
    return "-" if v is None else fmt.format(v)


def _mpps(fig) -> str:
    if not fig or fig.get("median") is None:
        return "-"
    return f"{fig['median'] / 1e6:.2f} ({fig['best'] / 1e6:.2f})"


def _ns(fig) -> str:
    if not fig or fig.get("median") is None:
        return "-"
    return f"{fig['median']:.0f} ({fig['best']:.0f})"


def _ratio(a, b) -> str:
    if not a or not b or a.get("median") in (None, 0) or b.get("median") in (None, 0):
        return "-"
    return f"{a['median'] / b['median']:.2f}x"


def table(result: dict) -> str:
    s = result["settings"]
    m = result["machine"]
    pin = f", pinned to CPU {m['pinned_cpu']}" if m.get("pinned_cpu") is not None else ""
    out = [f"dr-lb bench, {result['date']}, {m['host']} ({m['cpu']}, {m['cpus']} CPUs, "
           f"Linux {m['kernel']}{pin}); median (best) of {s['rounds']} rounds, programs "
           "alternated within each round", ""]
    out.append(f"test-run, reset method, ns/packet (repeat {s['repeat']:,}, 64 B frames):")
    rows = result["test_run"]
    refl = next((r["ns"] for r in rows if r["program"] == "reflector"), None)
    out.append(f"  {'case':<34}{'ns':>14}{'x reflector':>13}  path")
    for r in rows:
        name = f"{r['program']} {r['case']}"
        if r["flows"] is not None and r["program"] == "dr-lb" and r["case"] == "established":
            name += f", {r['flows']:,} flow" + ("s" if r["flows"] != 1 else "")
        path = r.get("path")
        ok = "" if not path else ("ok" if path["ok"] else
                                  f"WRONG PATH: {path['count']:,} of {path['of']:,} "
                                  f"{path['expect']} {path.get('counters', '')}")
        ratio = _ratio(r["ns"], refl) if r["program"] != "reflector" else ""
        out.append(f"  {name:<34}{_ns(r['ns']):>14}{ratio:>13}  {ok}")
    out.append("")
    out.append("live frames through the director's veth: Mpps at the sink, and the "
               "director program's in-situ ns/packet (bpf stats):")
    head = (f"  {'mode':<8}{'size':>6}{'flows':>11}{'kernel Mpps':>14}{'refl Mpps':>14}"
            f"{'dr-lb Mpps':>14}{'pps ratio':>10}{'refl ns':>11}{'dr-lb ns':>11}"
            f"{'ns ratio':>10}")
    out.append(head)
    live = result["live"]
    keys = []
    for r in live:
        k = (r["mode"], r["size"], r["flows"])
        if k not in keys:
            keys.append(k)
    for mode, size, flows in keys:
        by = {r["program"]: r for r in live
              if (r["mode"], r["size"], r["flows"]) == (mode, size, flows)}
        k, rf, d = by.get("kernel", {}), by.get("reflector", {}), by.get("dr-lb", {})
        bad = "" if d.get("path", {}).get("ok", True) else "  WRONG PATH"
        out.append(f"  {mode:<8}{size:>6}{flows:>11,}{_mpps(k.get('pps')):>14}"
                   f"{_mpps(rf.get('pps')):>14}{_mpps(d.get('pps')):>14}"
                   f"{_ratio(d.get('pps'), rf.get('pps')):>10}"
                   f"{_ns(rf.get('ns_in_situ')):>11}{_ns(d.get('ns_in_situ')):>11}"
                   f"{_ratio(d.get('ns_in_situ'), rf.get('ns_in_situ')):>10}{bad}")
    nc = result.get("new_connections", {}).get("live", [])
    if nc:
        out.append("")
        out.append("new connections, every SYN new (live, 64 B, bpf stats on): "
                   "SYNs/s at the sink, in-situ ns/SYN")
        for mode in dict.fromkeys(r["mode"] for r in nc):
            by = {r["program"]: r for r in nc if r["mode"] == mode}
            parts = []
            for p in ("kernel", "reflector", "dr-lb"):
                r = by.get(p)
                if r:
                    fig = r["syns_per_s"]
                    ns = f", {_ns(r['ns_in_situ'])} ns" if r.get("ns_in_situ") else ""
                    parts.append(f"{p} {_n(fig['median'] and fig['median'] / 1e6, '{:.2f}')}"
                                 f" M/s{ns}")
            bad = "" if by.get("dr-lb", {}).get("path", {}).get("ok", True) else \
                "  WRONG PATH"
            out.append(f"  {mode:<8}" + "; ".join(parts) + bad)
    st = result.get("status")
    if st:
        out.append("")
        out.append(f"dr-lb status with {st['entries']:,} connections: answers in "
                   f"{st['status_s']} s; the background count takes {st['sweep_s']} s")
    out.append("")
    out.append(f"({result['elapsed_s']} s)")
    return "\n".join(out)


def plot(result: dict, path: str) -> None:
    """ns/packet and pps against flows: dr-lb, the reflector and the kernel (median,
    the bar from best to median), one line per mode at the smallest frame size."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    live = result["live"]
    size = min(r["size"] for r in live)
    modes = list(dict.fromkeys(r["mode"] for r in live))
    fig, (ax_ns, ax_pps) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = {"dr-lb": "tab:blue", "reflector": "tab:green", "kernel": "tab:red"}
    styles = {"native": "-", "generic": "--"}
    for mode in modes:
        for prog in ("dr-lb", "reflector", "kernel"):
            rows = sorted((r for r in live if r["mode"] == mode and r["size"] == size
                           and r["program"] == prog), key=lambda r: r["flows"])
            if not rows:
                continue
            xs = [r["flows"] for r in rows]
            label = prog if prog == "kernel" else f"{prog} ({mode})"
            if prog == "kernel" and mode != modes[0]:
                continue
            pps = [r["pps"]["median"] / 1e6 for r in rows]
            ax_pps.plot(xs, pps, styles.get(mode, "-"), marker="o", color=colors[prog],
                        label=label)
            if prog != "kernel":
                ns = [r["ns_in_situ"]["median"] for r in rows]
                ax_ns.plot(xs, ns, styles.get(mode, "-"), marker="o", color=colors[prog],
                           label=label)
    for ax in (ax_ns, ax_pps):
        ax.set_xscale("log")
        ax.set_xlabel("flows")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    ax_ns.set_ylabel("ns/packet in situ (bpf stats)")
    ax_ns.set_ylim(bottom=0)
    ax_pps.set_ylabel("Mpps returned (median)")
    ax_pps.set_ylim(bottom=0)
    m = result["machine"]
    fig.suptitle(f"dr-lb bench, {size} B frames, {result['date'][:10]}, {m['host']}: "
                 f"{m['cpu']} x{m['cpus']}, Linux {m['kernel']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
