// Status propagation helpers, in the style of TF Serving / Abseil internal macros.
#ifndef HYLA_RUNTIME_BASE_STATUS_MACROS_H_
#define HYLA_RUNTIME_BASE_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define HYLA_RETURN_IF_ERROR(expr)               \
  do {                                           \
    const ::absl::Status hyla_status_ = (expr);  \
    if (!hyla_status_.ok()) return hyla_status_; \
  } while (0)

#define HYLA_CONCAT_INNER_(a, b) a##b
#define HYLA_CONCAT_(a, b) HYLA_CONCAT_INNER_(a, b)

#define HYLA_ASSIGN_OR_RETURN(lhs, expr) \
  HYLA_ASSIGN_OR_RETURN_IMPL_(HYLA_CONCAT_(hyla_statusor_, __LINE__), lhs, expr)

#define HYLA_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr)   \
  auto statusor = (expr);                                  \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = std::move(statusor).value()

#endif  // HYLA_RUNTIME_BASE_STATUS_MACROS_H_
