// STUB (owner: helper): kernels of nha. API in kernels/nha.h.
#include "kernels/ops.h"
