// Host-only API of kernels/short_conv_prefill.cu: part of kernels/ops.h (include that, never
// this). The short causal depthwise convolution of GDN / NAtS-L layers over the packed rows of a
// prefill (or mixed) step, with the carried tail of every sequence in its state slot.
#ifndef HYLA_KERNELS_SHORT_CONV_PREFILL_H_
#define HYLA_KERNELS_SHORT_CONV_PREFILL_H_

#include <cstddef>
#include <cstdint>

namespace hyla::kernels {

// ---- short_conv_prefill.cu -----------------------------------------------------------------
// Short causal depthwise conv1d (no bias) over variable-length sequences, then SiLU when `silu`
// (CPU reference: ShortConv of runtime/cpu/gdn_core.h, called per sequence). Sequence s owns the
// packed rows [cu_seqlens[s], cu_seqlens[s+1]) of x and out; with h(p) its input at row p of the
// sequence (p < 0: the carried tail row p + K-1, oldest first):
//   out[r, c] = f( Σ_{j=0..K-1} h(r − (K-1) + j)[c] · w[c, j] )       (oldest tap first, fp32,
//                                                                      no fused multiply-add)
//   tail ← [h(n − (K-1)), ..., h(n − 1)]                              (n = rows of s; when
//                                                                      n < K-1 part of the old tail
//                                                                      shifts down)
// tail: [(K-1), C] fp32 at tail + slots[s] · tail_slot_stride (the bf16 x is stored exactly).
// A sequence with slots[s] < 0 is padding: its out rows are zeroed, no tail is touched. Distinct
// sequences must name distinct slots. A sequence with 0 rows changes nothing. Equal to
// ShortConvDecode for one-row sequences, so steps may alternate between the two.
// out must not overlap x (the outputs of a row read the inputs of the rows before it) nor the
// tails. Two launches (outputs, then tails) on `stream`.
struct ShortConvPrefillParams {
  int num_seqs = 0;                       // may be 0: nothing is launched
  int64_t total_rows = 0;                 // cu_seqlens[num_seqs] (the host copy)
  int channels = 0;                       // C >= 1
  int kernel = 0;                         // K >= 1
  KernelDType dtype = KernelDType::kF32;  // of x and out
  const void* x = nullptr;                // [total_rows, C], rows x_stride elements apart
  int64_t x_stride = 0;
  const float* weight = nullptr;        // [C, K] (PyTorch Conv1d [C, 1, K])
  const int32_t* cu_seqlens = nullptr;  // [num_seqs + 1] device, non-decreasing, [0] = 0
  const int32_t* slots = nullptr;       // [num_seqs] device
  float* tail = nullptr;                // slot pool; [(K-1), C] fp32 per slot (unused when K == 1)
  int64_t tail_slot_stride = 0;         // elements between slots, >= (K-1)·C
  bool silu = true;
  void* out = nullptr;  // [total_rows, C], rows out_stride elements apart
  int64_t out_stride = 0;
};
int ShortConvPrefill(const ShortConvPrefillParams& params, void* stream);

}  // namespace hyla::kernels

#endif  // HYLA_KERNELS_SHORT_CONV_PREFILL_H_
