// GemmTuner: the bf16 GEMMs of Linear (y[rows, out] = x[rows, in] · Wᵀ, bf16 W and x, fp32 y and
// accumulation) on the cuBLASLt algorithm that is fastest for their shape, found by timing.
//
// Why: cublasGemmEx picks its algorithm by a heuristic that at decode sizes (a few to 256 rows,
// weights of 4-60 MB) often leaves the GEMM latency bound (too few CTAs, a long K loop, or a
// split-K with a separate reduction kernel): on the H100 at 64 rows it reaches 31-63% of the copy
// bandwidth. Timing the candidates once per shape picks a better one (more CTAs by split-K,
// another tile) where there is one, and keeps cublasGemmEx where there is not.
//
// Design:
//   - Candidates: up to `max_candidates` cuBLASLt heuristic results (cublasLtMatmulAlgoGetHeuristic
//     with the pointers' real alignments and the context's workspace), split-K variants (2, 3, 4,
//     6, 8, 16 splits; reduction in place or in the workspace, both deterministic) of the first
//     few that do not split K, each checked by cublasLtMatmulAlgoCheck, and cublasGemmEx default.
//   - Timing (only when the stream is not capturing a graph): before every timed launch the L2
//     is flushed (a memset of twice its size into a buffer allocated for the tuning and freed
//     after; skipped where that allocation fails); `warmup` launches, then the median of `reps`
//     launches timed alone with CUDA events. The tuning runs on the caller's real operands and
//     leaves y holding the product, so the call that tunes is also the call that computes.
//   - Validation: the fastest cuBLASLt candidate's output is compared with cublasGemmEx's (max
//     |diff| <= 1e-3 · max |y|, NaN fails); one that fails is dropped for the next.
//   - Choices are cached process-wide per (device, out, in, y row stride, pointer alignments,
//     row bucket = rows rounded up to a power of two): the first eager call of a bucket tunes at
//     its row count; other row counts of the bucket reuse the algorithm after
//     cublasLtMatmulAlgoCheck on their exact layouts (host only: no timing, possible inside a
//     capture; cublasGemmEx where it does not fit), so a server meeting every row count from 1 to
//     256 tunes 9 buckets per weight shape, not 256. Every context of a device runs the same
//     algorithm for the same shape: an eager step and a graph replay of it give the same bits.
//     A bucket first met while the stream is capturing runs cublasGemmEx there (no
//     synchronization is allowed) and is tuned at its first eager call.
//   - GEMMs of more than `max_rows` rows (prefill chunks: compute bound, where the heuristic is
//     good) always run cublasGemmEx.
//   - HYLA_GEMM_TUNE_VERBOSE=1 prints each plan to stderr ("[gemm-tune] ...").
//
// Thread-safety: a GemmTuner belongs to one stream and thread (its DeviceContext's); the plan
// cache it shares is guarded by a mutex.
#ifndef HYLA_RUNTIME_CUDA_GEMM_TUNER_H_
#define HYLA_RUNTIME_CUDA_GEMM_TUNER_H_

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace hyla::cuda {

// One bf16 GEMM: y[rows, out] (rows y_stride floats apart) = x[rows, in] · w[out, in]ᵀ.
struct Bf16GemmArgs {
  int64_t out = 0;
  int64_t rows = 0;
  int64_t in = 0;
  const void* w = nullptr;  // bf16 [out, in] row-major
  const void* x = nullptr;  // bf16 [rows, in] dense
  float* y = nullptr;       // fp32 [rows, y_stride]
  int64_t y_stride = 0;     // 0: out
};

struct GemmTunerOptions {
  int max_rows = 256;       // tune GEMMs of at most this many rows; more: cublasGemmEx default
  int max_candidates = 32;  // cuBLASLt heuristic results asked for
  int split_k_sources = 3;  // heuristic results that also get split-K variants
  int warmup = 1;           // untimed launches per candidate
  int reps = 5;             // timed launches per candidate (median)
  bool flush_l2 = true;     // flush the L2 before every timed launch (weights come from HBM)
  bool verbose = false;     // print each plan to stderr (also HYLA_GEMM_TUNE_VERBOSE=1)
};

class GemmTuner {
 public:
  // `cublas` must be bound to `stream`; `workspace` (device, `workspace_bytes`) is shared with
  // cuBLAS (stream order keeps the two apart). Fails when cuBLASLt cannot be loaded.
  static absl::StatusOr<std::unique_ptr<GemmTuner>> Create(int device, cudaStream_t stream,
                                                           cublasHandle_t cublas, void* workspace,
                                                           size_t workspace_bytes,
                                                           GemmTunerOptions options = {});
  ~GemmTuner();
  GemmTuner(const GemmTuner&) = delete;
  GemmTuner& operator=(const GemmTuner&) = delete;

  // Enqueues y = x · wᵀ on the stream: the shape's tuned plan; tunes it first when untuned and
  // the stream is not capturing (synchronizes); cublasGemmEx default otherwise.
  absl::Status Run(const Bf16GemmArgs& g);
  // The plan of g's shape: "lt algo <id> tile <t> stages <s> splitK <n> red <r> swz <c> cl <c>
  // (<us> us; cublas <us> us)", "cublas default (...)", or "untuned".
  std::string PlanName(const Bf16GemmArgs& g) const;
  // Row buckets this tuner has timed (not counting those found tuned in the process-wide cache).
  int64_t tuned_count() const { return tuned_count_; }

  // The algorithm chosen for a row bucket (cublasGemmEx default when !lt).
  struct Choice {
    bool lt = false;
    cublasLtMatmulAlgo_t algo{};
    std::string name = "cublas default";
  };
  struct Plan;
  struct Key {
    int device;
    int64_t out, rows, in, ldc;
    int align_w, align_x, align_y;
    bool operator==(const Key& o) const;
  };
  struct KeyHash {
    size_t operator()(const Key& k) const;
  };

 private:
  GemmTuner() = default;
  Key KeyOf(const Bf16GemmArgs& g) const;
  absl::Status RunDefault(const Bf16GemmArgs& g) const;
  absl::Status Launch(const Plan& plan, const Bf16GemmArgs& g) const;
  // The row bucket of a key: rows rounded up to a power of two (at most max_rows).
  Key BucketOf(Key key) const;
  // The exact shape's layouts with `choice`'s algorithm (cublasGemmEx when it does not fit).
  absl::StatusOr<std::shared_ptr<const Plan>> MakePlan(const Bf16GemmArgs& g, const Key& key,
                                                       const Choice& choice) const;
  // Times the candidates on g's operands and records the winner for g's row bucket; *y_done when
  // y then holds the returned choice's product.
  absl::StatusOr<Choice> Tune(const Bf16GemmArgs& g, const Key& key, bool* y_done);

  int device_ = 0;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  GemmTunerOptions options_;
  cublasLtHandle_t lt_ = nullptr;
  cublasLtMatmulDesc_t desc_ = nullptr;  // bf16 × bf16 → fp32, A transposed
  std::unordered_map<Key, std::shared_ptr<const Plan>, KeyHash> local_;  // lookups without lock
  int64_t tuned_count_ = 0;
};

}  // namespace hyla::cuda

#endif  // HYLA_RUNTIME_CUDA_GEMM_TUNER_H_
