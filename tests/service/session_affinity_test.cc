// Session affinity metadata: the `hyla` CLI and examples/python/client.py send `session-id: ID`
// on every call about a session (for a fork: the PARENT's id), which Envoy hashes on
// (deploy/envoy/). A recording test double of hyla.v1.Hyla on 127.0.0.1 stores the metadata of
// each call; the clients run as real processes against it.
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "gtest/gtest.h"
#include "hyla/v1/hyla.grpc.pb.h"
#include "tests/service/server_process.h"

namespace hyla::testing {
namespace {

struct Call {
  std::string method;
  std::string session;                   // the session id in the request ("" when none)
  std::vector<std::string> session_ids;  // values of the `session-id` metadata
};

// Answers every call with a small valid response and records it.
class RecordingHyla final : public v1::Hyla::Service {
 public:
  std::vector<Call> calls() const {
    absl::MutexLock lock(&mu_);
    return calls_;
  }

  grpc::Status Generate(grpc::ServerContext* ctx, const v1::GenerateRequest* req,
                        grpc::ServerWriter<v1::GenerateResponse>* writer) override {
    Record(ctx, "Generate", req->session_id());
    v1::GenerateResponse r;
    r.add_token_ids(104);
    r.set_text("h");
    r.mutable_finished()->set_reason(v1::FINISH_REASON_LENGTH);
    r.mutable_finished()->mutable_usage()->set_prompt_tokens(3);
    r.mutable_finished()->mutable_usage()->set_generated_tokens(1);
    writer->Write(r);
    return grpc::Status::OK;
  }
  grpc::Status CreateSession(grpc::ServerContext* ctx, const v1::CreateSessionRequest* req,
                             v1::SessionInfo* out) override {
    Record(ctx, "CreateSession", req->session_id());
    out->set_session_id(req->session_id().empty() ? "server-picked" : req->session_id());
    return grpc::Status::OK;
  }
  grpc::Status GetSession(grpc::ServerContext* ctx, const v1::GetSessionRequest* req,
                          v1::SessionInfo* out) override {
    Record(ctx, "GetSession", req->session_id());
    out->set_session_id(req->session_id());
    return grpc::Status::OK;
  }
  grpc::Status ForkSession(grpc::ServerContext* ctx, const v1::ForkSessionRequest* req,
                           v1::SessionInfo* out) override {
    Record(ctx, "ForkSession", req->session_id());
    out->set_session_id(req->new_session_id().empty() ? req->session_id() + "-child"
                                                      : req->new_session_id());
    return grpc::Status::OK;
  }
  grpc::Status DeleteSession(grpc::ServerContext* ctx, const v1::DeleteSessionRequest* req,
                             v1::DeleteSessionResponse*) override {
    Record(ctx, "DeleteSession", req->session_id());
    return grpc::Status::OK;
  }
  grpc::Status ListSessions(grpc::ServerContext* ctx, const v1::ListSessionsRequest*,
                            v1::ListSessionsResponse*) override {
    Record(ctx, "ListSessions", "");
    return grpc::Status::OK;
  }
  grpc::Status GetModelInfo(grpc::ServerContext* ctx, const v1::GetModelInfoRequest*,
                            v1::ModelInfo* out) override {
    Record(ctx, "GetModelInfo", "");
    out->set_family("fake");
    return grpc::Status::OK;
  }

 private:
  void Record(grpc::ServerContext* ctx, std::string method, std::string session) {
    Call c{std::move(method), std::move(session), {}};
    auto range = ctx->client_metadata().equal_range("session-id");
    for (auto it = range.first; it != range.second; ++it) {
      c.session_ids.emplace_back(it->second.data(), it->second.size());
    }
    absl::MutexLock lock(&mu_);
    calls_.push_back(std::move(c));
  }

  mutable absl::Mutex mu_;
  std::vector<Call> calls_ ABSL_GUARDED_BY(mu_);
};

class SessionAffinityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::EnableDefaultHealthCheckService(true);
    grpc::ServerBuilder b;
    int port = 0;
    b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    b.RegisterService(&service_);
    server_ = b.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_GT(port, 0);
    address_ = absl::StrCat("127.0.0.1:", port);
  }
  void TearDown() override {
    if (server_ != nullptr) server_->Shutdown();
  }
  ProgramResult Hyla(std::vector<std::string> args) {
    std::vector<std::string> argv = {CliBinary(), "--server", address_};
    argv.insert(argv.end(), args.begin(), args.end());
    ProgramResult r = RunProgram(argv);
    EXPECT_EQ(r.exit_code, 0) << args.front() << ": " << r.err;
    return r;
  }
  // The one recorded call, checked for its method.
  Call Last(const std::string& method) {
    const std::vector<Call> calls = service_.calls();
    EXPECT_FALSE(calls.empty());
    if (calls.empty()) return {};
    EXPECT_EQ(calls.back().method, method);
    return calls.back();
  }

  RecordingHyla service_;
  std::unique_ptr<grpc::Server> server_;
  std::string address_;
};

using Ids = std::vector<std::string>;

TEST_F(SessionAffinityTest, CliSendsTheSessionIdOfEveryCallAboutASession) {
  Hyla({"generate", "--max-tokens", "1", "no session"});
  EXPECT_EQ(Last("Generate").session_ids, Ids{});  // stateless calls carry none
  Hyla({"generate", "--session", "chat-1", "--max-tokens", "1", "hello"});
  Call c = Last("Generate");
  EXPECT_EQ(c.session, "chat-1");
  EXPECT_EQ(c.session_ids, Ids{"chat-1"});
  Hyla({"session", "create", "--session", "chat-1", "a prefix"});
  EXPECT_EQ(Last("CreateSession").session_ids, Ids{"chat-1"});
  Hyla({"session", "get", "chat-1"});
  EXPECT_EQ(Last("GetSession").session_ids, Ids{"chat-1"});
  // A fork is routed by its PARENT, to the replica that holds the parent.
  Hyla({"session", "fork", "chat-1", "chat-1b"});
  c = Last("ForkSession");
  EXPECT_EQ(c.session, "chat-1");
  EXPECT_EQ(c.session_ids, Ids{"chat-1"});
  // Later calls on the fork name its family's key with --affinity.
  Hyla({"generate", "--session", "chat-1b", "--affinity", "chat-1", "--max-tokens", "1", "x"});
  c = Last("Generate");
  EXPECT_EQ(c.session, "chat-1b");
  EXPECT_EQ(c.session_ids, Ids{"chat-1"});
  Hyla({"session", "delete", "chat-1b", "--affinity", "chat-1"});
  c = Last("DeleteSession");
  EXPECT_EQ(c.session, "chat-1b");
  EXPECT_EQ(c.session_ids, Ids{"chat-1"});
  Hyla({"session", "delete", "chat-1"});
  EXPECT_EQ(Last("DeleteSession").session_ids, Ids{"chat-1"});
  Hyla({"session", "list"});
  EXPECT_EQ(Last("ListSessions").session_ids, Ids{});
  Hyla({"info"});
  EXPECT_EQ(Last("GetModelInfo").session_ids, Ids{});
}

TEST_F(SessionAffinityTest, PythonClientSendsTheSessionIdAndTheParentsIdOnFork) {
  const std::string script = SourceDir() + "/examples/python/client.py";
  const ProgramResult r =
      RunProgram({"/usr/bin/python3", script, "--server", address_, "--stubs",
                  HYLA_PYTHON_STUBS_DIR, "--session", "py-chat", "--max-tokens", "1"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  std::map<std::string, int> seen;
  for (const Call& c : service_.calls()) {
    ++seen[c.method];
    if (c.method == "GetModelInfo" || c.method == "ListSessions" ||
        (c.method == "Generate" && c.session.empty())) {
      EXPECT_EQ(c.session_ids, Ids{}) << c.method;
      continue;
    }
    // Every call about the session or its fork is routed by the first session's id.
    EXPECT_EQ(c.session_ids, Ids{"py-chat"}) << c.method << " " << c.session;
    if (c.method == "CreateSession" || c.method == "ForkSession") {
      EXPECT_EQ(c.session, "py-chat") << c.method;
    }
  }
  EXPECT_EQ(seen["CreateSession"], 1);
  EXPECT_EQ(seen["ForkSession"], 1);
  EXPECT_EQ(seen["DeleteSession"], 2);
  EXPECT_EQ(seen["Generate"], 3);
}

}  // namespace
}  // namespace hyla::testing
