// Host-only API of kernels/rope.cu: part of kernels/ops.h (include that, never this). STUB.
#ifndef HYLA_KERNELS_ROPE_H_
#define HYLA_KERNELS_ROPE_H_

#include <cstddef>
#include <cstdint>

namespace hyla::kernels {}  // namespace hyla::kernels

#endif  // HYLA_KERNELS_ROPE_H_
