// STUB (owner: helper): kernels of gated_rmsnorm. API in kernels/gated_rmsnorm.h.
#include "kernels/ops.h"
