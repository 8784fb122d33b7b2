// The `hyla` command-line client of hyla-server:
//
//   hyla generate [--max-tokens N] [--session ID] [--temperature T] [--top-p P] [--top-k K]
//                 [--min-p P] [--seed S] [--stop STR]... [--ignore-eos] PROMPT
//   hyla session create [--session ID] [PREFIX] | get ID | fork ID [NEW_ID] | delete ID | list
//   hyla info
//   hyla health [--service NAME]       exit 0 when SERVING (Docker HEALTHCHECK), 1 otherwise
//   hyla tokenize TEXT
//   hyla services                      the services listed by server reflection
//
// Common flags: --server HOST:PORT (default $HYLA_SERVER or localhost:50051), --token TOKEN
// (bearer token; default $HYLA_AUTH_TOKEN), --tls-ca FILE (TLS with this root certificate),
// --timeout DURATION (per call; default none for generate, 30s otherwise).
//
// `generate` prints the text to `out` as it arrives and the finish reason and usage to `err` at
// the end. Exit status: 0 success, 1 an RPC failed (its code and message on `err`), 2 usage.
//
// Thread-safety: RunCli is reentrant (it owns its channel).
#ifndef HYLA_SERVICE_CLI_H_
#define HYLA_SERVICE_CLI_H_

#include <ostream>
#include <string>
#include <vector>

namespace hyla::service {

int RunCli(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

std::string CliUsage();

}  // namespace hyla::service

#endif  // HYLA_SERVICE_CLI_H_
