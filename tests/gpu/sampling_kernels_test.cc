// STUB (owner: helper): GPU tests of sampling_kernels against the CPU reference.
#include "tests/gpu/gpu_test_util.h"
