// Host-only API of kernels/paged_attention_prefill.cu: part of kernels/ops.h (include that, never this). STUB.
#ifndef HYLA_KERNELS_PAGED_ATTENTION_PREFILL_H_
#define HYLA_KERNELS_PAGED_ATTENTION_PREFILL_H_

#include <cstddef>
#include <cstdint>

namespace hyla::kernels {}  // namespace hyla::kernels

#endif  // HYLA_KERNELS_PAGED_ATTENTION_PREFILL_H_
