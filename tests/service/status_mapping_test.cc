#include "service/status_mapping.h"

#include "absl/status/status.h"
#include "gtest/gtest.h"

namespace hyla::service {
namespace {

TEST(StatusMappingTest, CodesMapOneToOne) {
  struct Case {
    absl::Status in;
    grpc::StatusCode out;
  };
  const Case cases[] = {
      {absl::OkStatus(), grpc::StatusCode::OK},
      {absl::InvalidArgumentError("sampling.top_p must be in (0, 1], got 1.5"),
       grpc::StatusCode::INVALID_ARGUMENT},
      {absl::NotFoundError("session \"x\" not found"), grpc::StatusCode::NOT_FOUND},
      {absl::FailedPreconditionError("session busy"), grpc::StatusCode::FAILED_PRECONDITION},
      {absl::AlreadyExistsError("taken"), grpc::StatusCode::ALREADY_EXISTS},
      {absl::DeadlineExceededError("late"), grpc::StatusCode::DEADLINE_EXCEEDED},
      {absl::CancelledError("gone"), grpc::StatusCode::CANCELLED},
      {absl::UnavailableError("overloaded: request queue full (3 of 3 waiting)"),
       grpc::StatusCode::UNAVAILABLE},
      {absl::UnauthenticatedError("no token"), grpc::StatusCode::UNAUTHENTICATED},
      {absl::InternalError("bug"), grpc::StatusCode::INTERNAL},
  };
  for (const Case& c : cases) {
    const grpc::Status g = ToGrpcStatus(c.in);
    EXPECT_EQ(g.error_code(), c.out) << c.in;
    EXPECT_EQ(g.error_message(), std::string(c.in.message()));
  }
}

TEST(StatusMappingTest, ResourceExhaustedIsNeverServerOverload) {
  // The per-sequence cap is the request's problem: OUT_OF_RANGE.
  EXPECT_EQ(ToGrpcStatus(absl::ResourceExhaustedError(
                             "per-sequence softmax cache cap reached: 128 tokens in layer 1"))
                .error_code(),
            grpc::StatusCode::OUT_OF_RANGE);
  // The pool running out is the server's: UNAVAILABLE, with a retry hint.
  const absl::Status pool = absl::ResourceExhaustedError("KV block pool exhausted");
  EXPECT_EQ(ToGrpcStatus(pool).error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(RetryAfterMs(pool), 2000);
}

TEST(StatusMappingTest, RetryHintOnlyForUnavailable) {
  EXPECT_EQ(RetryAfterMs(absl::UnavailableError(
                "overloaded: request queue full (2 of 2 waiting); retry later")),
            500);
  EXPECT_EQ(RetryAfterMs(absl::UnavailableError(
                "overloaded: state memory budget full (2 requests already wait for memory)")),
            2000);
  EXPECT_EQ(RetryAfterMs(absl::UnavailableError("server is draining: no new requests")), 0);
  EXPECT_EQ(RetryAfterMs(absl::UnavailableError("something else")), 1000);
  EXPECT_EQ(RetryAfterMs(absl::InvalidArgumentError("x")), std::nullopt);
  EXPECT_EQ(RetryAfterMs(absl::OkStatus()), std::nullopt);
  EXPECT_EQ(RetryAfterMs(absl::ResourceExhaustedError("per-sequence softmax cache cap reached")),
            std::nullopt);
}

TEST(StatusMappingTest, ClassifiesUnavailable) {
  EXPECT_EQ(ClassifyUnavailable(absl::UnavailableError("overloaded: request queue full (1 of 1)")),
            UnavailableKind::kQueueFull);
  EXPECT_EQ(ClassifyUnavailable(absl::UnavailableError("overloaded: state memory budget full")),
            UnavailableKind::kMemory);
  EXPECT_EQ(ClassifyUnavailable(absl::UnavailableError("server is draining")),
            UnavailableKind::kDraining);
  EXPECT_EQ(ClassifyUnavailable(absl::UnavailableError("worker lost")), UnavailableKind::kOther);
}

TEST(StatusMappingTest, CodeNames) {
  EXPECT_EQ(GrpcCodeName(grpc::StatusCode::OK), "OK");
  EXPECT_EQ(GrpcCodeName(grpc::StatusCode::INVALID_ARGUMENT), "INVALID_ARGUMENT");
  EXPECT_EQ(GrpcCodeName(grpc::StatusCode::UNAVAILABLE), "UNAVAILABLE");
  EXPECT_EQ(GrpcCodeName(grpc::StatusCode::UNAUTHENTICATED), "UNAUTHENTICATED");
  EXPECT_EQ(GrpcCodeName(static_cast<grpc::StatusCode>(99)), "UNKNOWN");
}

}  // namespace
}  // namespace hyla::service
