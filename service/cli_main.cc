// hyla: the command-line client of hyla-server (see service/cli.h and `hyla --help`).
#include <iostream>
#include <string>
#include <vector>

#include "service/cli.h"

int main(int argc, char** argv) {
  return hyla::service::RunCli(std::vector<std::string>(argv + 1, argv + argc), std::cout,
                               std::cerr);
}
