// The `hyla` command-line client of hyla-server:
//
//   hyla generate [--max-tokens N] [--session ID] [--affinity KEY] [--temperature T] [--top-p P]
//   [--top-k K]
//                 [--min-p P] [--seed S] [--stop STR]... [--ignore-eos] PROMPT
//   hyla session create [--session ID] [PREFIX] | get ID | fork ID [NEW_ID] | delete ID | list
//   hyla info
//   hyla health [--service NAME]       exit 0 when SERVING (Docker HEALTHCHECK), 1 otherwise
//   hyla tokenize TEXT
//   hyla services                      the services listed by server reflection
//
// Session affinity: generate (with --session) and the session commands send the request metadata
// `session-id: ID` naming the session the call is about — for fork the PARENT's id, so that a
// load balancer hashing on it (deploy/envoy/) creates the child on the replica that holds the
// parent. `--affinity KEY` sends KEY instead: a forked session lives on its parent's replica, so
// later calls on it send its family's first id.
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

#include "absl/strings/string_view.h"

namespace hyla::service {

// The request metadata key that load balancers hash on to keep a session on its replica.
inline constexpr absl::string_view kSessionIdMetadata = "session-id";

int RunCli(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

std::string CliUsage();

}  // namespace hyla::service

#endif  // HYLA_SERVICE_CLI_H_
