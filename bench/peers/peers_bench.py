#!/usr/bin/env python3
"""The peers of hyla's CUDA kernels, timed on the device machine at kernels_bench's shapes.

Issue 5 compares hyla's kernels (bench/kernels_bench.cc) with, in the same run on the same GPU:
  - fla's Triton kernels (the fla-core wheel, carried to the device, never committed):
    fused_recurrent_gated_delta_rule (GDN decode) and chunk_gated_delta_rule (GDN prefill);
  - PyTorch scaled_dot_product_attention with the flash backend: softmax decode (the peer of
    hyla's paged decode, over contiguous KV) and causal softmax prefill.

Method (as kernels_bench, ../.library/device/METHOD.md): random inputs (never zeros); warm-up
calls; before every timed call the L2 is flushed (a read-only sweep of 4x its size, outside the
timed region, which leaves clean lines: a fill would leave dirty ones for the timed call to write
back); each call is timed alone with CUDA events and the median of --reps calls is reported.
A sleep kernel queued before the flush keeps the GPU busy while Python queues the call, so the
figure is GPU time, not Python overhead (--cover-cycles 0 turns that off). Bytes are the fewest
the op must move, counted exactly as kernels_bench counts them; GB/s and % of the copy bandwidth
measured in the same run (1 GiB device-to-device copy, read + write). TFLOP/s uses the nominal
FLOP counts documented in docs/performance.md (causal attention: 2·T²·d per head; chunked GDN:
T·HV·(6·dk·dv + 64·(3·dk + 2·dv))).

Row names are kernels_bench's, so bench/plot_results.py pairs each peer row with hyla's row.
Semantics match hyla's kernels: GDN gates (A_log, dt_bias, softplus), q/k L2 norm and the beta
sigmoid inside the kernel, fp32 recurrent state read and written; softmax decode over all
`ctx` keys (GQA by folding a KV head's query group into the query length, exact for one query
token), a window as the last `window` keys.

Usage: python3 bench/peers/peers_bench.py [--json FILE] [--quick] [--only OPS] [--reps N]
Exit status: 0 when every row ran, 1 when some row failed (its error is in the JSON), 2 when
torch/CUDA or fla is missing.
"""

import argparse
import datetime
import json
import math
import platform
import sys
import time
import traceback

T0 = time.monotonic()


def log(msg):
    print(f"[peers +{time.monotonic() - T0:.1f}s] {msg}", file=sys.stderr, flush=True)


# The rows: kernels_bench's shapes (bench/kernels_bench.cc main()), same order, same names.
# gdn_decode: (seqs, H, HV, dk, dv, bf16); paged_decode: (seqs, ctx, Hq, Hkv, d, bf16, window);
# gdn_prefill: (seqs, len, H, HV, dk, dv, bf16); attn_prefill: (seqs, len, Hq, Hkv, d).
GDN_DECODE = [
    (128, 8, 16, 128, 128, True), (256, 8, 16, 128, 128, True), (512, 8, 16, 128, 128, True),
    (128, 8, 16, 128, 128, False), (256, 8, 16, 128, 128, False), (512, 8, 16, 128, 128, False),
    (64, 16, 32, 128, 128, True),   # Qwen3-Next shape, 2048 head-states
    (128, 4, 8, 256, 128, True),    # dk 256
]
GDN_DECODE_QUICK = [GDN_DECODE[0], GDN_DECODE[6]]
PAGED_DECODE = [
    (8, 32768, 32, 8, 128, True, 0), (1, 131072, 32, 8, 128, True, 0),
    (64, 4096, 32, 8, 128, True, 0), (8, 16384, 32, 8, 128, False, 0),
    (4, 32768, 16, 2, 256, True, 0), (16, 32768, 32, 8, 128, True, 4096),
]
PAGED_DECODE_QUICK = PAGED_DECODE[:3]
GDN_PREFILL = [
    (4, 4096, 8, 16, 128, 128, True),
    (1, 8192, 8, 16, 128, 128, False),
    (1, 32768, 16, 32, 128, 128, True),  # issue 5's prefill target: T=32K, 16 q/k, 32 v heads
]
GDN_PREFILL_QUICK = [GDN_PREFILL[2]]
ATTN_PREFILL = [
    (1, 4096, 32, 8, 128),    # Llama3-8B attention
    (1, 32768, 32, 8, 128),
    (1, 32768, 16, 2, 128),   # qwen3next-1b's softmax layers
]
ATTN_PREFILL_QUICK = [ATTN_PREFILL[1]]

GDN_CHUNK = 64


def gdn_decode_name(n, HV, dk, dv, bf16):
    return f"gdn_decode {'bf16' if bf16 else 'f32'} seqs {n} HV {HV} ({n * HV} head-states {dk}x{dv})"


def paged_decode_name(n, ctx, Hq, Hkv, d, bf16, window):
    win = f" win {window}" if window > 0 else ""
    return f"paged_decode {'bf16' if bf16 else 'f32'} seqs {n} ctx {ctx}{win} Hq {Hq} Hkv {Hkv} d {d}"


def gdn_prefill_name(n, T, HV, bf16):
    # kernels_bench appends " (N ktok/s)"; plot_results.py strips it before matching.
    return f"gdn_prefill {'bf16' if bf16 else 'f32'} seqs {n} x {T} HV {HV}"


def attn_prefill_name(n, T, Hq, Hkv, d):
    return f"attn_prefill bf16 seqs {n} x {T} Hq {Hq} Hkv {Hkv} d {d} causal"


def gdn_prefill_flops(tokens, HV, dk, dv):
    return float(tokens) * HV * (6.0 * dk * dv + GDN_CHUNK * (3.0 * dk + 2.0 * dv))


class Bench:
    def __init__(self, torch, reps, warmup, cover_cycles):
        self.torch = torch
        self.reps = reps
        self.warmup = warmup
        self.cover_cycles = cover_cycles
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        l2 = getattr(props, "L2_cache_size", 50 << 20)
        self.flush = torch.full((max(4 * l2, 64 << 20) // 4,), 0x5a, dtype=torch.int32,
                                device="cuda")
        self.copy_gbs = None
        self.rows = []
        self.failed = 0

    def median_us(self, fn, flush=True):
        torch = self.torch
        for _ in range(self.warmup):
            fn()
        torch.cuda.synchronize()
        start = torch.cuda.Event(enable_timing=True)
        stop = torch.cuda.Event(enable_timing=True)
        us = []
        for i in range(self.reps):
            if self.cover_cycles > 0:
                torch.cuda._sleep(self.cover_cycles)
            if flush:
                # A read-only sweep (as kernels_bench's Timer): L2 left with clean lines.
                self.sink = torch.amax(self.flush)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            us.append(start.elapsed_time(stop) * 1000.0)
        us.sort()
        return us[len(us) // 2], us

    def copy_bandwidth(self):
        torch = self.torch
        n = 1 << 30
        a = torch.randint(0, 255, (n,), dtype=torch.uint8, device="cuda")
        b = torch.empty_like(a)
        us, _ = self.median_us(lambda: b.copy_(a), flush=False)
        self.copy_gbs = 2.0 * n / (us * 1e3)
        log(f"copy D2D 1 GiB: {us:.1f} us, {self.copy_gbs:.1f} GB/s (read + write)")

    def report(self, impl, op, name, shape, us, all_us, nbytes, flops=None, tokens=None,
               first_call_s=None, note=None):
        gbs = nbytes / (us * 1e3)
        row = {
            "impl": impl, "op": op, "name": name, "shape": shape, "us": us,
            "us_p10": all_us[len(all_us) // 10], "us_p90": all_us[(9 * len(all_us)) // 10],
            "bytes": nbytes, "gbs": gbs, "pct_copy": 100.0 * gbs / self.copy_gbs,
            "flops": flops, "tflops": (flops / (us * 1e-6) / 1e12) if flops else None,
            "tokens_per_s": (tokens / (us * 1e-6)) if tokens else None,
            "first_call_s": first_call_s, "note": note,
        }
        self.rows.append(row)
        extra = f" {row['tflops']:7.1f} TFLOP/s" if row["tflops"] else ""
        print(f"{name:<58} {us:10.1f} us {gbs:8.1f} GB/s {row['pct_copy']:6.1f}% of copy{extra}"
              f"  [{impl}]", flush=True)

    def fail(self, impl, op, name, err):
        self.failed += 1
        self.rows.append({"impl": impl, "op": op, "name": name, "error": err})
        log(f"FAILED {name} [{impl}]: {err}")


def first_call(torch, fn):
    t = time.monotonic()
    fn()
    torch.cuda.synchronize()
    return time.monotonic() - t


def gdn_gates(torch, HV):
    a_log = torch.log(torch.empty(HV, device="cuda").uniform_(1.0, 16.0))
    dt = torch.exp(torch.empty(HV, device="cuda").uniform_(math.log(1e-3), math.log(0.1)))
    dt_bias = dt + torch.log(-torch.expm1(-dt))
    return a_log.float(), dt_bias.float()


def bench_gdn_decode(b, torch, fla_ops, n, H, HV, dk, dv, bf16):
    name = gdn_decode_name(n, HV, dk, dv, bf16)
    dt = torch.bfloat16 if bf16 else torch.float32
    es = 2 if bf16 else 4
    q = torch.randn(n, 1, H, dk, device="cuda", dtype=dt)
    k = torch.randn(n, 1, H, dk, device="cuda", dtype=dt)
    v = torch.randn(n, 1, HV, dv, device="cuda", dtype=dt)
    a = torch.randn(n, 1, HV, device="cuda", dtype=dt)
    beta = torch.randn(n, 1, HV, device="cuda", dtype=dt)
    h0 = 0.5 * torch.randn(n, HV, dk, dv, device="cuda", dtype=torch.float32)
    a_log, dt_bias = gdn_gates(torch, HV)

    def fn():
        return fla_ops.fused_recurrent_gated_delta_rule(
            q, k, v, g=a, beta=beta, scale=dk ** -0.5, initial_state=h0, output_final_state=True,
            use_qk_l2norm_in_kernel=True, use_gate_in_kernel=True, A_log=a_log, dt_bias=dt_bias,
            use_beta_sigmoid_in_kernel=True)

    fc = first_call(torch, fn)
    us, all_us = b.median_us(fn)
    row = 2 * H * dk + HV * dv + 2 * HV
    state = HV * dk * dv
    nbytes = 2.0 * n * state * 4 + n * row * es + n * HV * dv * es
    b.report("fla", "gdn_decode", name,
             {"seqs": n, "H": H, "HV": HV, "dk": dk, "dv": dv, "dtype": "bf16" if bf16 else "f32"},
             us, all_us, nbytes, first_call_s=fc,
             note="fused_recurrent_gated_delta_rule; state in a new final-state tensor")


def bench_gdn_prefill(b, torch, fla_ops, n, T, H, HV, dk, dv, bf16):
    name = gdn_prefill_name(n, T, HV, bf16)
    dt = torch.bfloat16 if bf16 else torch.float32
    es = 2 if bf16 else 4
    q = torch.randn(n, T, H, dk, device="cuda", dtype=dt)
    k = torch.randn(n, T, H, dk, device="cuda", dtype=dt)
    v = torch.randn(n, T, HV, dv, device="cuda", dtype=dt)
    a = torch.randn(n, T, HV, device="cuda", dtype=dt)
    beta = torch.randn(n, T, HV, device="cuda", dtype=dt)
    h0 = 0.5 * torch.randn(n, HV, dk, dv, device="cuda", dtype=torch.float32)
    a_log, dt_bias = gdn_gates(torch, HV)

    def fn():
        return fla_ops.chunk_gated_delta_rule(
            q, k, v, a, beta, scale=dk ** -0.5, initial_state=h0, output_final_state=True,
            use_qk_l2norm_in_kernel=True, use_gate_in_kernel=True, A_log=a_log, dt_bias=dt_bias,
            use_beta_sigmoid_in_kernel=True)

    fc = first_call(torch, fn)  # Triton compiles and autotunes here
    us, all_us = b.median_us(fn)
    rows_total = n * T
    row = 2 * H * dk + HV * dv + 2 * HV
    nbytes = rows_total * row * es + rows_total * HV * dv * es + 2.0 * n * HV * dk * dv * 4
    b.report("fla", "gdn_prefill", name,
             {"seqs": n, "len": T, "H": H, "HV": HV, "dk": dk, "dv": dv,
              "dtype": "bf16" if bf16 else "f32"},
             us, all_us, nbytes, flops=gdn_prefill_flops(rows_total, HV, dk, dv),
             tokens=rows_total, first_call_s=fc, note="chunk_gated_delta_rule (batch form)")


def sdpa_call(torch, backend):
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    be = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION}[backend]

    def call(q, k, v, **kw):
        with sdpa_kernel([be]):
            return F.scaled_dot_product_attention(q, k, v, **kw)
    return call


def bench_paged_decode(b, torch, n, ctx, Hq, Hkv, d, bf16, window):
    name = paged_decode_name(n, ctx, Hq, Hkv, d, bf16, window)
    dt = torch.bfloat16 if bf16 else torch.float32
    es = 2 if bf16 else 4
    backend = "flash" if bf16 else "efficient"  # the flash kernels take 16-bit inputs only
    g = Hq // Hkv
    # One query token per sequence; a KV head's G query heads become G query rows (exact for
    # decode: every row sees every visible key).
    q = torch.randn(n, Hkv, g, d, device="cuda", dtype=dt)
    kv = torch.randn(2, n, Hkv, ctx, d, device="cuda", dtype=dt)
    visible = min(window, ctx) if window > 0 else ctx
    k = kv[0, :, :, ctx - visible:, :]
    v = kv[1, :, :, ctx - visible:, :]
    call = sdpa_call(torch, backend)

    def fn():
        return call(q, k, v, is_causal=False, scale=d ** -0.5)

    fc = first_call(torch, fn)
    us, all_us = b.median_us(fn)
    nbytes = float(n) * visible * Hkv * 2 * d * es + 2.0 * n * Hq * d * es
    b.report(f"torch-sdpa-{backend}", "paged_decode", name,
             {"seqs": n, "ctx": ctx, "Hq": Hq, "Hkv": Hkv, "d": d, "window": window,
              "dtype": "bf16" if bf16 else "f32"},
             us, all_us, nbytes, first_call_s=fc,
             note="contiguous KV [B, Hkv, ctx, d] (no block table); GQA group folded into the "
                  "query length")


def bench_attn_prefill(b, torch, n, T, Hq, Hkv, d):
    name = attn_prefill_name(n, T, Hq, Hkv, d)
    dt = torch.bfloat16
    q = torch.randn(n, Hq, T, d, device="cuda", dtype=dt)
    k = torch.randn(n, Hkv, T, d, device="cuda", dtype=dt)
    v = torch.randn(n, Hkv, T, d, device="cuda", dtype=dt)
    call = sdpa_call(torch, "flash")
    note = "flash, enable_gqa"
    try:
        call(q, k, v, is_causal=True, scale=d ** -0.5, enable_gqa=True)
        torch.cuda.synchronize()

        def fn():
            return call(q, k, v, is_causal=True, scale=d ** -0.5, enable_gqa=True)
    except Exception as e:  # older torch or no GQA in the flash backend: expand K/V once
        log(f"{name}: flash with enable_gqa failed ({e}); expanding K/V to {Hq} heads")
        k = k.repeat_interleave(Hq // Hkv, dim=1)
        v = v.repeat_interleave(Hq // Hkv, dim=1)
        note = "flash, K/V expanded to Hq heads (reads Hq/Hkv times the KV bytes)"

        def fn():
            return call(q, k, v, is_causal=True, scale=d ** -0.5)

    fc = first_call(torch, fn)
    us, all_us = b.median_us(fn)
    nbytes = 2.0 * n * T * Hq * d * 2 + 2.0 * n * T * Hkv * d * 2  # q, out, k, v once
    flops = 2.0 * n * Hq * float(T) * T * d  # causal: half of 4·T²·d per head
    b.report("torch-sdpa-flash", "attn_prefill", name,
             {"seqs": n, "len": T, "Hq": Hq, "Hkv": Hkv, "d": d, "dtype": "bf16"},
             us, all_us, nbytes, flops=flops, tokens=n * T, first_call_s=fc, note=note)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="write the rows and the run's facts as JSON")
    ap.add_argument("--quick", action="store_true", help="only issue 5's target shapes")
    ap.add_argument("--only", default="gdn_decode,gdn_prefill,paged_decode,attn_prefill",
                    help="comma-separated ops to run")
    ap.add_argument("--no-f32-prefill", action="store_true",
                    help="skip the fp32 GDN prefill row (its Triton autotuning takes a while)")
    ap.add_argument("--gdn-prefill", choices=["all", "target"], default="all",
                    help="GDN prefill rows: all of kernels_bench's, or only issue 5's target "
                         "(T=32K, H 16, HV 32); each new shape costs fla a Triton autotuning "
                         "of about a minute")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--cover-cycles", type=int, default=2_000_000,
                    help="GPU sleep queued before each timed call to hide Python overhead")
    args = ap.parse_args()
    ops = set(args.only.split(","))

    try:
        import torch
    except ImportError as e:
        print(f"peers_bench: no torch ({e})", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("peers_bench: no CUDA device", file=sys.stderr)
        return 2
    fla_ops = None
    fla_version = None
    if ops & {"gdn_decode", "gdn_prefill"}:
        try:
            import fla
            import fla.ops.gated_delta_rule as fla_ops
            fla_version = getattr(fla, "__version__", "?")
        except Exception as e:  # noqa: BLE001 - report any import failure
            print(f"peers_bench: cannot import fla ({e}); install the fla-core wheel "
                  "(scripts/device_bench.sh does)", file=sys.stderr)
            return 2
    import triton

    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    meta = {
        "tool": "peers_bench", "schema": 1,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "host": platform.node(), "device": props.name, "sms": props.multi_processor_count,
        "l2_bytes": getattr(props, "L2_cache_size", None), "memory_bytes": props.total_memory,
        "torch": torch.__version__, "torch_cuda": torch.version.cuda, "triton": triton.__version__,
        "fla": fla_version, "python": platform.python_version(), "reps": args.reps,
        "warmup": args.warmup, "cover_cycles": args.cover_cycles, "command": " ".join(sys.argv),
    }
    log(f"device {props.name}, torch {torch.__version__}, triton {triton.__version__}, "
        f"fla {fla_version}")
    torch.manual_seed(0)
    b = Bench(torch, args.reps, args.warmup, args.cover_cycles)
    b.copy_bandwidth()
    meta["copy_gbs"] = b.copy_gbs

    plan = []
    if "gdn_decode" in ops:
        for s in (GDN_DECODE_QUICK if args.quick else GDN_DECODE):
            plan.append(("fla", "gdn_decode", gdn_decode_name(s[0], s[2], s[3], s[4], s[5]),
                         lambda s=s: bench_gdn_decode(b, torch, fla_ops, *s)))
    if "paged_decode" in ops:
        for s in (PAGED_DECODE_QUICK if args.quick else PAGED_DECODE):
            plan.append(("torch-sdpa", "paged_decode", paged_decode_name(*s),
                         lambda s=s: bench_paged_decode(b, torch, *s)))
    if "gdn_prefill" in ops:
        for s in (GDN_PREFILL_QUICK if args.quick or args.gdn_prefill == "target"
                  else GDN_PREFILL):
            if args.no_f32_prefill and not s[6]:
                continue
            plan.append(("fla", "gdn_prefill", gdn_prefill_name(s[0], s[1], s[3], s[6]),
                         lambda s=s: bench_gdn_prefill(b, torch, fla_ops, *s)))
    if "attn_prefill" in ops:
        for s in (ATTN_PREFILL_QUICK if args.quick else ATTN_PREFILL):
            plan.append(("torch-sdpa", "attn_prefill", attn_prefill_name(*s),
                         lambda s=s: bench_attn_prefill(b, torch, *s)))

    with torch.inference_mode():
        for impl, op, name, run in plan:
            log(f"{name} [{impl}]")
            try:
                run()
            except Exception as e:  # noqa: BLE001 - one failed row must not stop the rest
                b.fail(impl, op, name, f"{type(e).__name__}: {e}")
                traceback.print_exc(file=sys.stderr)
            torch.cuda.empty_cache()

    print(f"\n{'kernel':<58} {'us':>10} {'GB/s':>10} {'% copy':>8} {'TFLOP/s':>8}  impl")
    for r in b.rows:
        if "error" in r:
            print(f"{r['name']:<58} {'FAILED':>10}  {r['impl']}")
            continue
        tf = f"{r['tflops']:8.1f}" if r["tflops"] else f"{'':>8}"
        print(f"{r['name']:<58} {r['us']:10.1f} {r['gbs']:10.1f} {r['pct_copy']:7.1f}% {tf}  "
              f"{r['impl']}")
    meta["seconds"] = time.monotonic() - T0
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": b.rows}, f, indent=1)
            f.write("\n")
    return 1 if b.failed else 0


if __name__ == "__main__":
    sys.exit(main())
