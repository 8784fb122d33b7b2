// The one place where runtime errors (absl::Status) become gRPC statuses, and the retry hint that
// goes with an overload.
//
// Codes map one to one (absl and gRPC share the canonical code numbers) with one exception: the
// runtime reports a sequence that reached its per-sequence softmax-cache cap (policy "reject") as
// RESOURCE_EXHAUSTED; the API keeps RESOURCE_EXHAUSTED for per-client quotas, so that becomes
// OUT_OF_RANGE, and any other runtime RESOURCE_EXHAUSTED (state memory ran out) becomes
// UNAVAILABLE. UNAVAILABLE statuses carry a retry hint (see RetryAfterMs) that the service sends
// as trailing metadata "retry-after-ms" (and "grpc-retry-pushback-ms", which gRPC's own retry
// policy honours), so clients and load balancers retry elsewhere or later.
//
// Thread-safety: pure functions.
#ifndef HYLA_SERVICE_STATUS_MAPPING_H_
#define HYLA_SERVICE_STATUS_MAPPING_H_

#include <cstdint>
#include <optional>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "grpcpp/support/status.h"

namespace hyla::service {

// Trailing metadata keys of the retry hint.
inline constexpr char kRetryAfterMsKey[] = "retry-after-ms";
inline constexpr char kGrpcRetryPushbackMsKey[] = "grpc-retry-pushback-ms";

// Why the server refused work with UNAVAILABLE.
enum class UnavailableKind {
  kQueueFull,  // the request queue is at its bound
  kMemory,     // the state-memory budget is full
  kDraining,   // the server is shutting down: retry on another server at once
  kOther,      // anything else the runtime reports as unavailable
};

// Classifies an UNAVAILABLE status from the runtime (by the engine's documented messages:
// "overloaded: request queue full", "overloaded: state memory budget full", "... draining").
UnavailableKind ClassifyUnavailable(const absl::Status& status);

// Milliseconds a client should wait before retrying, for a status mapped to UNAVAILABLE; nullopt
// for any other status. Queue full: 500; memory: 2000; draining: 0 (go elsewhere now); other: 1000.
std::optional<int64_t> RetryAfterMs(const absl::Status& status);

// absl::Status → grpc::Status (see the header comment for the code mapping). The message is
// kept as it is.
grpc::Status ToGrpcStatus(const absl::Status& status);

// The gRPC name of a code ("OK", "INVALID_ARGUMENT", ...), as Prometheus labels use it.
absl::string_view GrpcCodeName(grpc::StatusCode code);

}  // namespace hyla::service

#endif  // HYLA_SERVICE_STATUS_MAPPING_H_
