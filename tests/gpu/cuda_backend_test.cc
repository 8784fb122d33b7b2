// STUB: replaced by the CUDA backend tests.
#include "tests/gpu/gpu_test_util.h"
