#include "service/status_mapping.h"

#include <string>

#include "absl/strings/match.h"

namespace hyla::service {

UnavailableKind ClassifyUnavailable(const absl::Status& status) {
  const absl::string_view m = status.message();
  if (absl::StrContains(m, "draining")) return UnavailableKind::kDraining;
  if (absl::StrContains(m, "queue full")) return UnavailableKind::kQueueFull;
  if (absl::StrContains(m, "memory")) return UnavailableKind::kMemory;
  return UnavailableKind::kOther;
}

namespace {

// Is this runtime RESOURCE_EXHAUSTED the per-sequence cap (a property of the request) rather than
// the pool (a property of the server's load)?
bool IsPerSequenceCap(const absl::Status& status) {
  return absl::IsResourceExhausted(status) && absl::StrContains(status.message(), "cap reached");
}

}  // namespace

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  grpc::StatusCode code = static_cast<grpc::StatusCode>(static_cast<int>(status.code()));
  if (absl::IsResourceExhausted(status)) {
    code =
        IsPerSequenceCap(status) ? grpc::StatusCode::OUT_OF_RANGE : grpc::StatusCode::UNAVAILABLE;
  }
  if (static_cast<int>(code) < 0 || static_cast<int>(code) > 16) code = grpc::StatusCode::UNKNOWN;
  return grpc::Status(code, std::string(status.message()));
}

std::optional<int64_t> RetryAfterMs(const absl::Status& status) {
  if (ToGrpcStatus(status).error_code() != grpc::StatusCode::UNAVAILABLE) return std::nullopt;
  if (absl::IsResourceExhausted(status)) return 2000;  // the state pool ran out
  switch (ClassifyUnavailable(status)) {
    case UnavailableKind::kQueueFull:
      return 500;
    case UnavailableKind::kMemory:
      return 2000;
    case UnavailableKind::kDraining:
      return 0;
    case UnavailableKind::kOther:
      return 1000;
  }
  return 1000;
}

absl::string_view GrpcCodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK:
      return "OK";
    case grpc::StatusCode::CANCELLED:
      return "CANCELLED";
    case grpc::StatusCode::UNKNOWN:
      return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND:
      return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS:
      return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED:
      return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION:
      return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED:
      return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE:
      return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED:
      return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL:
      return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE:
      return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS:
      return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED:
      return "UNAUTHENTICATED";
    default:
      return "UNKNOWN";
  }
}

}  // namespace hyla::service
