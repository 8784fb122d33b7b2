// Host-only API of the CUDA kernels (hyla_kernels). One op per .cu file in kernels/.
//
// This header is plain C++: no CUDA types, so host code (runtime/cuda/) includes it without
// the CUDA headers, and nvcc never sees Abseil, protobuf or gRPC. Device pointers are plain
// pointers; bf16 tensors are passed as `uint16_t` bit patterns (the layout of __nv_bfloat16);
// a `cudaStream_t` is passed as `void*` (nullptr = the legacy default stream).
//
// Every launcher is asynchronous on its stream and returns 0 (cudaSuccess) or a cudaError_t
// value as int: cudaErrorInvalidValue (1) for arguments it rejects, else the launch error.
// Errors of the kernel's execution surface at the next synchronisation. KernelErrorString()
// names a code.
//
// Numerics: inputs are read as fp32 and every op accumulates in fp32; bf16 outputs are rounded
// to nearest even. The CPU backend (runtime/cpu/ops.h) is the reference for each op; results
// agree with it to rounding (reductions run in a different order).
//
// Thread-safety: launchers are stateless and may be called from any thread.
#ifndef HYLA_KERNELS_OPS_H_
#define HYLA_KERNELS_OPS_H_

#include <cstdint>

namespace hyla::kernels {

// The text of a code returned by a launcher (cudaGetErrorString).
const char* KernelErrorString(int error);

// ---- rmsnorm.cu ----------------------------------------------------------------------------
// Row-wise RMSNorm over the last dimension:
//   out[r, i] = x[r, i] / sqrt(mean_i(x[r, :]²) + eps) · w[i]         (plain)
//   out[r, i] = x[r, i] / sqrt(mean_i(x[r, :]²) + eps) · (1 + w[i])   (gemma = true)
// x:   [rows, n] (fp32 or bf16), rows `x_stride` elements apart (x_stride >= n)
// w:   [n] fp32, or nullptr for no affine weight
// out: [rows, n], same dtype as x, rows `out_stride` elements apart; out == x is allowed.
// rows may be 0 (nothing is launched); n >= 1.
int RmsNormF32(const float* x, int64_t x_stride, const float* w, float eps, int64_t rows, int64_t n,
               bool gemma, float* out, int64_t out_stride, void* stream);
int RmsNormBf16(const uint16_t* x, int64_t x_stride, const float* w, float eps, int64_t rows,
                int64_t n, bool gemma, uint16_t* out, int64_t out_stride, void* stream);

// ---- silu_mul.cu ---------------------------------------------------------------------------
// SwiGLU activation: out[r, i] = silu(gate[r, i]) · up[r, i], silu(g) = g / (1 + exp(-g)).
// gate, up: [rows, n] with row strides gate_stride / up_stride (elements); a fused gate|up
// projection output [rows, 2n] is gate = p, up = p + n, both strides 2n.
// out: [rows, n], same dtype, row stride out_stride; may alias gate (same stride) but must not
// partially overlap up. rows may be 0; n >= 1.
int SiluMulF32(const float* gate, int64_t gate_stride, const float* up, int64_t up_stride,
               int64_t rows, int64_t n, float* out, int64_t out_stride, void* stream);
int SiluMulBf16(const uint16_t* gate, int64_t gate_stride, const uint16_t* up, int64_t up_stride,
                int64_t rows, int64_t n, uint16_t* out, int64_t out_stride, void* stream);

}  // namespace hyla::kernels

#endif  // HYLA_KERNELS_OPS_H_
