// hyla-bench: gRPC load generator for hyla-server (see bench/hyla_bench.h, docs/benchmarks.md).
#include <iostream>
#include <string>
#include <vector>

#include "bench/hyla_bench.h"

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  return hyla::bench::RunBenchMain(args, std::cout, std::cerr);
}
