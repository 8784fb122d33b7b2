// STUB (owner: helper): kernels of paged_attention_prefill. API in kernels/paged_attention_prefill.h.
#include "kernels/ops.h"
