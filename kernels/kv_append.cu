// STUB (owner: helper): kernels of kv_append. API in kernels/kv_append.h.
#include "kernels/ops.h"
