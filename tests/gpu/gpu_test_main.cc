// main() of the GPU kernel test programs: GoogleTest plus the per-kernel error summary
// ("[gpu-error] ..." lines, gpu_test_util.h) printed when the program ends.
#include "gtest/gtest.h"
#include "tests/gpu/gpu_test_util.h"

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  ::testing::UnitTest::GetInstance()->listeners().Append(new hyla::gpu_test::ErrorLogPrinter());
  return RUN_ALL_TESTS();
}
