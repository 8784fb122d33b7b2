// Clients for the two standard services hyla-server exposes beside its own API —
// grpc.health.v1.Health/Check and grpc.reflection.v1alpha.ServerReflection (list services) —
// written against the wire format directly. The libraries that ship their generated messages
// (libgrpc++ internals, grpc++_reflection) do not install client stubs, and a second copy of
// those .proto files in one process would collide in the protobuf descriptor pool, so the few
// fields needed are encoded and decoded by hand.
//
// Thread-safety: stateless functions; safe from any thread.
#ifndef HYLA_SERVICE_RAW_CLIENTS_H_
#define HYLA_SERVICE_RAW_CLIENTS_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/channel.h"

namespace hyla::service {

// grpc.health.v1.HealthCheckResponse.ServingStatus.
enum class ServingStatus { kUnknown = 0, kServing = 1, kNotServing = 2, kServiceUnknown = 3 };
const char* ServingStatusName(ServingStatus s);  // "SERVING", "NOT_SERVING", ...

// Health/Check for `service` ("" = the whole server). An RPC error (NOT_FOUND for an unknown
// service name, UNAVAILABLE when unreachable) is returned as the status.
absl::StatusOr<ServingStatus> CheckHealth(const std::shared_ptr<grpc::Channel>& channel,
                                          const std::string& service, absl::Duration timeout);

// The fully qualified names of the services the server lists through reflection.
absl::StatusOr<std::vector<std::string>> ListServices(const std::shared_ptr<grpc::Channel>& channel,
                                                      absl::Duration timeout);

}  // namespace hyla::service

#endif  // HYLA_SERVICE_RAW_CLIENTS_H_
