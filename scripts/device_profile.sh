#!/usr/bin/env bash
# Per-kernel breakdown of one decode step on the device machine (Nsight Compute), for the
# end-to-end roofline target of issue 5 (docs/performance.md "Roofline of a decode step").
#
# Generates a dummy bf16 model (default: gdn qwen3next-1b, the end-to-end benchmark's model),
# then runs hyla-context-scaling --fixed-batch N in logits mode `sample` under
#   ncu --profile-from-start off --clock-control none --cache-control none
#       --metrics gpu__time_duration.sum
# with HYLA_PROFILE_STEPS=sample, so only the timed steps (cudaProfilerStart/Stop around them)
# are profiled, and summarises the kernels per step: time by kernel name and by kind (GEMM,
# attention decode, GDN decode, norms, …), as a share of the step's summed kernel time. ncu
# serialises kernels; --cache-control none keeps the L2 warm between them as in a real step
# (ncu's default flushes it before every kernel), so the sum is the kernels' own time
# without launch gaps; the step's wall time (from the run without ncu) minus that sum is what
# launches, host work and gaps cost.
#
# Usage (device tool, carry [".bundle"]):  bash .bundle/profile.sh [contexts] [batch]
#   contexts: comma-separated (default 1024,32768); batch: default 64
# Environment: HYLA_PROFILE_PRESET=gdn:qwen3next-1b  HYLA_PROFILE_STEPS_N=2
#   HYLA_PROFILE_ARGS="--gemm cublas"  extra hyla-context-scaling arguments (both runs)
#   HYLA_PROFILE_NCU=0                 wall times only (no Nsight Compute)
# Writes $OUT/profile.log (summaries) and $OUT/profile_raw.tar.gz (the ncu CSVs).
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -f "${HERE}/payload.tar.xz" && ! -d "${HERE}/bin" ]]; then
  tar -C "${HERE}" -xJf "${HERE}/payload.tar.xz" || { echo "cannot unpack the bundle" >&2; exit 1; }
fi
export LD_LIBRARY_PATH="${HERE}/lib${LD_LIBRARY_PATH:+:${LD_LIBRARY_PATH}}"
OUT="${OUT:-${PWD}/device-out}"
mkdir -p "${OUT}"
CONTEXTS="${1:-1024,32768}"
BATCH="${2:-64}"
PRESET="${HYLA_PROFILE_PRESET:-gdn:qwen3next-1b}"
STEPS="${HYLA_PROFILE_STEPS_N:-2}"
read -r -a EXTRA <<<"${HYLA_PROFILE_ARGS:-}"
LOG="${OUT}/profile.log"
RAW="$(mktemp -d)"
NCU="$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -n 1)"
MODEL="/tmp/hyla-profile-model"
family="${PRESET%%:*}"
preset="${PRESET#*:}"
{
  echo "device_profile.sh: ${family} ${preset}, batch ${BATCH}, contexts ${CONTEXTS}, ncu ${NCU:-none}"
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
} | tee "${LOG}"
if [[ ! -f "${MODEL}/config.json" ]]; then
  "${HERE}/bin/hyla-model" generate-model --family "${family}" --preset "${preset}" --dtype bf16 \
    --seed 0 --threads 0 --out "${MODEL}" >>"${LOG}" 2>&1 || { echo "generate-model failed" | tee -a "${LOG}"; exit 1; }
fi
scaling() {
  "${HERE}/bin/hyla-context-scaling" --model "${MODEL}" --label "${preset}" --backend cuda \
    --precision bf16 --memory-budget-gib 20 --contexts "$1" --max-batch "${BATCH}" \
    --fixed-batch "${BATCH}" --fixed-batch-logits sample --no-batch --no-synthetic-check \
    --prefill-max 0 --decode-steps 2 --warmup-steps 3 --batch-steps "$2" \
    ${EXTRA[@]+"${EXTRA[@]}"} "${@:3}"
}
for c in ${CONTEXTS//,/ }; do
  echo "===== context ${c}: wall time without the profiler" | tee -a "${LOG}"
  scaling "${c}" 16 2>&1 | grep -E "fixed batch|logits sample" | tee -a "${LOG}"
  [[ -n "${NCU}" && "${HYLA_PROFILE_NCU:-1}" != 0 ]] || continue
  echo "===== context ${c}: ncu, ${STEPS} steps" | tee -a "${LOG}"
  HYLA_PROFILE_STEPS=sample timeout 420 "${NCU}" --profile-from-start off --clock-control none \
    --cache-control none \
    --metrics gpu__time_duration.sum --csv --log-file "${RAW}/ncu_${c}.log" \
    "${HERE}/bin/hyla-context-scaling" --model "${MODEL}" --label "${preset}" --backend cuda \
    --precision bf16 --memory-budget-gib 20 --contexts "${c}" --max-batch "${BATCH}" \
    --fixed-batch "${BATCH}" --fixed-batch-logits sample --no-batch --no-synthetic-check \
    --prefill-max 0 --decode-steps 2 --warmup-steps 3 --batch-steps "${STEPS}" \
    ${EXTRA[@]+"${EXTRA[@]}"} >"${RAW}/ncu_${c}.out" 2>>"${RAW}/ncu_${c}.err"
  echo "ncu rc=$?" >>"${LOG}"
  # --log-file receives ncu's CSV (the program's own output goes to ncu_<c>.out).
  python3 - "${RAW}/ncu_${c}.log" "${STEPS}" <<'EOF' 2>&1 | tee -a "${LOG}"
import csv, sys, re, collections
path, steps = sys.argv[1], int(sys.argv[2])
rows = []
with open(path) as f:
    lines = [l for l in f if l.startswith('"')]
for r in csv.DictReader(lines):
    if r.get("Metric Name") != "gpu__time_duration.sum":
        continue
    v = float(r["Metric Value"].replace(",", ""))
    unit = r.get("Metric Unit", "nsecond")
    us = v / 1000.0 if unit.startswith("n") else (v if unit.startswith("u") else v * 1000.0)
    rows.append((r["Kernel Name"], us))
if not rows:
    print("no kernels profiled"); sys.exit(0)
def kind(n):
    l = n.lower()
    for k, pat in [("attention decode", r"pagedattention(split|combine|decode)"),
                   ("gemm (cuBLAS)", r"gemm|cutlass|nvjet|sm90|xmma|gemv|splitkreduce"),
                   ("gdn decode", r"gdndecode"), ("short conv", r"shortconv"),
                   ("norm", r"rmsnorm|gatedrms"), ("rope/kv", r"rope|kvappend"),
                   ("sampling", r"sampl|topk|radix|penalt|softmax"),
                   ("elementwise", r"silu|add|bias|convert|gather|embedding|f32|bf16")]:
        if re.search(pat, l):
            return k
    return "other"
by_name = collections.defaultdict(lambda: [0, 0.0])
by_kind = collections.defaultdict(lambda: [0, 0.0])
for n, us in rows:
    short = re.sub(r"\(.*", "", n)[:90]
    by_name[short][0] += 1; by_name[short][1] += us
    k = kind(n); by_kind[k][0] += 1; by_kind[k][1] += us
total = sum(us for _, us in rows)
print(f"kernels: {len(rows)} launches over {steps} steps, {total/steps:.1f} us of kernel time per step")
print(f"{'kind':<20} {'launches/step':>13} {'us/step':>10} {'share':>7}")
for k, (c, us) in sorted(by_kind.items(), key=lambda x: -x[1][1]):
    print(f"{k:<20} {c/steps:>13.1f} {us/steps:>10.1f} {100*us/total:>6.1f}%")
print(f"{'kernel':<90} {'n/step':>7} {'us/step':>9} {'us/call':>8}")
for n, (c, us) in sorted(by_name.items(), key=lambda x: -x[1][1])[:40]:
    print(f"{n:<90} {c/steps:>7.1f} {us/steps:>9.1f} {us/c:>8.2f}")
EOF
done
tar -C "${RAW}" -czf "${OUT}/profile_raw.tar.gz" . 2>/dev/null
echo "device_profile.sh: done" | tee -a "${LOG}"
