// STUB (owner: helper): kernels of short_conv_prefill. API in kernels/short_conv_prefill.h.
#include "kernels/ops.h"
