// STUB (owner: helper): kernels of sampling. API in kernels/sampling.h.
#include "kernels/ops.h"
