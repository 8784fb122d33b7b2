#include "service/convert.h"

#include <cmath>
#include <functional>
#include <limits>
#include <string>

#include "gtest/gtest.h"

namespace hyla::service {
namespace {

const ByteTokenizer kTokenizer(1, 2);

RequestLimits Limits() {
  RequestLimits l;
  l.vocab_size = 256;
  l.max_context = 512;
  l.has_tokenizer = true;
  return l;
}

v1::GenerateRequest Valid() {
  v1::GenerateRequest r;
  r.set_text("hello");
  return r;
}

TEST(ConvertTest, ValidRequestWithDefaults) {
  auto r = ToEngineRequest(Valid(), &kTokenizer, Limits(), 42);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->prompt, (std::vector<int32_t>{'h', 'e', 'l', 'l', 'o'}));
  EXPECT_EQ(r->sampling.temperature, 1.0f);
  EXPECT_EQ(r->sampling.top_p, 1.0f);
  EXPECT_EQ(r->sampling.repetition_penalty, 1.0f);
  EXPECT_EQ(r->sampling.seed, 42u);
  EXPECT_EQ(r->stopping.max_new_tokens, 0);
  EXPECT_FALSE(r->logprobs);
}

TEST(ConvertTest, CarriesEveryField) {
  v1::GenerateRequest q;
  q.mutable_token_ids()->add_ids(7);
  q.mutable_token_ids()->add_ids(255);
  q.set_session_id("chat-1");
  auto* s = q.mutable_sampling();
  s->set_temperature(0.0f);
  s->set_top_k(5);
  s->set_top_p(0.5f);
  s->set_min_p(0.1f);
  s->set_repetition_penalty(1.2f);
  s->set_presence_penalty(-1.0f);
  s->set_frequency_penalty(0.5f);
  s->set_seed(9);
  auto* st = q.mutable_stopping();
  st->set_max_new_tokens(10);
  st->set_min_new_tokens(2);
  st->add_stop("\n\n");
  st->add_stop_token_ids(2);
  st->set_ignore_eos(true);
  q.mutable_logprobs()->set_top_n(3);
  auto r = ToEngineRequest(q, &kTokenizer, Limits(), 42);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->prompt, (std::vector<int32_t>{7, 255}));
  EXPECT_EQ(r->session_id, "chat-1");
  EXPECT_EQ(r->sampling.temperature, 0.0f);
  EXPECT_EQ(r->sampling.top_k, 5);
  EXPECT_EQ(r->sampling.top_p, 0.5f);
  EXPECT_FLOAT_EQ(r->sampling.min_p, 0.1f);
  EXPECT_FLOAT_EQ(r->sampling.repetition_penalty, 1.2f);
  EXPECT_EQ(r->sampling.presence_penalty, -1.0f);
  EXPECT_EQ(r->sampling.frequency_penalty, 0.5f);
  EXPECT_EQ(r->sampling.seed, 9u);
  EXPECT_EQ(r->stopping.max_new_tokens, 10);
  EXPECT_EQ(r->stopping.min_new_tokens, 2);
  EXPECT_EQ(r->stopping.stop, (std::vector<std::string>{"\n\n"}));
  EXPECT_EQ(r->stopping.stop_token_ids, (std::vector<int32_t>{2}));
  EXPECT_TRUE(r->stopping.ignore_eos);
  EXPECT_TRUE(r->logprobs);  // top_n implies the chosen token's logprob
  EXPECT_EQ(r->top_logprobs, 3);
}

TEST(ConvertTest, SessionRequestMayHaveNoInput) {
  v1::GenerateRequest q;
  q.set_session_id("s");
  EXPECT_TRUE(ToEngineRequest(q, &kTokenizer, Limits(), 1).ok());
}

// Each invalid field is refused with a message that starts with the field's proto path.
TEST(ConvertTest, InvalidFieldsAreNamed) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  struct Case {
    std::string field;
    std::function<void(v1::GenerateRequest*)> mutate;
  };
  const std::vector<Case> cases = {
      {"input", [](v1::GenerateRequest* r) { r->clear_text(); }},
      {"text", [](v1::GenerateRequest* r) { r->set_text(""); }},
      {"token_ids.ids[1]",
       [](v1::GenerateRequest* r) {
         r->mutable_token_ids()->add_ids(1);
         r->mutable_token_ids()->add_ids(256);
       }},
      {"token_ids.ids[0]", [](v1::GenerateRequest* r) { r->mutable_token_ids()->add_ids(-1); }},
      {"token_ids.ids", [](v1::GenerateRequest* r) { r->mutable_token_ids(); }},
      {"session_id", [](v1::GenerateRequest* r) { r->set_session_id("bad id!"); }},
      {"session_id", [](v1::GenerateRequest* r) { r->set_session_id(std::string(129, 'a')); }},
      {"sampling.temperature",
       [](v1::GenerateRequest* r) { r->mutable_sampling()->set_temperature(-1); }},
      {"sampling.temperature",
       [nan](v1::GenerateRequest* r) { r->mutable_sampling()->set_temperature(nan); }},
      {"sampling.temperature",
       [](v1::GenerateRequest* r) { r->mutable_sampling()->set_temperature(101); }},
      {"sampling.top_k", [](v1::GenerateRequest* r) { r->mutable_sampling()->set_top_k(-1); }},
      {"sampling.top_k", [](v1::GenerateRequest* r) { r->mutable_sampling()->set_top_k(257); }},
      {"sampling.top_p", [](v1::GenerateRequest* r) { r->mutable_sampling()->set_top_p(0); }},
      {"sampling.top_p", [](v1::GenerateRequest* r) { r->mutable_sampling()->set_top_p(1.5f); }},
      {"sampling.top_p", [nan](v1::GenerateRequest* r) { r->mutable_sampling()->set_top_p(nan); }},
      {"sampling.min_p", [](v1::GenerateRequest* r) { r->mutable_sampling()->set_min_p(-0.1f); }},
      {"sampling.min_p", [](v1::GenerateRequest* r) { r->mutable_sampling()->set_min_p(1.1f); }},
      {"sampling.repetition_penalty",
       [](v1::GenerateRequest* r) { r->mutable_sampling()->set_repetition_penalty(0); }},
      {"sampling.repetition_penalty",
       [](v1::GenerateRequest* r) { r->mutable_sampling()->set_repetition_penalty(11); }},
      {"sampling.presence_penalty",
       [](v1::GenerateRequest* r) { r->mutable_sampling()->set_presence_penalty(2.5f); }},
      {"sampling.frequency_penalty",
       [](v1::GenerateRequest* r) { r->mutable_sampling()->set_frequency_penalty(-3); }},
      {"stopping.max_new_tokens",
       [](v1::GenerateRequest* r) { r->mutable_stopping()->set_max_new_tokens(-1); }},
      {"stopping.max_new_tokens",
       [](v1::GenerateRequest* r) { r->mutable_stopping()->set_max_new_tokens(513); }},
      {"stopping.min_new_tokens",
       [](v1::GenerateRequest* r) { r->mutable_stopping()->set_min_new_tokens(-2); }},
      {"stopping.min_new_tokens",
       [](v1::GenerateRequest* r) {
         r->mutable_stopping()->set_max_new_tokens(3);
         r->mutable_stopping()->set_min_new_tokens(4);
       }},
      {"stopping.stop[1]",
       [](v1::GenerateRequest* r) {
         r->mutable_stopping()->add_stop("x");
         r->mutable_stopping()->add_stop("");
       }},
      {"stopping.stop[0]",
       [](v1::GenerateRequest* r) { r->mutable_stopping()->add_stop(std::string(300, 'x')); }},
      {"stopping.stop",
       [](v1::GenerateRequest* r) {
         for (int i = 0; i < 17; ++i) r->mutable_stopping()->add_stop("s");
       }},
      {"stopping.stop_token_ids",
       [](v1::GenerateRequest* r) {
         for (int i = 0; i < 65; ++i) r->mutable_stopping()->add_stop_token_ids(1);
       }},
      {"stopping.stop_token_ids[0]",
       [](v1::GenerateRequest* r) { r->mutable_stopping()->add_stop_token_ids(999); }},
      {"logprobs.top_n", [](v1::GenerateRequest* r) { r->mutable_logprobs()->set_top_n(21); }},
      {"logprobs.top_n", [](v1::GenerateRequest* r) { r->mutable_logprobs()->set_top_n(-1); }},
  };
  for (const Case& c : cases) {
    v1::GenerateRequest q = Valid();
    c.mutate(&q);
    auto r = ToEngineRequest(q, &kTokenizer, Limits(), 1);
    ASSERT_FALSE(r.ok()) << c.field;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << c.field;
    EXPECT_EQ(r.status().message().substr(0, c.field.size()), c.field)
        << "expected the message to name " << c.field << ": " << r.status().message();
  }
}

TEST(ConvertTest, TextNeedsATokenizer) {
  auto r = ToEngineRequest(Valid(), nullptr, Limits(), 1);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message().substr(0, 5), "text:");
}

TEST(ConvertTest, EngineMessagesGetProtoFieldNames) {
  EXPECT_EQ(ProtoFieldStatus(absl::InvalidArgumentError("top_p must be in (0, 1], got 1.5"),
                             InputField::kText)
                .message(),
            "sampling.top_p must be in (0, 1], got 1.5");
  EXPECT_EQ(
      ProtoFieldStatus(absl::InvalidArgumentError("stop[2] must not be empty"), InputField::kText)
          .message(),
      "stopping.stop[2] must not be empty");
  EXPECT_EQ(ProtoFieldStatus(absl::InvalidArgumentError(
                                 "prompt: 600 tokens exceed the maximum context of 512 tokens"),
                             InputField::kTokenIds)
                .message(),
            "token_ids.ids: 600 tokens exceed the maximum context of 512 tokens");
  EXPECT_EQ(
      ProtoFieldStatus(absl::InvalidArgumentError("prompt: too long"), InputField::kText).message(),
      "text: too long");
  EXPECT_EQ(ProtoFieldStatus(absl::InvalidArgumentError("prompt[3]: token id 300 is outside"),
                             InputField::kTokenIds)
                .message(),
            "token_ids.ids[3]: token id 300 is outside");
  EXPECT_EQ(
      ProtoFieldStatus(absl::InvalidArgumentError("prefix: needs 9 blocks"), InputField::kText)
          .message(),
      "text: needs 9 blocks");
  EXPECT_EQ(ProtoFieldStatus(absl::InvalidArgumentError("prompt: empty, and no context"),
                             InputField::kNone)
                .message(),
            "input: empty, and no context");
  EXPECT_EQ(ProtoFieldStatus(absl::InvalidArgumentError("top_logprobs must be in [0, 20]"),
                             InputField::kText)
                .message(),
            "logprobs.top_n must be in [0, 20]");
  // Unknown names, other codes: unchanged.
  const absl::Status other = absl::NotFoundError("session \"x\" not found");
  EXPECT_EQ(ProtoFieldStatus(other, InputField::kText), other);
  const absl::Status id = absl::InvalidArgumentError("session_id must be 1 to 128 characters");
  EXPECT_EQ(ProtoFieldStatus(id, InputField::kText), id);
}

TEST(ConvertTest, InputTokensFromText) {
  auto t = InputTokens(InputField::kText, "é", v1::TokenIds(), &kTokenizer, 256);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(*t, (std::vector<int32_t>{0xC3, 0xA9}));
}

TEST(ConvertTest, StreamEventToProto) {
  StreamEvent e;
  e.token_ids = {104, 105};
  e.text = "hi";
  TokenLogprob lp;
  lp.id = 104;
  lp.logprob = -0.5f;
  lp.top = {{104, -0.5f}, {7, -2.0f}};
  e.logprobs = {lp, lp};
  Finish f;
  f.reason = FinishReason::kStop;
  f.matched_stop_token = 2;
  f.usage.prompt_tokens = 5;
  f.usage.reused_tokens = 3;
  f.usage.generated_tokens = 2;
  f.usage.queue_time = absl::Milliseconds(1);
  f.usage.time_to_first_token = absl::Milliseconds(2);
  f.usage.total_time = absl::Milliseconds(4);
  f.usage.state.slot_bytes = 100;
  f.usage.state.kv_bytes = 200;
  f.usage.state.kv_blocks = 2;
  f.usage.state.softmax_equivalent_bytes = 300;
  f.usage.state.context_tokens = 9;
  e.finish = f;
  v1::GenerateResponse out;
  StreamEventToProto(e, &out);
  EXPECT_EQ(out.token_ids_size(), 2);
  EXPECT_EQ(out.text(), "hi");
  ASSERT_EQ(out.logprobs_size(), 2);
  EXPECT_EQ(out.logprobs(0).top_size(), 2);
  EXPECT_EQ(out.logprobs(0).top(1).id(), 7);
  ASSERT_TRUE(out.has_finished());
  EXPECT_EQ(out.finished().reason(), v1::FINISH_REASON_STOP);
  EXPECT_EQ(out.finished().matched_stop_token_id(), 2);
  const v1::Usage& u = out.finished().usage();
  EXPECT_EQ(u.prompt_tokens(), 5);
  EXPECT_EQ(u.reused_tokens(), 3);
  EXPECT_EQ(u.generated_tokens(), 2);
  EXPECT_DOUBLE_EQ(u.queue_seconds(), 0.001);
  EXPECT_DOUBLE_EQ(u.time_to_first_token_seconds(), 0.002);
  EXPECT_DOUBLE_EQ(u.total_seconds(), 0.004);
  EXPECT_EQ(u.state().slot_bytes(), 100);
  EXPECT_EQ(u.state().kv_bytes(), 200);
  EXPECT_EQ(u.state().kv_blocks(), 2);
  EXPECT_EQ(u.state().softmax_equivalent_bytes(), 300);
  EXPECT_EQ(u.state().context_tokens(), 9);

  // A failed finish carries no `finished` (the status says why).
  e.finish->status = absl::CancelledError("gone");
  StreamEventToProto(e, &out);
  EXPECT_FALSE(out.has_finished());
  EXPECT_EQ(out.token_ids_size(), 2);
}

TEST(ConvertTest, SessionInfoToProto) {
  SessionInfo s;
  s.id = "abc";
  s.worker = 1;
  s.state.context_tokens = 77;
  s.state.slot_bytes = 10;
  const absl::Time now = absl::UnixEpoch() + absl::Seconds(100);
  s.last_use = now - absl::Seconds(4);
  v1::SessionInfo out;
  SessionInfoToProto(s, now, &out);
  EXPECT_EQ(out.session_id(), "abc");
  EXPECT_EQ(out.context_tokens(), 77);
  EXPECT_EQ(out.state().slot_bytes(), 10);
  EXPECT_DOUBLE_EQ(out.idle_seconds(), 4.0);
  EXPECT_FALSE(out.busy());
  EXPECT_EQ(out.worker(), 1);
}

}  // namespace
}  // namespace hyla::service
