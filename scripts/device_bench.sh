#!/usr/bin/env bash
# Runs issue 5's benchmarks on the device machine from a bundle made by scripts/device_bundle.sh
# (copied there as .bundle/bench.sh), in one command of at most ~8 minutes:
#
#   1. kernels    .bundle/bin/kernels_bench (hyla's kernels, µs / GB/s / % of copy bandwidth)
#   2. peers      .bundle/peers/peers_bench.py at the same shapes: fla's Triton GDN kernels (the
#                 fla-core wheel in .bundle/whl/, installed into /tmp/site, no network) and
#                 PyTorch SDPA flash (the device's torch)
#   3. scaling    .bundle/bin/hyla-context-scaling on the CUDA backend (bf16) for three pairs,
#                 in the order c, a, b, each model's dummy weights generated here first by
#                 .bundle/bin/hyla-model generate-model (bf16, all cores) under $HYLA_MODEL_TMP
#                 and deleted after its run:
#                   c  gdn qwen3next-1b (hybrid)    vs gdn qwen3next-1b-twin (all softmax)
#                   a  nha nha-llama3-8b (hybrid)   vs llama llama3-8b
#                   b  natsl natsl-760m (hybrid)    vs llama natsl-760m-twin (transformer)
#   3b. serving   issue 5's two end-to-end targets on qwen3next-1b (bf16, ~1 minute):
#                 - .bundle/bin/hyla-context-scaling --fixed-batch 64 at contexts 1024 (the served
#                   context), 8192 and 32768, logits none / last / sample (device sampling, as the
#                   server does): the decode step at batch 64 against its roofline (weights +
#                   state + KV + logits bytes over the copy bandwidth it measures);
#                 - .bundle/bin/hyla-server --device cuda on the same model and .bundle/bin/
#                   hyla-bench --concurrency 64 (128 requests, 960 prompt + 128 output tokens:
#                   the served context averages 1024): its ITL against that step, the overhead
#                   of gRPC + scheduling
#                 It runs after peers and before scaling (whose pair c reuses its model).
#   4. plot       .bundle/plot_results.py: results.md and the PNGs
#
# Outputs in $OUT (default ./device-out), 5 files, so that a combined run with
# `.bundle/run.sh --no-sanitizers` (3 files) stays within the device tool's 8:
#   device_bench.log        environment, every stage's output and timing, the summary
#   results.md              tables (kernels vs peers, context scaling per pair, issue 5 targets)
#   kernels_vs_peers.png    context_scaling.png
#   bench_raw.tar.gz        kernels_bench.log, peers.json, context_scaling.json (all runs),
#                           each run's JSON (runs/) and the serving stage's roofline.json,
#                           hyla_bench.json and server.log (serving/): re-plot here with
#                           python3 bench/plot_results.py --out DIR --kernels-log ... (see
#                           docs/performance.md)
#
# Usage: bash .bundle/bench.sh [--only STAGES] [--pairs P] [--quick] [--backend cpu]
#   --only STAGES   comma-separated subset of kernels,peers,serving,scaling,plot (default all)
#   --pairs P       comma-separated subset of c,a,b (default c,a,b, run in that order: the two
#                   pairs with numeric targets first)
#   --quick         kernels_bench --quick, peers --quick, contexts 1K,16K,128K, fewer steps
#   --backend cpu   dry run of the serving stage on the CPU (no GPU needed): the gdn tiny-hybrid
#                   model, hyla-server --device cpu, batch 8, 96 + 32 tokens, contexts 112,512;
#                   stages default to serving,plot (the others need a GPU)
# Environment (defaults):
#   HYLA_BENCH_DEADLINE_S=500   a stage or model run whose estimated end is after this many
#                               seconds is skipped (and reported as skipped)
#   HYLA_BENCH_HARD_S=560       every stage's timeout is cut so that it ends by then (a cut
#                               context-scaling run keeps the contexts it finished)
#   HYLA_MODEL_TMP=/tmp/hyla-models   where the dummy checkpoints are written (one at a time;
#                               default /dev/shm/hyla-models when /tmp has < 20 GiB free)
#   HYLA_CONTEXTS=1024,4096,16384,32768,65536,131072
#   HYLA_BUDGET_GIB=40          state memory budget (slots + KV blocks) of every model
#   HYLA_MAX_BATCH=256          most sessions in one decode step
#   HYLA_PREFILL_MAX_SMALL=32768  real prefill up to this context for pairs b, c (synthetic
#   HYLA_PREFILL_MAX_8B=16384     beyond; see docs/performance.md), and for pair a
#   HYLA_DECODE_STEPS=16 HYLA_BATCH_STEPS=8 HYLA_WARMUP_STEPS=2
#   HYLA_DECODE_LOGITS=last     last | none (see hyla-context-scaling --help)
#   HYLA_PEERS_GDN_PREFILL=target   all: every kernels_bench GDN prefill shape for fla (each new
#                               shape costs fla ~1 minute of Triton autotuning), target: T=32K only
#   HYLA_SERVE_BATCH=64 HYLA_SERVE_INPUT=960 HYLA_SERVE_OUTPUT=128   the serving stage's batch
#                               (= hyla-bench concurrency = the fixed batch) and request lengths
#   HYLA_ROOFLINE_CONTEXTS=8192,32768   fixed-batch contexts besides the served one
#   HYLA_SERVE_PORT=50517       hyla-server's gRPC port (on 127.0.0.1)
#   HYLA_BENCH_BIN_PATH=<bundle>/bin   colon-separated directories searched for the programs (a
#                               build tree: build/bench:build/service:build/tools)
#   HYLA_BENCH_OUT_FILES=all    compact: only device_bench.log and bench_results.tar.gz (results.md,
#                               the PNGs and the raw files) in $OUT, for a run combined with
#                               .bundle/run.sh whose logs fill the device tool's 8 files
# Exit status: 0 when every stage that ran succeeded, 1 otherwise (a skipped stage is not a
# failure; the summary names it).
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# The bundle's programs travel packed (scripts/device_bundle.sh); run.sh may have unpacked them.
if [[ -f "${HERE}/payload.tar.xz" && ! -d "${HERE}/bin" ]]; then
  tar -C "${HERE}" -xJf "${HERE}/payload.tar.xz" || { echo "cannot unpack the bundle" >&2; exit 1; }
fi
OUT="${OUT:-${PWD}/device-out}"
mkdir -p "${OUT}"
STAGES=""
PAIRS="c,a,b"
QUICK=0
BACKEND=cuda
while (($#)); do
  case "$1" in
    --only) STAGES="$2"; shift 2 ;;
    --pairs) PAIRS="$2"; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --backend) BACKEND="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed -e '/^set -uo/d' -e 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "device_bench.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
case "${BACKEND}" in
  cuda) STAGES="${STAGES:-kernels,peers,serving,scaling,plot}" ;;
  cpu)
    STAGES="${STAGES:-serving,plot}"
    if [[ ",${STAGES}," == *,kernels,* || ",${STAGES}," == *,peers,* || ",${STAGES}," == *,scaling,* ]]; then
      echo "device_bench.sh: --backend cpu runs only the serving and plot stages" >&2
      exit 2
    fi
    ;;
  *) echo "device_bench.sh: --backend cuda|cpu" >&2; exit 2 ;;
esac
DEADLINE="${HYLA_BENCH_DEADLINE_S:-500}"
HARD="${HYLA_BENCH_HARD_S:-560}"
# The dummy checkpoints (one at a time, up to 16 GB for the 8B models): /tmp, or /dev/shm when
# /tmp has less than 20 GiB free and /dev/shm has more.
free_gib() { df -B1G --output=avail "$1" 2>/dev/null | tail -n 1 | tr -d ' '; }
MODEL_TMP="${HYLA_MODEL_TMP:-}"
if [[ -z "${MODEL_TMP}" ]]; then
  MODEL_TMP=/tmp/hyla-models
  if (($(free_gib /tmp || echo 0) < 20)) && (($(free_gib /dev/shm || echo 0) >= 20)); then
    MODEL_TMP=/dev/shm/hyla-models
  fi
fi
CONTEXTS="${HYLA_CONTEXTS:-1024,4096,16384,32768,65536,131072}"
BUDGET="${HYLA_BUDGET_GIB:-40}"
MAX_BATCH="${HYLA_MAX_BATCH:-256}"
PREFILL_MAX_SMALL="${HYLA_PREFILL_MAX_SMALL:-32768}"
PREFILL_MAX_8B="${HYLA_PREFILL_MAX_8B:-16384}"
DECODE_STEPS="${HYLA_DECODE_STEPS:-16}"
BATCH_STEPS="${HYLA_BATCH_STEPS:-8}"
WARMUP_STEPS="${HYLA_WARMUP_STEPS:-2}"
DECODE_LOGITS="${HYLA_DECODE_LOGITS:-last}"
if ((QUICK)); then
  CONTEXTS="${HYLA_CONTEXTS:-1024,16384,131072}"
  DECODE_STEPS="${HYLA_DECODE_STEPS:-8}"
  BATCH_STEPS="${HYLA_BATCH_STEPS:-4}"
fi
BIN_PATH="${HYLA_BENCH_BIN_PATH:-${HERE}/bin}"
# scrape FILE: hyla-server's Prometheus metrics (the serving stage's metrics port) into FILE.
scrape() {
  python3 -c "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:$((S_PORT + 1))/metrics', timeout=5).read().decode())" \
    >"$1" 2>/dev/null || echo "(metrics not reachable)" >"$1"
}
# prog NAME: the program's path (the first of BIN_PATH's directories holding it).
prog() {
  local d
  local IFS=:
  for d in ${BIN_PATH}; do
    [[ -x "${d}/$1" ]] && { echo "${d}/$1"; return 0; }
  done
  echo "${HERE}/bin/$1"
}
PLOT="${HERE}/plot_results.py"
[[ -f "${PLOT}" ]] || PLOT="${HERE}/../bench/plot_results.py"
export LD_LIBRARY_PATH="${HERE}/lib${LD_LIBRARY_PATH:+:${LD_LIBRARY_PATH}}"
export PYTHONUNBUFFERED=1
LOG="${OUT}/device_bench.log"
RAW="$(mktemp -d /tmp/hyla-bench-raw.XXXXXX)"
mkdir -p "${RAW}/runs"
START=${SECONDS}
summary=()
failed=0

say() { echo "[device_bench +$((SECONDS - START))s] $*" | tee -a "${LOG}" >&2; }
has_stage() { [[ ",${STAGES}," == *",$1,"* ]]; }
# fits SECONDS_NEEDED: true when a step of that estimated length still ends before the deadline.
fits() { (((SECONDS - START) + $1 <= DEADLINE)); }
# limit SECONDS: that timeout, cut to end by the hard limit.
limit() {
  local left=$((HARD - (SECONDS - START)))
  ((left < $1)) && echo $((left > 5 ? left : 5)) || echo "$1"
}

: >"${LOG}"
{
  echo "===== environment"
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.sm,clocks.mem \
    --format=csv 2>&1 || true
  uname -a
  echo "cores: $(nproc)"
  free -g 2>&1 | head -2
  df -h /tmp /dev/shm 2>&1
  python3 -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__)' 2>&1
  echo "options: stages=${STAGES} pairs=${PAIRS} quick=${QUICK} contexts=${CONTEXTS}" \
    "budget=${BUDGET}GiB max_batch=${MAX_BATCH} prefill_max=${PREFILL_MAX_SMALL}/${PREFILL_MAX_8B}" \
    "steps=${DECODE_STEPS}/${BATCH_STEPS}/${WARMUP_STEPS} logits=${DECODE_LOGITS}" \
    "deadline=${DEADLINE}s/${HARD}s models=${MODEL_TMP}"
} >>"${LOG}" 2>&1

# 1. kernels_bench.
if has_stage kernels; then
  if fits 90; then
    say "kernels_bench"
    t=${SECONDS}
    args=()
    ((QUICK)) && args=(--quick)
    timeout "$(limit 240)" "$(prog kernels_bench)" ${args[@]+"${args[@]}"} \
      >"${RAW}/kernels_bench.log" 2>&1
    rc=$?
    { echo "===== kernels_bench (rc=${rc})"; cat "${RAW}/kernels_bench.log"; } >>"${LOG}"
    summary+=("kernels   kernels_bench: rc=${rc} ($((SECONDS - t)) s)")
    ((rc == 0)) || failed=1
  else
    summary+=("kernels   skipped (deadline)")
  fi
fi

# 2. peers: fla (wheel carried in the bundle) and PyTorch SDPA.
if has_stage peers; then
  if fits 150; then
    say "peers (fla + PyTorch SDPA)"
    t=${SECONDS}
    whls=("${HERE}"/whl/*.whl)
    if [[ -e "${whls[0]}" ]]; then
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "${whls[@]}" >>"${LOG}" 2>&1 || say "pip install of the fla wheel failed"
      export PYTHONPATH="/tmp/site${PYTHONPATH:+:${PYTHONPATH}}"
    else
      say "no wheel in ${HERE}/whl: the fla rows will fail (scripts/device_bundle.sh copies .peers-whl/)"
    fi
    args=(--json "${RAW}/peers.json" --no-f32-prefill --gdn-prefill "${HYLA_PEERS_GDN_PREFILL:-target}")
    ((QUICK)) && args+=(--quick)
    { echo "===== peers_bench"; } >>"${LOG}"
    timeout "$(limit 300)" python3 "${HERE}/peers/peers_bench.py" "${args[@]}" >>"${LOG}" 2>&1
    rc=$?
    summary+=("peers     peers_bench.py: rc=${rc} ($((SECONDS - t)) s)")
    ((rc == 0)) || failed=1
  else
    summary+=("peers     skipped (deadline)")
  fi
fi

# 3b. Serving: the fixed-batch decode step against its roofline, and hyla-server + hyla-bench at
# the same batch (issue 5's end-to-end and serving-overhead targets). The model stays in
# MODEL_TMP for pair c (a ".reuse" marker tells run_model not to generate it again).
if has_stage serving; then
  if [[ "${BACKEND}" == cpu ]] || fits 90; then
    t=${SECONDS}
    mkdir -p "${RAW}/serving"
    if [[ "${BACKEND}" == cuda ]]; then
      S_FAMILY=gdn S_PRESET=qwen3next-1b S_DTYPE=(--dtype bf16)
      S_BATCH="${HYLA_SERVE_BATCH:-64}" S_IN="${HYLA_SERVE_INPUT:-960}" S_OUT="${HYLA_SERVE_OUTPUT:-128}"
      S_MORE="${HYLA_ROOFLINE_CONTEXTS:-8192,32768}"
      S_SCALING=(--backend cuda --precision bf16 --memory-budget-gib 20)
      S_SERVER=(--device cuda --precision bf16 --workers 1 --memory-budget 16G)
      S_CHUNK=1024 S_TOKENS=8192
    else
      S_FAMILY=gdn S_PRESET=tiny-hybrid S_DTYPE=()
      S_BATCH="${HYLA_SERVE_BATCH:-8}" S_IN="${HYLA_SERVE_INPUT:-96}" S_OUT="${HYLA_SERVE_OUTPUT:-32}"
      S_MORE="${HYLA_ROOFLINE_CONTEXTS:-512}"
      S_SCALING=(--backend cpu --threads 2 --memory-budget-mib 64)
      S_SERVER=(--device cpu --threads 2 --workers 1 --memory-budget 256M)
      S_CHUNK=128 S_TOKENS=1024
    fi
    # The served context averages prompt + output / 2: the fixed batch's first context.
    S_CTX=$((S_IN + S_OUT / 2))
    S_CONTEXTS="${S_CTX}"
    for c in ${S_MORE//,/ }; do ((c > S_CTX)) && S_CONTEXTS+=",${c}"; done
    S_MAXCTX=$(((S_IN + S_OUT + 64 + 63) / 64 * 64))
    S_PORT="${HYLA_SERVE_PORT:-50517}"
    dir="${MODEL_TMP}/${S_PRESET}"
    rm -rf "${dir}"
    mkdir -p "${MODEL_TMP}"
    say "serving: generate ${S_FAMILY} ${S_PRESET} into ${dir}"
    "$(prog hyla-model)" generate-model --family "${S_FAMILY}" --preset "${S_PRESET}" \
      ${S_DTYPE[@]+"${S_DTYPE[@]}"} --seed 0 --threads 0 --out "${dir}" >>"${LOG}" 2>&1
    rc=$?
    if ((rc != 0)); then
      summary+=("serving   generate-model ${S_PRESET} FAILED rc=${rc}")
      failed=1
      rm -rf "${dir}"
    else
      [[ "${BACKEND}" == cuda ]] && touch "${dir}/.reuse"
      # (a) The decode step at batch S_BATCH against its roofline.
      say "serving: hyla-context-scaling --fixed-batch ${S_BATCH} at ${S_CONTEXTS}"
      { echo "===== serving: hyla-context-scaling --fixed-batch ${S_BATCH} ${S_PRESET}"; } >>"${LOG}"
      timeout "$(limit 150)" "$(prog hyla-context-scaling)" --model "${dir}" --label "${S_PRESET}" \
        "${S_SCALING[@]}" --contexts "${S_CONTEXTS}" --max-batch "${S_BATCH}" \
        --fixed-batch "${S_BATCH}" --fixed-batch-logits none,last,sample --no-batch \
        --no-synthetic-check --prefill-max 0 --decode-steps 8 --batch-steps 16 --warmup-steps 3 \
        --json "${RAW}/serving/roofline.json" >>"${LOG}" 2>&1
      rc=$?
      summary+=("serving   roofline (hyla-context-scaling --fixed-batch ${S_BATCH}): rc=${rc} ($((SECONDS - t)) s)")
      ((rc == 0)) || failed=1
      # (b) hyla-server and hyla-bench.
      t2=${SECONDS}
      say "serving: hyla-server ${S_SERVER[*]} on 127.0.0.1:${S_PORT}; hyla-bench --concurrency ${S_BATCH}"
      "$(prog hyla-server)" --model "${dir}" "${S_SERVER[@]}" --max-batch "${S_BATCH}" \
        --prefill-chunk "${S_CHUNK}" --token-budget "${S_TOKENS}" --max-context "${S_MAXCTX}" \
        --queue-bound $((4 * S_BATCH)) --listen "127.0.0.1:${S_PORT}" \
        --metrics-listen "127.0.0.1:$((S_PORT + 1))" --drain-deadline 2s \
        >"${RAW}/serving/server.log" 2>&1 &
      server_pid=$!
      ready=0
      for ((i = 0; i < 120; ++i)); do
        kill -0 "${server_pid}" 2>/dev/null || break
        if "$(prog hyla)" --server "127.0.0.1:${S_PORT}" --timeout 2s health >/dev/null 2>&1; then
          ready=1
          break
        fi
        sleep 1
      done
      if ((ready)); then
        say "serving: server ready after $((SECONDS - t2)) s; warm-up round, then the measured run"
        timeout "$(limit 60)" "$(prog hyla-bench)" --server "127.0.0.1:${S_PORT}" \
          --concurrency "${S_BATCH}" --num-requests "${S_BATCH}" --input-len "${S_IN}" \
          --output-len 8 --seed 7 >>"${LOG}" 2>&1
        { echo "===== serving: hyla-bench --concurrency ${S_BATCH} --num-requests $((2 * S_BATCH))" \
            "--input-len ${S_IN} --output-len ${S_OUT}"; } >>"${LOG}"
        scrape "${RAW}/serving/metrics_before.txt"
        timeout "$(limit 120)" "$(prog hyla-bench)" --server "127.0.0.1:${S_PORT}" \
          --concurrency "${S_BATCH}" --num-requests $((2 * S_BATCH)) --input-len "${S_IN}" \
          --output-len "${S_OUT}" --seed 1 --timeout-s 100 \
          --json "${RAW}/serving/hyla_bench.json" >>"${LOG}" 2>&1
        rc=$?
        scrape "${RAW}/serving/metrics_after.txt"
        # The served steps of the measured run, from the server's own histograms (the mean
        # decode Backend::Step and the scheduler thread's host time per step).
        python3 - "${RAW}/serving/metrics_before.txt" "${RAW}/serving/metrics_after.txt" \
          >"${RAW}/serving/served_steps.json" 2>>"${LOG}" <<'PYEOF'
import json, re, sys
def read(path):
    out = {}
    try:
        for line in open(path):
            m = re.match(r'^(hyla_step_(?:backend|host|duration)_seconds_(?:sum|count))\{([^}]*)\} (\S+)', line)
            if m:
                out[(m.group(1), m.group(2))] = float(m.group(3))
    except OSError:
        pass
    return out
a, b = read(sys.argv[1]), read(sys.argv[2])
res = {}
for (name, labels), v in b.items():
    if not name.endswith("_sum"):
        continue
    cnt = (name[:-4] + "_count", labels)
    n = b.get(cnt, 0) - a.get(cnt, 0)
    if n > 0:
        res[f"{name[:-4]}{{{labels}}}"] = {"steps": n, "mean_ms": 1e3 * (v - a.get((name, labels), 0)) / n}
json.dump(res, sys.stdout, indent=1)
PYEOF
        { echo "===== serving: served steps during the measured run (server histograms)";
          cat "${RAW}/serving/served_steps.json"; echo; } >>"${LOG}"
      else
        say "serving: hyla-server did not become ready"
        rc=1
      fi
      kill -TERM "${server_pid}" 2>/dev/null
      for ((i = 0; i < 10; ++i)); do kill -0 "${server_pid}" 2>/dev/null || break; sleep 1; done
      kill -KILL "${server_pid}" 2>/dev/null
      wait "${server_pid}" 2>/dev/null
      { echo "===== serving: hyla-server log (last 40 lines)"; tail -n 40 "${RAW}/serving/server.log"; } >>"${LOG}"
      summary+=("serving   hyla-server + hyla-bench: rc=${rc} ($((SECONDS - t2)) s)")
      ((rc == 0)) || failed=1
      [[ "${BACKEND}" == cuda ]] || rm -rf "${dir}"
    fi
  else
    summary+=("serving   skipped (deadline)")
  fi
fi

# 3. Context scaling. One model at a time: generate (bf16) → run → delete.
# run_model PAIR ROLE FAMILY PRESET PREFILL_MAX ESTIMATE_S TIMEOUT_S
run_model() {
  local pair="$1" role="$2" family="$3" preset="$4" prefill_max="$5" estimate="$6" limit="$7"
  if ! fits "${estimate}"; then
    summary+=("scaling   ${pair} ${preset}: skipped (deadline)")
    return
  fi
  local dir="${MODEL_TMP}/${preset}" t=${SECONDS} rc
  if [[ -f "${dir}/.reuse" ]]; then
    say "reuse ${preset} generated by the serving stage (${dir})"
    rc=0
  else
    rm -rf "${dir}"
    mkdir -p "${MODEL_TMP}"
    say "generate ${family} ${preset} (bf16) into ${dir}"
    "$(prog hyla-model)" generate-model --family "${family}" --preset "${preset}" \
      --dtype bf16 --seed 0 --threads 0 --out "${dir}" >>"${LOG}" 2>&1
    rc=$?
  fi
  local gen_s=$((SECONDS - t))
  if ((rc != 0)); then
    summary+=("scaling   ${pair} ${preset}: generate-model FAILED rc=${rc}")
    failed=1
    rm -rf "${dir}"
    return
  fi
  say "generated ${preset} in ${gen_s} s ($(du -sh "${dir}" | cut -f1)); hyla-context-scaling"
  { echo "===== hyla-context-scaling ${pair} ${role} ${preset}"; } >>"${LOG}"
  timeout "$(limit "${limit}")" "$(prog hyla-context-scaling)" --model "${dir}" --label "${preset}" \
    --pair "${pair}" --role "${role}" --backend cuda --precision bf16 --contexts "${CONTEXTS}" \
    --memory-budget-gib "${BUDGET}" --max-batch "${MAX_BATCH}" --prefill-max "${prefill_max}" \
    --decode-steps "${DECODE_STEPS}" --batch-steps "${BATCH_STEPS}" \
    --warmup-steps "${WARMUP_STEPS}" --decode-logits "${DECODE_LOGITS}" \
    --json "${RAW}/runs/${pair}-${role}-${preset}.json" >>"${LOG}" 2>&1
  rc=$?
  rm -rf "${dir}"
  summary+=("scaling   ${pair} ${preset}: rc=${rc} (generate ${gen_s} s, total $((SECONDS - t)) s)")
  ((rc == 0)) || failed=1
}

if has_stage scaling; then
  for pair in ${PAIRS//,/ }; do
    case "${pair}" in
      c)
        run_model c hybrid gdn qwen3next-1b "${PREFILL_MAX_SMALL}" 45 150
        run_model c baseline gdn qwen3next-1b-twin "${PREFILL_MAX_SMALL}" 45 150
        ;;
      a)
        run_model a hybrid nha nha-llama3-8b "${PREFILL_MAX_8B}" 100 240
        run_model a baseline llama llama3-8b "${PREFILL_MAX_8B}" 100 240
        ;;
      b)
        run_model b hybrid natsl natsl-760m "${PREFILL_MAX_SMALL}" 45 150
        run_model b baseline llama natsl-760m-twin "${PREFILL_MAX_SMALL}" 45 150
        ;;
      *) summary+=("scaling   unknown pair ${pair}") ;;
    esac
  done
  python3 - "${RAW}/runs" "${RAW}/context_scaling.json" <<'PY' >>"${LOG}" 2>&1
import glob, json, os, sys
runs = []
for p in sorted(glob.glob(os.path.join(sys.argv[1], "*.json"))):
    with open(p) as f:
        runs.append(json.load(f))
with open(sys.argv[2], "w") as f:
    json.dump({"runs": runs}, f, indent=1)
print(f"merged {len(runs)} context-scaling runs")
PY
fi

# 4. Tables and plots (also when some stage failed: they show what was measured).
if has_stage plot; then
  say "plot"
  args=(--out "${OUT}")
  [[ -f "${RAW}/kernels_bench.log" ]] && args+=(--kernels-log "${RAW}/kernels_bench.log")
  [[ -f "${RAW}/peers.json" ]] && args+=(--peers-json "${RAW}/peers.json")
  [[ -f "${RAW}/context_scaling.json" ]] && args+=(--scaling-json "${RAW}/context_scaling.json")
  [[ -f "${RAW}/serving/roofline.json" ]] && args+=(--roofline-json "${RAW}/serving/roofline.json")
  [[ -f "${RAW}/serving/hyla_bench.json" ]] && args+=(--serving-json "${RAW}/serving/hyla_bench.json")
  python3 "${PLOT}" "${args[@]}" >>"${LOG}" 2>&1
  rc=$?
  summary+=("plot      plot_results.py: rc=${rc}")
  ((rc == 0)) || failed=1
fi

if [[ "${HYLA_BENCH_OUT_FILES:-all}" == compact ]]; then
  for f in results.md kernels_vs_peers.png context_scaling.png; do
    [[ -f "${OUT}/${f}" ]] && mv "${OUT}/${f}" "${RAW}/"
  done
  tar -czf "${OUT}/bench_results.tar.gz" -C "${RAW}" . 2>>"${LOG}"
else
  tar -czf "${OUT}/bench_raw.tar.gz" -C "${RAW}" . 2>>"${LOG}"
fi
rm -rf "${MODEL_TMP}"
{
  echo
  echo "===== summary ($((SECONDS - START)) s)"
  printf '%s\n' "${summary[@]}"
} | tee -a "${LOG}"
for md in "${OUT}/results.md" "${RAW}/results.md"; do
  if [[ -f "${md}" ]]; then
    echo
    sed -n '/^## Issue 5 targets/,$p' "${md}"
    break
  fi
done
rm -rf "${RAW}"
exit ${failed}
