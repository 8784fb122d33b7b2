#!/usr/bin/env python3
"""Tables (Markdown) and PNG plots of issue 5's benchmark outputs.

Inputs (any subset):
  --kernels-log FILE   stdout of kernels_bench (bench/kernels_bench.cc)
  --peers-json FILE    output of bench/peers/peers_bench.py --json
  --scaling-json FILE  output(s) of hyla-context-scaling --json, or a file {"runs": [...]} that
                       merges several (scripts/device_bench.sh writes context_scaling.json so);
                       may be given several times
  --roofline-json FILE hyla-context-scaling --fixed-batch N --json (the serving stage of
                       scripts/device_bench.sh): the decode step at a fixed batch per logits mode
                       against its roofline
  --serving-json FILE  hyla-bench --json against hyla-server (the serving stage), compared with
                       the fixed-batch step of --roofline-json at the served context
Outputs, in --out DIR:
  results.md            every table, the targets of issue 5 with the measured values, the device,
                        the date and the commands recorded in the inputs
  kernels_vs_peers.png  hyla's kernels against fla / PyTorch SDPA, row by row
  context_scaling.png   per model pair (hybrid vs baseline): batch-1 decode latency per token,
                        memory per session, sessions in the budget and decode throughput at that
                        batch, against context

Plots need matplotlib (python3-matplotlib from Debian, or the device's python3); without it only
results.md is written. Nothing here measures: every figure comes from the inputs.

Usage: python3 bench/plot_results.py --out DIR [--kernels-log F] [--peers-json F]
                                     [--scaling-json F ...] [--roofline-json F]
                                     [--serving-json F] [--title TEXT]
"""

import argparse
import json
import os
import re
import sys

ROW_RE = re.compile(r"^(?P<name>\S.*?)\s+(?P<us>[0-9.]+) us\s+(?P<gbs>[0-9.]+) GB/s\s+"
                    r"(?P<pct>[0-9.]+)% of copy\s*$")
COPY_RE = re.compile(r"^copy D2D 1 GiB: (?P<us>[0-9.]+) us, (?P<gbs>[0-9.]+) GB/s")
DEVICE_RE = re.compile(r"^device: (?P<dev>.*)$")
SUFFIX_RE = re.compile(r" \([0-9.]+ (ktok/s|TFLOP/s)\)$")


def base_name(name):
    """kernels_bench appends a rate in parentheses to prefill rows; the peers do not."""
    return SUFFIX_RE.sub("", name.strip())


def parse_kernels_log(path):
    out = {"device": None, "copy_gbs": None, "rows": {}}
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            m = DEVICE_RE.match(line)
            if m and out["device"] is None:
                out["device"] = m.group("dev")
                continue
            m = COPY_RE.match(line)
            if m:
                out["copy_gbs"] = float(m.group("gbs"))
                continue
            m = ROW_RE.match(line)
            if m:
                name = m.group("name").strip()
                out["rows"][base_name(name)] = {
                    "name": name, "us": float(m.group("us")), "gbs": float(m.group("gbs")),
                    "pct_copy": float(m.group("pct")),
                }
    return out


def load_scaling(paths):
    runs = []
    for p in paths:
        with open(p) as f:
            d = json.load(f)
        runs.extend(d["runs"] if isinstance(d, dict) and "runs" in d else [d])
    return runs


def fmt(v, spec=".1f", none="—"):
    if v is None:
        return none
    try:
        return format(v, spec)
    except (TypeError, ValueError):
        return str(v)


def mib(b):
    return None if b is None else b / 1048576.0


def human_bytes(b):
    if b is None:
        return "—"
    for unit, div in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if b >= div:
            return f"{b / div:.2f} {unit}"
    return f"{b:.0f} B"


def human_count(n):
    if n is None:
        return "—"
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def ctx_label(c):
    return f"{c // 1024}K" if c % 1024 == 0 else str(c)


def measured(ctx):
    """The per-context figures of one hyla-context-scaling record (None where absent)."""
    d1 = ctx.get("decode_b1") or {}
    bud = ctx.get("budget") or {}
    mem = ctx.get("memory") or {}
    return {
        "b1_ms": (d1.get("step_ms") or {}).get("mean"),
        "b1_p50": (d1.get("step_ms") or {}).get("p50"),
        "synth_ms": ((ctx.get("decode_b1_synthetic") or {}).get("step_ms") or {}).get("mean"),
        "session_meas": mem.get("session_bytes_measured"),
        "session_acct": mem.get("session_bytes_accounting"),
        "softmax_equiv": mem.get("softmax_equivalent_bytes"),
        "max_sessions": bud.get("max_sessions"),
        "batch": bud.get("batch_run", bud.get("batch")),
        "capped": bud.get("capped"),
        "tput": bud.get("tokens_per_s"),
        "step_ms": (bud.get("step_ms") or {}).get("mean"),
        "fill": (ctx.get("fill") or {}).get("fill"),
        "fits": ctx.get("fits", True),
    }


def pairs_of(runs):
    """{pair id: {"hybrid": run, "baseline": run}}; runs without a pair are their own."""
    pairs = {}
    for r in runs:
        pid = r.get("pair") or r.get("label")
        role = r.get("role") or ("hybrid" if "hybrid" not in pairs.get(pid, {}) else "baseline")
        pairs.setdefault(pid, {})[role] = r
    return dict(sorted(pairs.items()))


def by_context(run):
    return {c["context"]: measured(c) for c in run.get("contexts", [])}


# ---------------------------------------------------------------------------------------------
# The serving stage: the fixed-batch decode step against its roofline, and hyla-bench against
# hyla-server at the same batch.

MODE_ORDER = ("sample", "last", "none")


def roofline_rows(roof):
    """[(context, mode record)] of a hyla-context-scaling run with --fixed-batch."""
    rows = []
    for c in (roof or {}).get("contexts", []):
        for m in ((c.get("fixed_batch") or {}).get("modes") or []):
            rows.append((c["context"], m))
    return rows


def fixed_batch_of(roof):
    for c in (roof or {}).get("contexts", []):
        fb = c.get("fixed_batch")
        if fb:
            return fb
    return {}


def primary_mode(roof):
    """The mode that stands for a serving step: device sampling if measured, else last, else none."""
    modes = {m["logits"] for _, m in roofline_rows(roof)}
    return next((m for m in MODE_ORDER if m in modes), None)


def roofline_table(roof):
    fb = fixed_batch_of(roof)
    lines = [f"{roof.get('label')} ({(roof.get('model') or {}).get('family')}, "
             f"{human_count((roof.get('model') or {}).get('parameters'))} parameters) on "
             f"{roof.get('device')} ({roof.get('backend')}, {roof.get('precision')}); batch "
             f"{fb.get('batch')}; copy bandwidth {fmt(fb.get('copy_gbps'))} GB/s "
             f"({fb.get('copy_method')}); {roof.get('date_utc')}",
             "",
             f"- command: `{(roof.get('options') or {}).get('command')}`",
             "",
             "Roofline = (weights read + slots read and written + KV read and written + logits "
             "written, and read again when sampled) / copy bandwidth; the logits' copy to the host "
             "is not counted (docs/performance.md).",
             "",
             "| context | logits | step ms (mean) | p50 | tok/s | weights MB | state MB | KV MB | "
             "logits MB | roofline ms | % of roofline |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c, m in roofline_rows(roof):
        st = m.get("step_ms") or {}
        b = m.get("roofline_bytes") or {}
        mode = m["logits"] + (" (device)" if m.get("sampled_on_device") else "")
        lines.append(
            f"| {ctx_label(c)} | {mode} | {fmt(st.get('mean'), '.3f')} | "
            f"{fmt(st.get('p50'), '.3f')} | {fmt(m.get('tokens_per_s'), '.0f')} | "
            f"{fmt(b.get('weights', 0) / 1e6, '.0f')} | {fmt(b.get('state', 0) / 1e6, '.0f')} | "
            f"{fmt(b.get('kv', 0) / 1e6, '.0f')} | {fmt(b.get('logits', 0) / 1e6, '.0f')} | "
            f"{fmt(m.get('roofline_ms'), '.3f')} | {fmt(100 * m['roofline_fraction'], '.1f')}% |")
    for c in roof.get("contexts", []):
        err = (c.get("fixed_batch") or {}).get("error")
        if err:
            lines.append(f"| {ctx_label(c['context'])} | error: {err} | | | | | | | | | |")
    if roof.get("error"):
        lines += ["", f"**error: {roof['error']}**"]
    lines.append("")
    return lines


def serving_context(bench):
    reqs = [r for r in (bench or {}).get("requests", []) if r.get("status") == "OK"]
    if not reqs:
        return None
    return sum(r["input_len"] + r["output_len"] / 2 for r in reqs) / len(reqs)


def serving_step(roof, bench):
    """(context, mode record) of the fixed batch closest to the served context, primary mode."""
    ctx = serving_context(bench)
    mode = primary_mode(roof)
    rows = [(c, m) for c, m in roofline_rows(roof) if m["logits"] == mode]
    if ctx is None or not rows:
        return None, None
    return min(rows, key=lambda x: abs(x[0] - ctx))


def serving_table(bench, roof):
    ok = [r for r in bench.get("requests", []) if r.get("status") == "OK"]
    ins = sorted({r["input_len"] for r in ok})
    outs = sorted({r["output_len"] for r in ok})
    lines = [f"hyla-bench against {bench.get('server')} ({bench.get('model')}): "
             f"{bench.get('mode')} loop, concurrency {bench.get('concurrency')}, "
             f"{bench.get('completed')}/{bench.get('requested')} requests completed"
             + (f", failed {bench.get('failed')}" if bench.get("failed") else "")
             + f", input {','.join(map(str, ins))} and output {','.join(map(str, outs))} tokens; "
             f"{fmt(bench.get('duration_s'), '.2f')} s, {fmt(bench.get('output_throughput'), '.0f')}"
             " output tok/s.", ""]
    lines += ["| metric | mean | p50 | p90 | p99 |", "|---|---|---|---|---|"]
    for key, name in (("ttft_ms", "TTFT ms"), ("tpot_ms", "TPOT ms"), ("itl_ms", "ITL ms"),
                      ("e2e_ms", "end-to-end ms")):
        s = bench.get(key) or {}
        lines.append(f"| {name} | {fmt(s.get('mean'), '.3f')} | {fmt(s.get('p50'), '.3f')} | "
                     f"{fmt(s.get('p90'), '.3f')} | {fmt(s.get('p99'), '.3f')} |")
    lines.append("")
    c, m = serving_step(roof, bench)
    if m:
        step = m["step_ms"]["p50"]
        step_mean = m["step_ms"]["mean"]
        itl = (bench.get("itl_ms") or {}).get("p50")
        tpot = (bench.get("tpot_ms") or {}).get("mean")
        lines.append(f"Backend step at batch {fixed_batch_of(roof).get('batch')}, context "
                     f"{ctx_label(c)} (served: {fmt(serving_context(bench), '.0f')} on average), "
                     f"logits {m['logits']}: p50 {step:.3f} ms, mean {step_mean:.3f} ms "
                     f"(hyla-context-scaling). Overhead = ITL p50 / step p50 − 1 = "
                     f"{fmt(100 * (itl / step - 1) if itl else None, '+.1f')}%; mean TPOT / mean "
                     f"step − 1 = {fmt(100 * (tpot / step_mean - 1) if tpot else None, '+.1f')}% "
                     "(the mean includes the steps that prefill the next requests).")
        lines.append("")
    return lines


# ---------------------------------------------------------------------------------------------
# Tables.

def kernels_table(kern, peers):
    lines = []
    peer_rows = {}
    if peers:
        for r in peers["rows"]:
            peer_rows.setdefault(r["name"], []).append(r)
    names = list(kern["rows"].keys()) if kern else []
    for n in peer_rows:
        if n not in names:
            names.append(n)
    if not names:
        return lines
    lines.append("| kernel (kernels_bench row) | hyla µs | hyla GB/s | hyla % copy | peer | peer µs "
                 "| peer GB/s | peer % copy | peer TFLOP/s | peer µs / hyla µs |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for n in names:
        h = kern["rows"].get(n) if kern else None
        plist = peer_rows.get(n) or [None]
        for p in plist:
            if p is not None and "error" in p:
                ptxt = [p["impl"], "failed", "", "", "", ""]
            elif p is not None:
                ratio = (p["us"] / h["us"]) if h else None
                ptxt = [p["impl"], fmt(p["us"]), fmt(p["gbs"]), fmt(p["pct_copy"]),
                        fmt(p.get("tflops")), fmt(ratio, ".2f")]
            else:
                ptxt = ["—", "—", "—", "—", "—", "—"]
            htxt = [fmt(h["us"]), fmt(h["gbs"]), fmt(h["pct_copy"])] if h else ["—"] * 3
            lines.append("| " + " | ".join([n] + htxt + ptxt) + " |")
    return lines


def scaling_tables(runs):
    lines = []
    for pid, pr in pairs_of(runs).items():
        roles = [r for r in ("hybrid", "baseline") if r in pr] + \
                [r for r in pr if r not in ("hybrid", "baseline")]
        lines.append(f"### Pair {pid}: " + " vs ".join(
            f"{pr[r]['label']} ({r})" for r in roles))
        lines.append("")
        for r in roles:
            run = pr[r]
            m = run.get("model", {})
            opts = run.get("options", {})
            lines.append(f"- **{run['label']}** ({r}): {m.get('family')}, "
                         f"{human_count(m.get('parameters'))} parameters, "
                         f"{m.get('num_layers')} layers, slot {human_bytes(m.get('slot_bytes'))}, "
                         f"KV block of 64 tokens {human_bytes(m.get('block_bytes'))}; "
                         f"{run.get('device')} ({run.get('backend')}, {run.get('precision')}); "
                         f"state budget {human_bytes(opts.get('memory_budget_bytes'))}, "
                         f"max batch {opts.get('max_batch')}; {run.get('date_utc')}"
                         + (f"; **error: {run['error']}**" if run.get("error") else ""))
            lines.append(f"  - command: `{opts.get('command')}`")
        lines.append("")
        ctxs = sorted({c for r in roles for c in by_context(pr[r])})
        head = ["context"]
        for r in roles:
            lab = pr[r]["label"]
            head += [f"{lab} b1 ms/token", f"{lab} MiB/session", f"{lab} max sessions",
                     f"{lab} batch", f"{lab} tok/s"]
        if len(roles) == 2:
            head += ["throughput ratio", "sessions ratio"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for c in ctxs:
            row = [ctx_label(c)]
            vals = []
            for r in roles:
                m = by_context(pr[r]).get(c)
                vals.append(m)
                if m is None or not m["fits"]:
                    row += ["does not fit" if m else "—"] + ["—"] * 4
                    continue
                fill = "" if m["fill"] == "prefill" else " (synthetic)"
                row += [fmt(m["b1_ms"], ".3f") + fill, fmt(mib(m["session_meas"]), ".1f"),
                        fmt(m["max_sessions"], "d"),
                        fmt(m["batch"], "d") + (" (cap)" if m["capped"] else ""),
                        fmt(m["tput"], ".0f")]
            if len(roles) == 2:
                a, b = vals
                ok = a and b and a["fits"] and b["fits"]
                row.append(fmt(a["tput"] / b["tput"], ".2f") if ok and a["tput"] and b["tput"]
                           else "—")
                row.append(fmt(a["max_sessions"] / b["max_sessions"], ".2f")
                           if ok and b["max_sessions"] else "—")
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    return lines


def targets(kern, peers, runs, roof=None, bench=None):
    """Issue 5's targets that these inputs can answer, with the measured value."""
    out = []

    def add(target, value, ok):
        status = "not measured" if ok is None else ("met" if ok else "NOT met")
        out.append(f"| {target} | {value} | {status} |")

    # The kernels as the backend runs them: rows with a "[variant]" suffix time alternatives
    # that kernels_bench compares (tables above), not what a step launches.
    kr = {n: r for n, r in (kern or {}).get("rows", {}).items() if not n.endswith("]")}
    gd = [(n, r) for n, r in kr.items() if n.startswith("gdn_decode")
          and re.search(r"\((\d+) head-states", n)
          and int(re.search(r"\((\d+) head-states", n).group(1)) >= 2048]
    if gd:
        worst = min(gd, key=lambda x: x[1]["pct_copy"])
        add("GDN decode ≥ 90% of copy bandwidth at ≥ 2048 head-states",
            f"lowest {worst[1]['pct_copy']:.1f}% ({worst[0]})", worst[1]["pct_copy"] >= 90.0)
    else:
        add("GDN decode ≥ 90% of copy bandwidth at ≥ 2048 head-states", "—", None)
    target_pf = "gdn_prefill bf16 seqs 1 x 32768 HV 32"
    h = kr.get(target_pf)
    p = next((r for r in (peers or {}).get("rows", []) if r["name"] == target_pf
              and "error" not in r), None)
    if h and p:
        add("chunked GDN prefill faster than fla chunk_gated_delta_rule at T=32K, H 16, HV 32 "
            "(aim 2.5×)", f"hyla {h['us']:.0f} µs, fla {p['us']:.0f} µs: {p['us'] / h['us']:.2f}×",
            p["us"] > h["us"])
    else:
        add("chunked GDN prefill faster than fla at T=32K (aim 2.5×)", "—", None)
    pd = [(n, r) for n, r in kr.items() if n.startswith("paged_decode") and " win " not in n
          and re.search(r"ctx (\d+)", n) and int(re.search(r"ctx (\d+)", n).group(1)) >= 16384]
    # Paged decode only reads: after a memset flush (kernels_bench up to run 3) it also wrote back
    # the ~50 MB of dirty lines the memset left in L2 (~17 µs). Where kernels_bench timed the
    # default with a clean L2 too ("<row> [clean-L2]": memset, then a read-only sweep), that row
    # is the kernel's own figure; both are printed (from run 4 on the plain rows are flushed by a
    # read-only sweep as well, so the two agree).
    allr = (kern or {}).get("rows", {})
    if pd:
        def own(item):
            clean = allr.get(item[0] + " [clean-L2]")
            return clean["pct_copy"] if clean else item[1]["pct_copy"]
        worst = min(pd, key=own)
        clean = allr.get(worst[0] + " [clean-L2]")
        detail = (f"{own(worst):.1f}% in the [clean-L2] row, {worst[1]['pct_copy']:.1f}% in "
                  f"the plain row" if clean else f"{worst[1]['pct_copy']:.1f}%")
        add("softmax decode over paged KV ≥ 80% of copy bandwidth at long context (≥ 16K)",
            f"lowest {detail} ({worst[0]})", own(worst) >= 80.0)
    else:
        add("softmax decode over paged KV ≥ 80% of copy at long context", "—", None)
    pairs = pairs_of(runs or [])
    for pid, pr in pairs.items():
        if "hybrid" not in pr or "baseline" not in pr:
            continue
        hy, ba = by_context(pr["hybrid"]), by_context(pr["baseline"])
        if pr["hybrid"].get("model", {}).get("family") == "gdn" and 32768 in hy and 32768 in ba:
            a, b = hy[32768], ba[32768]
            if a["tput"] and b["tput"]:
                add(f"at 32K the hybrid's decode throughput ≥ 5× its softmax twin's in the same "
                    f"memory (pair {pid})",
                    f"{a['tput']:.0f} vs {b['tput']:.0f} tok/s: {a['tput'] / b['tput']:.2f}×",
                    a["tput"] >= 5 * b["tput"])
        if pr["hybrid"].get("model", {}).get("family") == "nha" and 1024 in hy and 131072 in hy:
            a, b = hy[1024]["b1_ms"], hy[131072]["b1_ms"]
            if a and b:
                add("NHA's per-token latency at 128K within 15% of 1K",
                    f"{a:.3f} ms at 1K, {b:.3f} ms at 128K: {100 * (b / a - 1):+.1f}%",
                    b <= 1.15 * a)
    batch = fixed_batch_of(roof).get("batch")
    rows = roofline_rows(roof)
    mode = primary_mode(roof)
    if rows:
        prim = [(c, m) for c, m in rows if m["logits"] == mode]
        worst = min(prim, key=lambda x: x[1]["roofline_fraction"])
        parts = []
        for md in MODE_ORDER:
            fr = [m["roofline_fraction"] for _, m in rows if m["logits"] == md]
            if fr:
                parts.append(f"{md} {100 * min(fr):.1f}–{100 * max(fr):.1f}%")
        add(f"end-to-end decode step ≥ 75% of its roofline at batch {batch} "
            f"({roof.get('label')}, {human_count((roof.get('model') or {}).get('parameters'))})",
            f"lowest {100 * worst[1]['roofline_fraction']:.1f}% (logits {mode}, "
            f"{ctx_label(worst[0])}: {worst[1]['step_ms']['mean']:.3f} ms vs roofline "
            f"{worst[1]['roofline_ms']:.3f} ms); by logits mode over "
            f"{', '.join(ctx_label(c) for c in sorted({c for c, _ in rows}))}: {'; '.join(parts)}",
            worst[1]["roofline_fraction"] >= 0.75)
    else:
        add("end-to-end decode step ≥ 75% of its roofline at batch 64 for a ~1B hybrid",
            "(no --roofline-json input)", None)
    c, m = serving_step(roof, bench) if bench else (None, None)
    itl = ((bench or {}).get("itl_ms") or {}).get("p50")
    if m and itl:
        step = m["step_ms"]["p50"]
        add(f"serving overhead (gRPC + scheduling) ≤ 10% of the decode step at batch "
            f"{(bench or {}).get('concurrency')}",
            f"ITL p50 {itl:.3f} ms (hyla-bench) vs backend step p50 {step:.3f} ms (logits "
            f"{m['logits']}, {ctx_label(c)}): {100 * (itl / step - 1):+.1f}%",
            itl <= 1.10 * step)
    else:
        add("serving overhead (gRPC + scheduling) ≤ 10% of the decode step at batch 64",
            "(no --serving-json / --roofline-json input)", None)
    return ["| target | measured | status |", "|---|---|---|"] + out


# ---------------------------------------------------------------------------------------------
# Plots.

def plot_kernels(plt, kern, peers, path, title):
    peer_rows = {r["name"]: r for r in (peers or {}).get("rows", []) if "error" not in r}
    kr = (kern or {}).get("rows", {})
    bw = [n for n in list(kr) + list(peer_rows) if n.startswith(("gdn_decode", "paged_decode"))]
    bw = list(dict.fromkeys(bw))
    cp = [n for n in list(kr) + list(peer_rows) if n.startswith(("gdn_prefill", "attn_prefill"))]
    cp = list(dict.fromkeys(cp))
    fig, axes = plt.subplots(1, 2, figsize=(16, max(4, 0.45 * max(len(bw), len(cp)) + 2)))
    ax = axes[0]
    y = list(range(len(bw)))
    ax.barh([i + 0.2 for i in y], [kr[n]["pct_copy"] if n in kr else 0 for n in bw], height=0.4,
            label="hyla")
    ax.barh([i - 0.2 for i in y], [peer_rows[n]["pct_copy"] if n in peer_rows else 0 for n in bw],
            height=0.4, label="peer (fla / SDPA flash)")
    ax.set_yticks(y)
    ax.set_yticklabels(bw, fontsize=7)
    ax.invert_yaxis()
    ax.axvline(90, color="gray", ls="--", lw=0.8)
    ax.axvline(80, color="gray", ls=":", lw=0.8)
    ax.set_xlabel("% of device-to-device copy bandwidth (higher is better)")
    ax.set_title("decode (bandwidth-bound)")
    ax.legend(fontsize=8)
    ax = axes[1]
    y = list(range(len(cp)))
    ax.barh([i + 0.2 for i in y], [kr[n]["us"] / 1e3 if n in kr else 0 for n in cp], height=0.4,
            label="hyla")
    ax.barh([i - 0.2 for i in y], [peer_rows[n]["us"] / 1e3 if n in peer_rows else 0 for n in cp],
            height=0.4, label="peer (fla / SDPA flash)")
    ax.set_yticks(y)
    ax.set_yticklabels(cp, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("ms per call, log scale (lower is better)")
    ax.set_title("prefill (compute-bound)")
    ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_scaling(plt, runs, path, title):
    pairs = pairs_of(runs)
    n = max(1, len(pairs))
    fig, axes = plt.subplots(n, 4, figsize=(18, 3.8 * n), squeeze=False)
    panels = [("b1_ms", "batch-1 decode, ms per token", False),
              ("session_meas", "memory per session, MiB", True),
              ("max_sessions", "sessions in the budget", True),
              ("tput", "decode throughput at that batch, tok/s", True)]
    for row, (pid, pr) in enumerate(pairs.items()):
        for col, (key, label, logy) in enumerate(panels):
            ax = axes[row][col]
            for role, run in pr.items():
                pts = sorted((c, m) for c, m in by_context(run).items() if m["fits"])
                xs = [c for c, m in pts if m[key] is not None]
                ys = [(mib(m[key]) if key == "session_meas" else m[key]) for c, m in pts
                      if m[key] is not None]
                style = "-o" if role == "hybrid" else "--s"
                ax.plot(xs, ys, style, label=f"{run['label']} ({role})", ms=4)
                if key == "tput":
                    for c, m in pts:
                        if m["capped"] and m[key] is not None:
                            ax.annotate("cap", (c, m[key]), fontsize=6)
            ax.set_xscale("log", base=2)
            if logy:
                ax.set_yscale("log")
            xt = sorted({c for run in pr.values() for c in by_context(run)})
            ax.set_xticks(xt)
            ax.set_xticklabels([ctx_label(c) for c in xt], fontsize=7)
            ax.set_xlabel("context (tokens)")
            ax.set_title(f"pair {pid}: {label}", fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
            if col == 0:
                ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--kernels-log")
    ap.add_argument("--peers-json")
    ap.add_argument("--scaling-json", action="append", default=[])
    ap.add_argument("--roofline-json")
    ap.add_argument("--serving-json")
    ap.add_argument("--title", default="")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    kern = parse_kernels_log(args.kernels_log) if args.kernels_log and \
        os.path.exists(args.kernels_log) else None
    peers = None
    if args.peers_json and os.path.exists(args.peers_json):
        with open(args.peers_json) as f:
            peers = json.load(f)
    runs = load_scaling([p for p in args.scaling_json if os.path.exists(p)])
    roof = bench = None
    if args.roofline_json and os.path.exists(args.roofline_json):
        with open(args.roofline_json) as f:
            roof = json.load(f)
    if args.serving_json and os.path.exists(args.serving_json):
        with open(args.serving_json) as f:
            bench = json.load(f)

    device = (kern or {}).get("device") or ((peers or {}).get("meta") or {}).get("device") or \
        (runs[0].get("device") if runs else None) or (roof or {}).get("device")
    date = ((peers or {}).get("meta") or {}).get("date_utc") or \
        (runs[0].get("date_utc") if runs else None) or (roof or {}).get("date_utc")
    title = args.title or f"hyla issue 5 benchmarks — {device or 'unknown device'}, {date or ''}"

    md = [f"# {title}", ""]
    md.append("Generated by bench/plot_results.py from the raw outputs; every figure is a "
              "measurement from those files (docs/performance.md explains the methods).")
    md.append("")
    if kern or peers:
        md.append("## Kernels against their peers")
        md.append("")
        if kern:
            md.append(f"kernels_bench on {kern['device']}; copy bandwidth "
                      f"{fmt(kern['copy_gbs'])} GB/s (read + write).")
        if peers:
            m = peers["meta"]
            md.append(f"peers_bench on {m.get('device')}: torch {m.get('torch')}, triton "
                      f"{m.get('triton')}, fla {m.get('fla')}; copy bandwidth "
                      f"{fmt(m.get('copy_gbs'))} GB/s; {m.get('date_utc')}; command "
                      f"`{m.get('command')}`.")
        md.append("")
        md += kernels_table(kern, peers)
        md.append("")
    if runs:
        md.append("## Context scaling (hyla-context-scaling)")
        md.append("")
        md += scaling_tables(runs)
    if roof:
        md.append("## End-to-end decode step at a fixed batch against its roofline")
        md.append("")
        md += roofline_table(roof)
    if bench:
        md.append("## Serving overhead (hyla-bench against hyla-server)")
        md.append("")
        md += serving_table(bench, roof or {})
    md.append("## Issue 5 targets answered by these inputs")
    md.append("")
    md += targets(kern, peers, runs, roof, bench)
    md.append("")

    pngs = []
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        plt = None
        md.append("(matplotlib not available: no plots)")
    if plt is not None:
        if kern or peers:
            p = os.path.join(args.out, "kernels_vs_peers.png")
            plot_kernels(plt, kern, peers, p, title)
            pngs.append(p)
        if runs:
            p = os.path.join(args.out, "context_scaling.png")
            plot_scaling(plt, runs, p, title)
            pngs.append(p)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    for p in [os.path.join(args.out, "results.md")] + pngs:
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
