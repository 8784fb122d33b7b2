// STUB (owner: helper): kernels of natsl. API in kernels/natsl.h.
#include "kernels/ops.h"
