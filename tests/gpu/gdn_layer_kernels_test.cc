// STUB (owner: helper): GPU tests of gdn_layer_kernels against the CPU reference.
#include "tests/gpu/gpu_test_util.h"
