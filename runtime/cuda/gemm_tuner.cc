#include "runtime/cuda/gemm_tuner.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "runtime/base/status_macros.h"
#include "runtime/cuda/cublas_api.h"
#include "runtime/cuda/cuda_util.h"

namespace hyla::cuda {

struct GemmTuner::Plan {
  bool lt = false;  // false: cublasGemmEx default
  cublasLtMatmulAlgo_t algo{};
  // Layouts of A (W as [in, out] column-major, transposed by the op), B (x) and C = D (y); owned
  // (plans live for the process).
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  std::string name;

  Plan() = default;
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;
  ~Plan() {
    absl::StatusOr<const CublasLtApi*> api = LoadCublasLt();
    if (!api.ok()) return;
    for (cublasLtMatrixLayout_t l : {a, b, c}) {
      if (l != nullptr) (void)(*api)->matrix_layout_destroy(l);
    }
  }
};

namespace {

constexpr float kAlpha = 1.0f;
constexpr float kBeta = 0.0f;

// The process-wide caches (never destroyed: plans outlive every context): the algorithm chosen
// by timing per row bucket, and the plan (layouts + algorithm) per exact shape.
struct PlanCache {
  std::mutex mu;
  std::unordered_map<GemmTuner::Key, GemmTuner::Choice, GemmTuner::KeyHash> choices;
  std::unordered_map<GemmTuner::Key, std::shared_ptr<const GemmTuner::Plan>, GemmTuner::KeyHash>
      plans;
};
PlanCache& Cache() {
  static PlanCache* const cache = new PlanCache();
  return *cache;
}

int Alignment(const void* p) {
  const uintptr_t v = reinterpret_cast<uintptr_t>(p);
  int a = 256;
  while (a > 1 && v % static_cast<uintptr_t>(a) != 0) a /= 2;
  return a;
}

bool EnvOn(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && v[0] != '\0' && std::strcmp(v, "0") != 0;
}

template <typename T>
T AlgoAttr(const CublasLtApi* api, const cublasLtMatmulAlgo_t& algo,
           cublasLtMatmulAlgoConfigAttributes_t attr) {
  T v{};
  size_t written = 0;
  if (api->algo_config_get_attribute(&algo, attr, &v, sizeof(v), &written) !=
      CUBLAS_STATUS_SUCCESS) {
    return T{};
  }
  return v;
}

std::string AlgoName(const CublasLtApi* api, const cublasLtMatmulAlgo_t& algo) {
  return absl::StrCat("lt algo ", AlgoAttr<int32_t>(api, algo, CUBLASLT_ALGO_CONFIG_ID), " tile ",
                      AlgoAttr<uint32_t>(api, algo, CUBLASLT_ALGO_CONFIG_TILE_ID), " stages ",
                      AlgoAttr<uint32_t>(api, algo, CUBLASLT_ALGO_CONFIG_STAGES_ID), " splitK ",
                      AlgoAttr<int32_t>(api, algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM), " red ",
                      AlgoAttr<uint32_t>(api, algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME), " swz ",
                      AlgoAttr<uint32_t>(api, algo, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING), " cl ",
                      AlgoAttr<uint16_t>(api, algo, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID));
}

// CUDA events for one candidate's timed launches (created once per tuning).
class EventPool {
 public:
  explicit EventPool(int n) : events_(static_cast<size_t>(n), nullptr) {
    for (cudaEvent_t& e : events_) {
      if (cudaEventCreate(&e) != cudaSuccess) e = nullptr;
    }
  }
  ~EventPool() {
    for (cudaEvent_t e : events_) {
      if (e != nullptr) (void)cudaEventDestroy(e);
    }
  }
  bool ok() const {
    return std::all_of(events_.begin(), events_.end(), [](cudaEvent_t e) { return e != nullptr; });
  }
  cudaEvent_t operator[](int i) const { return events_[static_cast<size_t>(i)]; }

 private:
  std::vector<cudaEvent_t> events_;
};

}  // namespace

bool GemmTuner::Key::operator==(const Key& o) const {
  return device == o.device && out == o.out && rows == o.rows && in == o.in && ldc == o.ldc &&
         align_w == o.align_w && align_x == o.align_x && align_y == o.align_y;
}

size_t GemmTuner::KeyHash::operator()(const Key& k) const {
  size_t h = static_cast<size_t>(k.device);
  for (int64_t v :
       {k.out, k.rows, k.in, k.ldc, int64_t{k.align_w}, int64_t{k.align_x}, int64_t{k.align_y}}) {
    h = h * 1000003u ^ std::hash<int64_t>()(v);
  }
  return h;
}

absl::StatusOr<std::unique_ptr<GemmTuner>> GemmTuner::Create(int device, cudaStream_t stream,
                                                             cublasHandle_t cublas, void* workspace,
                                                             size_t workspace_bytes,
                                                             GemmTunerOptions options) {
  absl::StatusOr<const CublasLtApi*> lt = LoadCublasLt();
  if (!lt.ok()) return lt.status();
  absl::StatusOr<const CublasApi*> blas = LoadCublas();
  if (!blas.ok()) return blas.status();
  const CublasLtApi* api = *lt;
  std::unique_ptr<GemmTuner> t(new GemmTuner());
  t->device_ = device;
  t->stream_ = stream;
  t->cublas_ = cublas;
  t->workspace_ = workspace;
  t->workspace_bytes_ = workspace_bytes;
  t->options_ = options;
  if (EnvOn("HYLA_GEMM_TUNE_VERBOSE")) t->options_.verbose = true;
  t->options_.reps = std::max(1, t->options_.reps);
  t->options_.warmup = std::max(0, t->options_.warmup);
  if (api->create(&t->lt_) != CUBLAS_STATUS_SUCCESS) {
    t->lt_ = nullptr;
    return absl::FailedPreconditionError("cublasLtCreate failed");
  }
  if (api->matmul_desc_create(&t->desc_, CUBLAS_COMPUTE_32F, CUDA_R_32F) != CUBLAS_STATUS_SUCCESS) {
    t->desc_ = nullptr;
    return absl::InternalError("cublasLtMatmulDescCreate failed");
  }
  const int32_t op_t = CUBLAS_OP_T;
  const int32_t op_n = CUBLAS_OP_N;
  if (api->matmul_desc_set_attribute(t->desc_, CUBLASLT_MATMUL_DESC_TRANSA, &op_t, sizeof(op_t)) !=
          CUBLAS_STATUS_SUCCESS ||
      api->matmul_desc_set_attribute(t->desc_, CUBLASLT_MATMUL_DESC_TRANSB, &op_n, sizeof(op_n)) !=
          CUBLAS_STATUS_SUCCESS) {
    return absl::InternalError("cublasLtMatmulDescSetAttribute(TRANSA/TRANSB) failed");
  }
  return t;
}

GemmTuner::~GemmTuner() {
  absl::StatusOr<const CublasLtApi*> lt = LoadCublasLt();
  if (!lt.ok()) return;
  if (desc_ != nullptr) (void)(*lt)->matmul_desc_destroy(desc_);
  if (lt_ != nullptr) (void)(*lt)->destroy(lt_);
}

GemmTuner::Key GemmTuner::KeyOf(const Bf16GemmArgs& g) const {
  Key k;
  k.device = device_;
  k.out = g.out;
  k.rows = g.rows;
  k.in = g.in;
  k.ldc = g.y_stride == 0 ? g.out : g.y_stride;
  k.align_w = Alignment(g.w);
  k.align_x = Alignment(g.x);
  k.align_y = Alignment(g.y);
  return k;
}

absl::Status GemmTuner::RunDefault(const Bf16GemmArgs& g) const {
  absl::StatusOr<const CublasApi*> blas = LoadCublas();
  if (!blas.ok()) return blas.status();
  const int ldc = static_cast<int>(g.y_stride == 0 ? g.out : g.y_stride);
  return CublasStatus(
      (*blas)->gemm_ex(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(g.out),
                       static_cast<int>(g.rows), static_cast<int>(g.in), &kAlpha, g.w, CUDA_R_16BF,
                       static_cast<int>(g.in), g.x, CUDA_R_16BF, static_cast<int>(g.in), &kBeta,
                       g.y, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
      absl::StrCat("cublasGemmEx bf16 ", g.out, "x", g.in, " by ", g.rows, " rows"));
}

absl::Status GemmTuner::Launch(const Plan& plan, const Bf16GemmArgs& g) const {
  if (!plan.lt) return RunDefault(g);
  absl::StatusOr<const CublasLtApi*> lt = LoadCublasLt();
  if (!lt.ok()) return lt.status();
  return CublasStatus(
      (*lt)->matmul(lt_, desc_, &kAlpha, g.w, plan.a, g.x, plan.b, &kBeta, g.y, plan.c, g.y, plan.c,
                    &plan.algo, workspace_, workspace_bytes_, stream_),
      absl::StrCat("cublasLtMatmul bf16 ", g.out, "x", g.in, " by ", g.rows, " rows (", plan.name,
                   ")"));
}

GemmTuner::Key GemmTuner::BucketOf(Key key) const {
  int64_t b = 1;
  while (b < key.rows) b *= 2;
  key.rows = std::min<int64_t>(b, std::max(key.rows, static_cast<int64_t>(options_.max_rows)));
  return key;
}

absl::StatusOr<std::shared_ptr<const GemmTuner::Plan>> GemmTuner::MakePlan(
    const Bf16GemmArgs& g, const Key& key, const Choice& choice) const {
  absl::StatusOr<const CublasLtApi*> lt = LoadCublasLt();
  if (!lt.ok()) return lt.status();
  const CublasLtApi* api = *lt;
  auto plan = std::make_shared<Plan>();
  // Layouts (column-major): A = W stored [in, out] (op T), B = x [in, rows], C = D = y [out, rows].
  if (api->matrix_layout_create(&plan->a, CUDA_R_16BF, static_cast<uint64_t>(g.in),
                                static_cast<uint64_t>(g.out), g.in) != CUBLAS_STATUS_SUCCESS ||
      api->matrix_layout_create(&plan->b, CUDA_R_16BF, static_cast<uint64_t>(g.in),
                                static_cast<uint64_t>(g.rows), g.in) != CUBLAS_STATUS_SUCCESS ||
      api->matrix_layout_create(&plan->c, CUDA_R_32F, static_cast<uint64_t>(g.out),
                                static_cast<uint64_t>(g.rows), key.ldc) != CUBLAS_STATUS_SUCCESS) {
    return absl::InternalError("cublasLtMatrixLayoutCreate failed");
  }
  plan->lt = choice.lt;
  plan->algo = choice.algo;
  plan->name = choice.name;
  if (choice.lt) {
    // The bucket's algorithm was timed at another row count: check it fits this one.
    cublasLtMatmulHeuristicResult_t check{};
    if (api->algo_check(lt_, desc_, plan->a, plan->b, plan->c, plan->c, &plan->algo, &check) !=
            CUBLAS_STATUS_SUCCESS ||
        check.workspaceSize > workspace_bytes_) {
      plan->lt = false;
      plan->name = absl::StrCat("cublas default (the row bucket's ", choice.name,
                                " does not fit these rows)");
    }
  }
  return plan;
}

absl::Status GemmTuner::Run(const Bf16GemmArgs& g) {
  if (g.rows <= 0) return absl::OkStatus();
  if (g.rows > options_.max_rows) return RunDefault(g);
  const Key key = KeyOf(g);
  if (auto it = local_.find(key); it != local_.end()) return Launch(*it->second, g);
  const Key bucket = BucketOf(key);
  std::shared_ptr<const Plan> plan;
  bool have_choice = false;
  Choice choice;
  {
    PlanCache& cache = Cache();
    std::lock_guard<std::mutex> lock(cache.mu);
    if (auto jt = cache.plans.find(key); jt != cache.plans.end()) {
      plan = jt->second;
    } else if (auto ct = cache.choices.find(bucket); ct != cache.choices.end()) {
      choice = ct->second;
      have_choice = true;
    }
  }
  bool y_done = false;
  if (plan == nullptr && !have_choice) {
    // Untuned row bucket: time it now unless the stream is capturing (no synchronization there).
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(stream_, &capture) != cudaSuccess) {
      (void)cudaGetLastError();
      return RunDefault(g);
    }
    if (capture != cudaStreamCaptureStatusNone) return RunDefault(g);
    HYLA_ASSIGN_OR_RETURN(choice, Tune(g, key, &y_done));
    have_choice = true;
  }
  if (plan == nullptr) {
    HYLA_ASSIGN_OR_RETURN(std::shared_ptr<const Plan> made, MakePlan(g, key, choice));
    PlanCache& cache = Cache();
    std::lock_guard<std::mutex> lock(cache.mu);
    plan = cache.plans.emplace(key, std::move(made)).first->second;
  }
  local_[key] = plan;
  // The tuning leaves y holding the chosen algorithm's product (the plan's: same algorithm).
  if (y_done && plan->lt == choice.lt) return absl::OkStatus();
  return Launch(*plan, g);
}

std::string GemmTuner::PlanName(const Bf16GemmArgs& g) const {
  if (g.rows > options_.max_rows) return "cublas default (not tuned: more rows than max_rows)";
  const Key key = KeyOf(g);
  if (auto it = local_.find(key); it != local_.end()) return it->second->name;
  PlanCache& cache = Cache();
  std::lock_guard<std::mutex> lock(cache.mu);
  if (auto jt = cache.plans.find(key); jt != cache.plans.end()) return jt->second->name;
  if (auto ct = cache.choices.find(BucketOf(key)); ct != cache.choices.end()) {
    return ct->second.name;
  }
  return "untuned";
}

absl::StatusOr<GemmTuner::Choice> GemmTuner::Tune(const Bf16GemmArgs& g, const Key& key,
                                                  bool* y_done) {
  *y_done = false;
  absl::StatusOr<const CublasLtApi*> lt_or = LoadCublasLt();
  if (!lt_or.ok()) return lt_or.status();
  const CublasLtApi* api = *lt_or;
  const std::string what =
      absl::StrCat("GEMM tuning of bf16 ", g.out, "x", g.in, " by ", g.rows, " rows");
  // The exact shape's layouts (the timing runs on the caller's operands).
  HYLA_ASSIGN_OR_RETURN(std::shared_ptr<const Plan> shape, MakePlan(g, key, Choice{}));
  const Plan* plan = shape.get();

  // Candidates: the heuristic's list, then split-K variants of its first entries.
  struct Candidate {
    cublasLtMatmulAlgo_t algo{};
    bool lt = true;
    float us = INFINITY;
  };
  std::vector<Candidate> cands;
  cands.push_back(Candidate{cublasLtMatmulAlgo_t{}, false, INFINITY});  // cublasGemmEx default
  auto known = [&](const cublasLtMatmulAlgo_t& a) {
    for (const Candidate& c : cands) {
      if (c.lt && std::memcmp(&c.algo, &a, sizeof(a)) == 0) return true;
    }
    return false;
  };
  {
    cublasLtMatmulPreference_t pref = nullptr;
    if (api->preference_create(&pref) != CUBLAS_STATUS_SUCCESS) pref = nullptr;
    if (pref != nullptr) {
      const uint64_t ws = workspace_bytes_;
      const uint32_t aw = static_cast<uint32_t>(key.align_w);
      const uint32_t ax = static_cast<uint32_t>(key.align_x);
      const uint32_t ay = static_cast<uint32_t>(key.align_y);
      (void)api->preference_set_attribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                          sizeof(ws));
      (void)api->preference_set_attribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &aw,
                                          sizeof(aw));
      (void)api->preference_set_attribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ax,
                                          sizeof(ax));
      (void)api->preference_set_attribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &ay,
                                          sizeof(ay));
      (void)api->preference_set_attribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &ay,
                                          sizeof(ay));
      std::vector<cublasLtMatmulHeuristicResult_t> results(
          static_cast<size_t>(std::max(1, options_.max_candidates)));
      int found = 0;
      if (api->algo_get_heuristic(lt_, desc_, plan->a, plan->b, plan->c, plan->c, pref,
                                  static_cast<int>(results.size()), results.data(),
                                  &found) != CUBLAS_STATUS_SUCCESS) {
        found = 0;
      }
      (void)api->preference_destroy(pref);
      std::vector<cublasLtMatmulAlgo_t> sources;
      for (int i = 0; i < found; ++i) {
        const cublasLtMatmulHeuristicResult_t& r = results[static_cast<size_t>(i)];
        if (r.state != CUBLAS_STATUS_SUCCESS || r.workspaceSize > workspace_bytes_) continue;
        if (known(r.algo)) continue;
        cands.push_back(Candidate{r.algo, true, INFINITY});
        if (static_cast<int>(sources.size()) < options_.split_k_sources &&
            AlgoAttr<int32_t>(api, r.algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM) <= 1) {
          sources.push_back(r.algo);
        }
      }
      for (const cublasLtMatmulAlgo_t& src : sources) {
        for (const int32_t splits : {2, 3, 4, 6, 8, 16}) {
          if (g.in / splits < 64) continue;
          // In place (ordered by counters: no extra kernel) or in the workspace (a reduction
          // kernel after); both deterministic.
          for (const uint32_t scheme : {uint32_t{CUBLASLT_REDUCTION_SCHEME_INPLACE},
                                        uint32_t{CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE}}) {
            cublasLtMatmulAlgo_t a = src;
            if (api->algo_config_set_attribute(&a, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splits,
                                               sizeof(splits)) != CUBLAS_STATUS_SUCCESS ||
                api->algo_config_set_attribute(&a, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &scheme,
                                               sizeof(scheme)) != CUBLAS_STATUS_SUCCESS) {
              continue;
            }
            cublasLtMatmulHeuristicResult_t check{};
            if (api->algo_check(lt_, desc_, plan->a, plan->b, plan->c, plan->c, &a, &check) !=
                    CUBLAS_STATUS_SUCCESS ||
                check.workspaceSize > workspace_bytes_ || known(a)) {
              continue;
            }
            cands.push_back(Candidate{a, true, INFINITY});
          }
        }
      }
    }
  }

  // The L2 flush buffer: twice the L2, for this tuning only.
  void* flush = nullptr;
  size_t flush_bytes = 0;
  if (options_.flush_l2) {
    int l2 = 0;
    if (cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, device_) == cudaSuccess && l2 > 0) {
      flush_bytes = size_t{2} * static_cast<size_t>(l2);
      if (cudaMalloc(&flush, flush_bytes) != cudaSuccess) {
        (void)cudaGetLastError();
        flush = nullptr;
        flush_bytes = 0;
      }
    }
  }
  struct FlushFree {
    void* p;
    ~FlushFree() {
      if (p != nullptr) (void)cudaFree(p);
    }
  } flush_free{flush};

  auto launch = [&](const Candidate& c) -> absl::Status {
    if (!c.lt) return RunDefault(g);
    return CublasStatus(
        api->matmul(lt_, desc_, &kAlpha, g.w, plan->a, g.x, plan->b, &kBeta, g.y, plan->c, g.y,
                    plan->c, &c.algo, workspace_, workspace_bytes_, stream_),
        "cublasLtMatmul");
  };
  const int reps = options_.reps;
  EventPool events(2 * reps);
  if (!events.ok()) return absl::InternalError(absl::StrCat(what, ": cudaEventCreate failed"));
  // Median µs of `reps` launches of c (INFINITY when it fails to launch).
  auto time = [&](const Candidate& c) -> absl::StatusOr<float> {
    for (int i = 0; i < options_.warmup; ++i) {
      if (!launch(c).ok()) return INFINITY;
    }
    for (int r = 0; r < reps; ++r) {
      if (flush != nullptr) {
        HYLA_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(flush, r & 0xFF, flush_bytes, stream_),
                                  absl::StrCat(what, ": L2 flush"));
      }
      HYLA_CUDA_RETURN_IF_ERROR(cudaEventRecord(events[2 * r], stream_), what);
      if (!launch(c).ok()) {
        (void)cudaStreamSynchronize(stream_);
        return INFINITY;
      }
      HYLA_CUDA_RETURN_IF_ERROR(cudaEventRecord(events[2 * r + 1], stream_), what);
    }
    HYLA_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(events[2 * reps - 1]), what);
    std::vector<float> ms(static_cast<size_t>(reps));
    for (int r = 0; r < reps; ++r) {
      HYLA_CUDA_RETURN_IF_ERROR(
          cudaEventElapsedTime(&ms[static_cast<size_t>(r)], events[2 * r], events[2 * r + 1]),
          what);
    }
    std::nth_element(ms.begin(), ms.begin() + reps / 2, ms.end());
    return ms[static_cast<size_t>(reps / 2)] * 1000.0f;
  };
  // The output of the launch just made, as [rows][out] on the host.
  const int64_t ldc = key.ldc;
  auto fetch = [&](std::vector<float>* host) -> absl::Status {
    host->resize(static_cast<size_t>(g.rows * g.out));
    HYLA_CUDA_RETURN_IF_ERROR(
        cudaMemcpy2DAsync(host->data(), static_cast<size_t>(g.out) * sizeof(float), g.y,
                          static_cast<size_t>(ldc) * sizeof(float),
                          static_cast<size_t>(g.out) * sizeof(float), static_cast<size_t>(g.rows),
                          cudaMemcpyDeviceToHost, stream_),
        absl::StrCat(what, ": result copy"));
    return CudaStatus(cudaStreamSynchronize(stream_), what);
  };

  // cublasGemmEx first: its output is the reference of the validation.
  absl::StatusOr<float> t0 = time(cands[0]);
  if (!t0.ok()) return t0.status();
  if (!std::isfinite(*t0)) {
    // cuBLAS itself fails here: report its error as the untuned path would.
    HYLA_RETURN_IF_ERROR(RunDefault(g));
    return absl::InternalError(absl::StrCat(what, ": cublasGemmEx failed while timing"));
  }
  cands[0].us = *t0;
  std::vector<float> ref;
  HYLA_RETURN_IF_ERROR(fetch(&ref));
  float ref_max = 0.0f;
  for (float v : ref) ref_max = std::max(ref_max, std::fabs(v));
  for (size_t i = 1; i < cands.size(); ++i) {
    absl::StatusOr<float> t = time(cands[i]);
    if (!t.ok()) return t.status();
    cands[i].us = *t;
  }
  (void)cudaGetLastError();  // a failed candidate's launch error is not the caller's

  // The fastest candidate that matches cublasGemmEx; cublasGemmEx when none beats it.
  std::vector<size_t> order(cands.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return cands[a].us < cands[b].us; });
  size_t chosen = 0;
  bool y_holds_chosen = false;
  std::vector<float> got;
  for (size_t i : order) {
    if (i == 0 || !(cands[i].us < cands[0].us)) break;
    if (!launch(cands[i]).ok()) continue;
    HYLA_RETURN_IF_ERROR(fetch(&got));
    float diff = 0.0f;
    for (size_t j = 0; j < got.size(); ++j) {
      const float d = std::fabs(got[j] - ref[j]);
      diff = std::isnan(d) ? INFINITY : std::max(diff, d);
    }
    if (diff <= 1e-3f * ref_max) {
      chosen = i;
      y_holds_chosen = true;
      break;
    }
    if (options_.verbose) {
      std::fprintf(stderr, "[gemm-tune] %s: %s rejected (max diff %g vs max |y| %g)\n",
                   what.c_str(), AlgoName(api, cands[i].algo).c_str(), diff, ref_max);
    }
  }
  if (!y_holds_chosen) HYLA_RETURN_IF_ERROR(RunDefault(g));
  const Candidate& best = cands[chosen];
  Choice choice;
  choice.lt = best.lt;
  choice.algo = best.algo;
  choice.name =
      absl::StrFormat("%s (%.1f us; cublas %.1f us; %d candidates; tuned at %lld rows)",
                      best.lt ? AlgoName(api, best.algo) : std::string("cublas default"), best.us,
                      cands[0].us, static_cast<int>(cands.size()), static_cast<long long>(g.rows));
  if (options_.verbose) {
    std::fprintf(stderr, "[gemm-tune] bf16 out %lld in %lld rows %lld ldc %lld: %s\n",
                 static_cast<long long>(g.out), static_cast<long long>(g.in),
                 static_cast<long long>(g.rows), static_cast<long long>(ldc), choice.name.c_str());
  }
  ++tuned_count_;
  {
    PlanCache& cache = Cache();
    std::lock_guard<std::mutex> lock(cache.mu);
    auto [it, inserted] = cache.choices.emplace(BucketOf(key), choice);
    if (!inserted) return it->second;  // another context tuned the bucket meanwhile: theirs
  }
  *y_done = true;  // y holds the chosen algorithm's product
  return choice;
}

}  // namespace hyla::cuda
