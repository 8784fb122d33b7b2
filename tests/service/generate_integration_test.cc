// Generate and sessions against a real hyla-server (the embedded default NAtS-L model, CPU):
// concurrent streams equal the same requests run alone, session continuation equals one request
// over the concatenated text while processing only the new tokens, and a fork diverges without
// changing its parent.
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "service/raw_clients.h"
#include "tests/service/server_process.h"

namespace hyla::testing {
namespace {

using service::CheckHealth;
using service::ServingStatus;

class GenerateTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto s = ServerProcess::Start({"--workers=2", "--max-context=512", "--memory-budget=96M",
                                   "--queue-bound=128", "--stall-timeout=60s"});
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = s->release();
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }

  static v1::SessionInfo CreateSession(v1::Hyla::Stub& stub, const std::string& id,
                                       const std::string& prefix) {
    grpc::ClientContext ctx;
    v1::CreateSessionRequest req;
    req.set_session_id(id);
    if (!prefix.empty()) req.set_text(prefix);
    v1::SessionInfo info;
    const grpc::Status st = stub.CreateSession(&ctx, req, &info);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return info;
  }
  static v1::SessionInfo GetSession(v1::Hyla::Stub& stub, const std::string& id) {
    grpc::ClientContext ctx;
    v1::GetSessionRequest req;
    req.set_session_id(id);
    v1::SessionInfo info;
    const grpc::Status st = stub.GetSession(&ctx, req, &info);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return info;
  }
  static grpc::Status DeleteSession(v1::Hyla::Stub& stub, const std::string& id) {
    grpc::ClientContext ctx;
    v1::DeleteSessionRequest req;
    req.set_session_id(id);
    v1::DeleteSessionResponse resp;
    return stub.DeleteSession(&ctx, req, &resp);
  }

  static ServerProcess* server_;
};
ServerProcess* GenerateTest::server_ = nullptr;

// A one-off request over explicit token ids with the sampling of `like`.
v1::GenerateRequest OverTokens(const std::vector<int32_t>& ids, const v1::GenerateRequest& like) {
  v1::GenerateRequest r = like;
  r.clear_session_id();
  r.mutable_token_ids()->mutable_ids()->Assign(ids.begin(), ids.end());
  return r;
}

std::vector<int32_t> Bytes(const std::string& s) {
  return std::vector<int32_t>(reinterpret_cast<const unsigned char*>(s.data()),
                              reinterpret_cast<const unsigned char*>(s.data()) + s.size());
}

TEST_F(GenerateTest, SixtyFourConcurrentStreamsEqualEachRequestAlone) {
  constexpr int kStreams = 64;
  constexpr int kTokens = 24;
  std::vector<v1::GenerateRequest> requests;
  for (int i = 0; i < kStreams; ++i) {
    // Prompts of different lengths (some span a 64-token chunk) and seeds.
    std::string prompt = absl::StrCat("Request ", i, ": ");
    prompt += std::string(static_cast<size_t>((i * 7) % 90), static_cast<char>('a' + i % 26));
    requests.push_back(SampledRequest(prompt, kTokens, 1000 + static_cast<uint64_t>(i)));
  }
  auto stub = server_->NewStub();
  std::vector<GenerateResult> alone(kStreams);
  for (int i = 0; i < kStreams; ++i) {
    alone[i] = RunGenerate(*stub, requests[i]);
    ASSERT_TRUE(alone[i].status.ok()) << alone[i].status.error_message();
    ASSERT_EQ(alone[i].token_ids.size(), static_cast<size_t>(kTokens));
  }

  std::vector<GenerateResult> together(kStreams);
  std::vector<std::thread> threads;
  auto channel = server_->NewChannel();
  for (int i = 0; i < kStreams; ++i) {
    threads.emplace_back([&, i] {
      auto s = v1::Hyla::NewStub(channel);
      together[i] = RunGenerate(*s, requests[i]);
    });
  }
  for (std::thread& t : threads) t.join();
  int distinct = 0;
  for (int i = 0; i < kStreams; ++i) {
    ASSERT_TRUE(together[i].status.ok()) << i << ": " << together[i].status.error_message();
    EXPECT_EQ(together[i].token_ids, alone[i].token_ids) << "stream " << i;
    EXPECT_EQ(together[i].text, alone[i].text) << "stream " << i;
    ASSERT_TRUE(together[i].finished.has_value());
    EXPECT_EQ(together[i].finished->reason(), v1::FINISH_REASON_LENGTH);
    EXPECT_EQ(together[i].finished->usage().generated_tokens(), kTokens);
    EXPECT_EQ(together[i].finished->usage().prompt_tokens(),
              static_cast<int>(requests[i].text().size()));
    if (i > 0 && together[i].token_ids != together[0].token_ids) ++distinct;
  }
  EXPECT_GT(distinct, kStreams / 2);  // the seeds and prompts matter: not one fixed output

  // Health is SERVING after the load.
  auto health = CheckHealth(server_->NewChannel(), "", absl::Seconds(10));
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(*health, ServingStatus::kServing);
  for (const char* name : {"hyla.v1.Hyla", "readiness", "liveness"}) {
    auto h = CheckHealth(server_->NewChannel(), name, absl::Seconds(10));
    ASSERT_TRUE(h.ok()) << name << ": " << h.status();
    EXPECT_EQ(*h, ServingStatus::kServing) << name;
  }
}

TEST_F(GenerateTest, SessionContinuationEqualsOneRequestOverTheConcatenation) {
  auto stub = server_->NewStub();
  const std::string a =
      "The first turn of a conversation, long enough to cross one chunk: " + std::string(20, 'x');
  const std::string b = " And the second turn.";
  v1::GenerateRequest first = SampledRequest(a, 40, 11);
  first.set_session_id("continuation");
  CreateSession(*stub, "continuation", "");
  const GenerateResult r1 = RunGenerate(*stub, first);
  ASSERT_TRUE(r1.status.ok()) << r1.status.error_message();
  ASSERT_EQ(r1.token_ids.size(), 40u);
  EXPECT_EQ(r1.finished->usage().prompt_tokens(), static_cast<int>(a.size()));

  v1::GenerateRequest second = SampledRequest(b, 30, 12);
  second.set_session_id("continuation");
  const GenerateResult r2 = RunGenerate(*stub, second);
  ASSERT_TRUE(r2.status.ok()) << r2.status.error_message();
  ASSERT_EQ(r2.token_ids.size(), 30u);

  // The same tokens as one request over A + its output + B.
  std::vector<int32_t> all = Bytes(a);
  all.insert(all.end(), r1.token_ids.begin(), r1.token_ids.end());
  const std::vector<int32_t> bb = Bytes(b);
  all.insert(all.end(), bb.begin(), bb.end());
  const GenerateResult whole = RunGenerate(*stub, OverTokens(all, second));
  ASSERT_TRUE(whole.status.ok()) << whole.status.error_message();
  EXPECT_EQ(r2.token_ids, whole.token_ids);

  // Only the new tokens were processed: the continuation's prompt is B alone, and everything
  // before it came from the session's state.
  const v1::Usage& u2 = r2.finished->usage();
  EXPECT_EQ(u2.prompt_tokens(), static_cast<int>(b.size()));
  const int before = static_cast<int>(a.size()) + 40;
  EXPECT_GE(u2.reused_tokens(), before - 1);  // the last sampled token may still be pending
  EXPECT_LE(u2.reused_tokens(), before);
  EXPECT_EQ(whole.finished->usage().prompt_tokens(), static_cast<int>(all.size()));
  EXPECT_EQ(whole.finished->usage().reused_tokens(), 0);

  const v1::SessionInfo info = GetSession(*stub, "continuation");
  EXPECT_GE(info.context_tokens(), static_cast<int64_t>(all.size()) + 29);
  EXPECT_LE(info.context_tokens(), static_cast<int64_t>(all.size()) + 30);
  EXPECT_GT(info.state().slot_bytes(), 0);
  EXPECT_FALSE(info.busy());
  EXPECT_TRUE(DeleteSession(*stub, "continuation").ok());
  EXPECT_EQ(DeleteSession(*stub, "continuation").error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(GenerateTest, SessionCreatedWithAPrefixContinuesLikeOneRequest) {
  auto stub = server_->NewStub();
  const std::string prefix = "A system prompt that the session keeps in its state. ";
  const std::string question = "Question?";
  const v1::SessionInfo created = CreateSession(*stub, "", prefix);
  ASSERT_FALSE(created.session_id().empty());  // a generated id
  EXPECT_EQ(created.context_tokens(), static_cast<int64_t>(prefix.size()));

  v1::GenerateRequest q = SampledRequest(question, 25, 5);
  q.set_session_id(created.session_id());
  const GenerateResult on_session = RunGenerate(*stub, q);
  ASSERT_TRUE(on_session.status.ok()) << on_session.status.error_message();
  const GenerateResult whole = RunGenerate(*stub, SampledRequest(prefix + question, 25, 5));
  ASSERT_TRUE(whole.status.ok());
  EXPECT_EQ(on_session.token_ids, whole.token_ids);
  EXPECT_EQ(on_session.text, whole.text);
  EXPECT_EQ(on_session.finished->usage().prompt_tokens(), static_cast<int>(question.size()));
  EXPECT_GE(on_session.finished->usage().reused_tokens(), static_cast<int>(prefix.size()) - 1);
  EXPECT_TRUE(DeleteSession(*stub, created.session_id()).ok());
}

// Session affinity routes a fork by its parent's id, to the replica that holds the parent: the
// server must create the child on the parent's worker (and a fork of a fork there too).
TEST_F(GenerateTest, ForksStayOnTheirParentsWorker) {
  auto stub = server_->NewStub();
  constexpr int kParents = 6;
  std::set<int> workers;
  for (int i = 0; i < kParents; ++i) {
    const std::string id = absl::StrCat("affine-", i);
    const v1::SessionInfo parent = CreateSession(*stub, id, absl::StrCat("Parent ", i, ". "));
    workers.insert(static_cast<int>(parent.worker()));
    std::string from = id;
    for (int depth = 1; depth <= 2; ++depth) {  // a child, then a grandchild
      const std::string child_id = absl::StrCat(id, "-fork", depth);
      grpc::ClientContext ctx;
      v1::ForkSessionRequest req;
      req.set_session_id(from);
      req.set_new_session_id(child_id);
      v1::SessionInfo child;
      const grpc::Status st = stub->ForkSession(&ctx, req, &child);
      ASSERT_TRUE(st.ok()) << st.error_message();
      EXPECT_EQ(child.worker(), parent.worker()) << child_id;
      EXPECT_EQ(GetSession(*stub, child_id).worker(), parent.worker()) << child_id;
      from = child_id;
    }
  }
  // Both workers held parents: the check above could have failed.
  EXPECT_EQ(workers.size(), 2u);
  for (int i = 0; i < kParents; ++i) {
    for (const char* suffix : {"-fork2", "-fork1", ""}) {
      EXPECT_TRUE(DeleteSession(*stub, absl::StrCat("affine-", i, suffix)).ok());
    }
  }
}

TEST_F(GenerateTest, ForkDivergesWithoutChangingItsParent) {
  auto stub = server_->NewStub();
  const std::string prefix = "Shared history of two branches. ";
  CreateSession(*stub, "parent", prefix);
  v1::GenerateRequest turn = SampledRequest("Common turn.", 20, 21);
  turn.set_session_id("parent");
  const GenerateResult common = RunGenerate(*stub, turn);
  ASSERT_TRUE(common.status.ok());
  const v1::SessionInfo parent_before = GetSession(*stub, "parent");

  v1::SessionInfo child;
  {
    grpc::ClientContext ctx;
    v1::ForkSessionRequest req;
    req.set_session_id("parent");
    req.set_new_session_id("child");
    const grpc::Status st = stub->ForkSession(&ctx, req, &child);
    ASSERT_TRUE(st.ok()) << st.error_message();
  }
  EXPECT_EQ(child.session_id(), "child");
  EXPECT_EQ(child.context_tokens(), parent_before.context_tokens());

  // The child goes one way...
  v1::GenerateRequest child_turn = SampledRequest(" Branch B goes on.", 30, 31);
  child_turn.set_session_id("child");
  const GenerateResult child_out = RunGenerate(*stub, child_turn);
  ASSERT_TRUE(child_out.status.ok()) << child_out.status.error_message();
  // ...and the parent is unchanged by it.
  const v1::SessionInfo parent_after = GetSession(*stub, "parent");
  EXPECT_EQ(parent_after.context_tokens(), parent_before.context_tokens());
  EXPECT_GT(GetSession(*stub, "child").context_tokens(), parent_before.context_tokens());

  // The parent continues exactly as if the fork had never happened...
  v1::GenerateRequest parent_turn = SampledRequest(" Branch A goes on.", 30, 41);
  parent_turn.set_session_id("parent");
  const GenerateResult parent_out = RunGenerate(*stub, parent_turn);
  ASSERT_TRUE(parent_out.status.ok());
  std::vector<int32_t> history = Bytes(prefix + "Common turn.");
  history.insert(history.end(), common.token_ids.begin(), common.token_ids.end());
  std::vector<int32_t> parent_all = history;
  for (int32_t t : Bytes(" Branch A goes on.")) parent_all.push_back(t);
  const GenerateResult parent_ref = RunGenerate(*stub, OverTokens(parent_all, parent_turn));
  EXPECT_EQ(parent_out.token_ids, parent_ref.token_ids);
  // ...and so does the child, from the same shared history.
  std::vector<int32_t> child_all = history;
  for (int32_t t : Bytes(" Branch B goes on.")) child_all.push_back(t);
  const GenerateResult child_ref = RunGenerate(*stub, OverTokens(child_all, child_turn));
  EXPECT_EQ(child_out.token_ids, child_ref.token_ids);
  // They diverged.
  EXPECT_NE(child_out.token_ids, parent_out.token_ids);

  // A fork of an unknown session, and onto a taken id.
  {
    grpc::ClientContext ctx;
    v1::ForkSessionRequest req;
    req.set_session_id("no-such-session");
    v1::SessionInfo out;
    EXPECT_EQ(stub->ForkSession(&ctx, req, &out).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  {
    grpc::ClientContext ctx;
    v1::ForkSessionRequest req;
    req.set_session_id("parent");
    req.set_new_session_id("child");
    v1::SessionInfo out;
    EXPECT_EQ(stub->ForkSession(&ctx, req, &out).error_code(), grpc::StatusCode::ALREADY_EXISTS);
  }
  {
    grpc::ClientContext ctx;
    v1::ListSessionsResponse list;
    ASSERT_TRUE(stub->ListSessions(&ctx, v1::ListSessionsRequest(), &list).ok());
    std::vector<std::string> ids;
    for (const auto& s : list.sessions()) ids.push_back(s.session_id());
    EXPECT_NE(std::find(ids.begin(), ids.end(), "parent"), ids.end());
    EXPECT_NE(std::find(ids.begin(), ids.end(), "child"), ids.end());
  }
  EXPECT_TRUE(DeleteSession(*stub, "child").ok());
  EXPECT_TRUE(DeleteSession(*stub, "parent").ok());
}

TEST_F(GenerateTest, BusySessionIsFailedPrecondition) {
  auto stub = server_->NewStub();
  CreateSession(*stub, "busy", "x");
  v1::GenerateRequest long_turn = SampledRequest("go", 400, 1);
  long_turn.set_session_id("busy");
  grpc::ClientContext ctx;
  auto reader = stub->Generate(&ctx, long_turn);
  v1::GenerateResponse first;
  ASSERT_TRUE(reader->Read(&first));  // running now: the session is pinned
  const GenerateResult second = RunGenerate(*stub, long_turn);
  EXPECT_EQ(second.status.error_code(), grpc::StatusCode::FAILED_PRECONDITION)
      << second.status.error_message();
  EXPECT_EQ(DeleteSession(*stub, "busy").error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  ctx.TryCancel();
  v1::GenerateResponse rest;
  while (reader->Read(&rest)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  // Once the request is over, the session is idle again.
  EXPECT_TRUE(WaitFor([&] { return DeleteSession(*stub, "busy").ok(); }, absl::Seconds(10)));
}

TEST_F(GenerateTest, StopStringsLogprobsAndTokenInput) {
  auto stub = server_->NewStub();
  // Greedy over explicit token ids, with logprobs of the chosen token and 3 alternatives.
  v1::GenerateRequest r;
  for (int32_t id : Bytes("token ids in")) r.mutable_token_ids()->add_ids(id);
  r.mutable_sampling()->set_temperature(0);
  r.mutable_stopping()->set_max_new_tokens(12);
  r.mutable_stopping()->set_ignore_eos(true);
  r.mutable_logprobs()->set_enabled(true);
  r.mutable_logprobs()->set_top_n(3);
  grpc::ClientContext ctx;
  auto reader = stub->Generate(&ctx, r);
  v1::GenerateResponse resp;
  std::vector<int32_t> ids;
  int logprobs = 0;
  while (reader->Read(&resp)) {
    ASSERT_EQ(resp.logprobs_size(), resp.token_ids_size());
    for (int i = 0; i < resp.token_ids_size(); ++i) {
      ids.push_back(resp.token_ids(i));
      EXPECT_EQ(resp.logprobs(i).id(), resp.token_ids(i));
      EXPECT_LE(resp.logprobs(i).logprob(), 0.0f);
      ASSERT_EQ(resp.logprobs(i).top_size(), 3);
      // Greedy: the chosen token is the most likely one.
      EXPECT_EQ(resp.logprobs(i).top(0).id(), resp.token_ids(i));
      ++logprobs;
    }
  }
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_EQ(ids.size(), 12u);
  EXPECT_EQ(logprobs, 12);

  // A stop string cut from a known greedy output: generation stops there and the match is not
  // part of the text.
  const GenerateResult greedy = RunGenerate(*stub, [] {
    v1::GenerateRequest g;
    g.set_text("stop here");
    g.mutable_sampling()->set_temperature(0);
    g.mutable_stopping()->set_max_new_tokens(16);
    g.mutable_stopping()->set_ignore_eos(true);
    return g;
  }());
  ASSERT_TRUE(greedy.status.ok());
  // Characters 2..4 of the greedy text (whole UTF-8 characters) as the stop string.
  std::vector<size_t> starts;
  for (size_t i = 0; i < greedy.text.size(); ++i) {
    if ((static_cast<unsigned char>(greedy.text[i]) & 0xC0) != 0x80) starts.push_back(i);
  }
  starts.push_back(greedy.text.size());
  ASSERT_GE(starts.size(), 6u) << "greedy output too short: " << greedy.text;
  const std::string stop = greedy.text.substr(starts[2], starts[5] - starts[2]);
  v1::GenerateRequest g;
  g.set_text("stop here");
  g.mutable_sampling()->set_temperature(0);
  g.mutable_stopping()->set_max_new_tokens(16);
  g.mutable_stopping()->set_ignore_eos(true);
  g.mutable_stopping()->add_stop(stop);
  const GenerateResult stopped = RunGenerate(*stub, g);
  ASSERT_TRUE(stopped.status.ok()) << stopped.status.error_message();
  ASSERT_TRUE(stopped.finished.has_value());
  EXPECT_EQ(stopped.finished->reason(), v1::FINISH_REASON_STOP);
  EXPECT_EQ(stopped.finished->matched_stop(), stop);
  EXPECT_EQ(stopped.text, greedy.text.substr(0, greedy.text.find(stop)));
  EXPECT_LT(stopped.token_ids.size(), greedy.token_ids.size());
}

TEST_F(GenerateTest, TokenizeDetokenizeAndModelInfo) {
  auto stub = server_->NewStub();
  grpc::ClientContext c1;
  v1::TokenizeRequest treq;
  treq.set_text("héllo");
  v1::TokenizeResponse tresp;
  ASSERT_TRUE(stub->Tokenize(&c1, treq, &tresp).ok());
  EXPECT_EQ(std::vector<int32_t>(tresp.ids().begin(), tresp.ids().end()), Bytes("héllo"));
  grpc::ClientContext c2;
  v1::DetokenizeRequest dreq;
  dreq.mutable_ids()->CopyFrom(tresp.ids());
  v1::DetokenizeResponse dresp;
  ASSERT_TRUE(stub->Detokenize(&c2, dreq, &dresp).ok());
  EXPECT_EQ(dresp.text(), "héllo");

  grpc::ClientContext c3;
  v1::ModelInfo info;
  ASSERT_TRUE(stub->GetModelInfo(&c3, v1::GetModelInfoRequest(), &info).ok());
  EXPECT_EQ(info.family(), "natsl");
  EXPECT_EQ(info.model_type(), "neural_attention_search_linear_attn_gdn");
  EXPECT_EQ(std::vector<std::string>(info.layer_kinds().begin(), info.layer_kinds().end()),
            (std::vector<std::string>{"gdn", "natsl", "gdn", "natsl"}));
  EXPECT_EQ(info.vocab_size(), 256);
  EXPECT_EQ(info.hidden_size(), 64);
  EXPECT_EQ(info.parameters(), 269712);  // models/default/README.md
  EXPECT_EQ(info.max_context(), 512);
  EXPECT_EQ(info.workers(), 2);
  EXPECT_EQ(info.device(), ExpectedDevice() + "," + ExpectedDevice());
  EXPECT_EQ(info.slot_bytes(), 111232);
  EXPECT_EQ(info.kv_block_bytes(), 24576);
  // The plan: 48 MiB per worker, each slot with the 4 x 8 blocks of a 512-token sequence.
  EXPECT_EQ(info.state_slots(), 2 * 56);
  EXPECT_LE(info.memory_budget_bytes(), int64_t{96} << 20);
  EXPECT_EQ(info.memory_budget_bytes(), int64_t{info.state_slots()} * info.slot_bytes() +
                                            info.kv_blocks() * info.kv_block_bytes());
  EXPECT_EQ(info.bos_token_id(), 1);
  EXPECT_EQ(info.eos_token_id(), 2);
}

}  // namespace
}  // namespace hyla::testing
