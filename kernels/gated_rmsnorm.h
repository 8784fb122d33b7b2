// Host-only API of kernels/gated_rmsnorm.cu: part of kernels/ops.h (include that, never this). STUB.
#ifndef HYLA_KERNELS_GATED_RMSNORM_H_
#define HYLA_KERNELS_GATED_RMSNORM_H_

#include <cstddef>
#include <cstdint>

namespace hyla::kernels {}  // namespace hyla::kernels

#endif  // HYLA_KERNELS_GATED_RMSNORM_H_
