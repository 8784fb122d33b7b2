// STUB (owner: helper): kernels of rope. API in kernels/rope.h.
#include "kernels/ops.h"
