// The engine over the real CPU backend and the golden fixture checkpoints (HYLA_GOLDEN_DIR):
//   - greedy generation through the engine reproduces the reference implementation's greedy
//     continuation (golden `greedy`, every step whose top-2 margin exceeds the tolerance);
//   - N concurrent requests with fixed seeds give the same tokens as each request alone;
//   - a session continuation gives the same tokens as one request over the concatenation, and
//     its usage counts only the new tokens;
//   - a fork diverges without changing its parent;
//   - cancellation frees the state at once.
// A missing fixture is a failure, not a skip.
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/engine/engine.h"
#include "runtime/model/tokenizer.h"
#include "tests/engine/engine_test_util.h"
#include "tests/testing/golden_util.h"

namespace hyla::testing {
namespace {

struct Family {
  std::string name;
  double tolerance;  // golden README's recommended max-abs logits tolerance
};

absl::StatusOr<std::unique_ptr<Engine>> MakeEngine(const std::string& family, EngineOptions o,
                                                   int num_slots = 8, int64_t num_blocks = 512) {
  o.tokenizer = std::make_shared<ByteTokenizer>(1, 2);
  return Engine::Create(
      o, [family, num_slots, num_blocks](int) -> absl::StatusOr<std::unique_ptr<Backend>> {
        auto b = LoadCpuBackend(GoldenDir(family), num_slots, num_blocks);
        if (!b.ok()) return b.status();
        return std::unique_ptr<Backend>(std::move(b).value());
      });
}

EngineOptions Options() {
  EngineOptions o;
  o.max_batch = 8;
  o.prefill_chunk_tokens = 32;
  o.token_budget = 64;
  o.max_queued = 64;
  o.session_id_seed = 5;
  return o;
}

Request GreedyRequest(std::vector<int32_t> prompt, int max_new) {
  Request r;
  r.prompt = std::move(prompt);
  r.sampling.temperature = 0.0f;
  r.stopping.max_new_tokens = max_new;
  r.stopping.ignore_eos = true;
  return r;
}

std::vector<int32_t> Concat(std::vector<std::vector<int32_t>> parts) {
  std::vector<int32_t> out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

class EngineCpuTest : public ::testing::TestWithParam<Family> {};

// The reference implementation's greedy continuation of the golden input, through the engine.
TEST_P(EngineCpuTest, GreedyMatchesTheReferenceImplementation) {
  const std::string family = GetParam().name;
  auto input = GoldenI32(family, "input_ids");
  auto greedy = GoldenI32(family, "greedy");
  auto margin = GoldenF32(family, "greedy_top2_margin");
  ASSERT_TRUE(input.ok()) << input.status();
  ASSERT_TRUE(greedy.ok()) << greedy.status();
  ASSERT_TRUE(margin.ok()) << margin.status();
  auto engine = MakeEngine(family, Options());
  ASSERT_TRUE(engine.ok()) << engine.status();
  auto h = (*engine)->Submit(GreedyRequest(*input, static_cast<int>(greedy->size())));
  ASSERT_TRUE(h.ok()) << h.status();
  const Collected c = Collect(**h);
  ASSERT_EQ(c.tokens.size(), greedy->size());
  // Binding steps: until the first whose margin is within the tolerance (later tokens may
  // legitimately differ).
  size_t binding = 0;
  while (binding < greedy->size() && (*margin)[binding] > 2 * GetParam().tolerance) ++binding;
  EXPECT_GT(binding, 0u);
  for (size_t i = 0; i < binding; ++i) EXPECT_EQ(c.tokens[i], (*greedy)[i]) << "step " << i;
  std::printf("[%s] engine greedy agrees with the reference on %zu binding steps of %zu\n",
              family.c_str(), binding, greedy->size());
}

// Fixed seeds: the same tokens whatever else runs (batching, chunk interleaving).
TEST_P(EngineCpuTest, ConcurrentRequestsEqualRequestsAlone) {
  const std::string family = GetParam().name;
  const int n = 8;
  std::vector<Request> requests;
  for (int i = 0; i < n; ++i) {
    Request r;
    for (int j = 0; j < 5 + 23 * i; ++j) r.prompt.push_back((31 * i + 7 * j) % 253 + 3);
    r.sampling.temperature = 0.9f;
    r.sampling.top_p = 0.95f;
    r.sampling.seed = 77 + i;
    r.stopping.max_new_tokens = 10;
    r.stopping.ignore_eos = true;
    requests.push_back(r);
  }
  auto engine = MakeEngine(family, Options());
  ASSERT_TRUE(engine.ok()) << engine.status();
  std::vector<std::vector<int32_t>> alone;
  for (const Request& r : requests) {
    auto h = (*engine)->Submit(r);
    ASSERT_TRUE(h.ok());
    alone.push_back(Collect(**h).tokens);
  }
  std::vector<std::unique_ptr<RequestHandle>> handles;
  for (const Request& r : requests) {
    auto h = (*engine)->Submit(r);
    ASSERT_TRUE(h.ok());
    handles.push_back(std::move(h).value());
  }
  for (int i = 0; i < n; ++i) {
    const Collected c = Collect(*handles[i]);
    EXPECT_EQ(c.tokens, alone[i]) << "request " << i;
    EXPECT_EQ(c.finish.reason, FinishReason::kLength);
  }
  const EngineStats s = (*engine)->Stats();
  EXPECT_EQ(s.slots_used, 0);
  EXPECT_EQ(s.kv_blocks_used, 0);
}

TEST_P(EngineCpuTest, SessionContinuationEqualsOneRequestOverTheConcatenation) {
  const std::string family = GetParam().name;
  auto engine = MakeEngine(family, Options());
  ASSERT_TRUE(engine.ok()) << engine.status();
  std::vector<int32_t> prefix;
  for (int i = 0; i < 90; ++i) prefix.push_back((13 * i) % 250 + 4);
  const std::vector<int32_t> turn1 = {40, 41, 42, 43, 44};
  const std::vector<int32_t> turn2 = {50, 60, 70};
  auto s = CreateSessionSync(**engine, "", prefix);
  ASSERT_TRUE(s.ok()) << s.status();

  Request r1 = GreedyRequest(turn1, 7);
  r1.session_id = s->id;
  auto h1 = (*engine)->Submit(r1);
  ASSERT_TRUE(h1.ok());
  const Collected c1 = Collect(**h1);
  Request r2 = GreedyRequest(turn2, 7);
  r2.session_id = s->id;
  auto h2 = (*engine)->Submit(r2);
  ASSERT_TRUE(h2.ok());
  const Collected c2 = Collect(**h2);
  EXPECT_EQ(c2.finish.usage.prompt_tokens, 3);
  EXPECT_EQ(c2.finish.usage.reused_tokens,
            static_cast<int64_t>(prefix.size() + turn1.size() + c1.tokens.size()) - 1);

  const std::vector<int32_t> whole = Concat({prefix, turn1, c1.tokens, turn2});
  auto one = (*engine)->Submit(GreedyRequest(whole, 7));
  ASSERT_TRUE(one.ok());
  const Collected c = Collect(**one);
  EXPECT_EQ(c.tokens, c2.tokens);
  EXPECT_EQ(c.finish.usage.prompt_tokens, static_cast<int64_t>(whole.size()));
  EXPECT_EQ(c.finish.usage.reused_tokens, 0);
  // The same state either way: context and memory.
  EXPECT_EQ(c2.finish.usage.state.context_tokens, static_cast<int64_t>(whole.size()) + 7);
  EXPECT_EQ(c2.finish.usage.state.slot_bytes, c.finish.usage.state.slot_bytes);
  EXPECT_EQ(c2.finish.usage.state.softmax_equivalent_bytes,
            c.finish.usage.state.softmax_equivalent_bytes);
}

TEST_P(EngineCpuTest, ForkDivergesWithoutChangingTheParent) {
  const std::string family = GetParam().name;
  auto engine = MakeEngine(family, Options());
  ASSERT_TRUE(engine.ok()) << engine.status();
  std::vector<int32_t> prefix;
  for (int i = 0; i < 100; ++i) prefix.push_back((17 * i) % 250 + 4);
  const std::vector<int32_t> x = {100, 101, 102};
  const std::vector<int32_t> y = {200, 201, 202, 203};
  ASSERT_TRUE(CreateSessionSync(**engine, "parent", prefix).ok());
  auto child = ForkSessionSync(**engine, "parent", "child");
  ASSERT_TRUE(child.ok()) << child.status();

  Request rc = GreedyRequest(x, 6);
  rc.session_id = "child";
  auto hc = (*engine)->Submit(rc);
  ASSERT_TRUE(hc.ok());
  const Collected cc = Collect(**hc);
  Request rp = GreedyRequest(y, 6);
  rp.session_id = "parent";
  auto hp = (*engine)->Submit(rp);
  ASSERT_TRUE(hp.ok());
  const Collected cp = Collect(**hp);

  auto ref_child = (*engine)->Submit(GreedyRequest(Concat({prefix, x}), 6));
  auto ref_parent = (*engine)->Submit(GreedyRequest(Concat({prefix, y}), 6));
  ASSERT_TRUE(ref_child.ok());
  ASSERT_TRUE(ref_parent.ok());
  EXPECT_EQ(cc.tokens, Collect(**ref_child).tokens);
  EXPECT_EQ(cp.tokens, Collect(**ref_parent).tokens);
  auto info = (*engine)->GetSession("parent");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->state.context_tokens, static_cast<int64_t>(prefix.size() + y.size() + 6));
}

TEST_P(EngineCpuTest, CancellationFreesState) {
  const std::string family = GetParam().name;
  auto engine = MakeEngine(family, Options());
  ASSERT_TRUE(engine.ok()) << engine.status();
  const EngineStats before = (*engine)->Stats();
  std::vector<int32_t> prompt(150, 9);
  Request r = GreedyRequest(prompt, 800);
  auto h = (*engine)->Submit(r);
  ASSERT_TRUE(h.ok());
  EXPECT_EQ((*h)->Next().token_ids.size(), 1u);
  (*h)->Cancel();
  const Collected c = Collect(**h);
  EXPECT_EQ(c.finish.reason, FinishReason::kCancelled);
  const EngineStats after = (*engine)->Stats();
  EXPECT_EQ(after.slots_used, before.slots_used);
  EXPECT_EQ(after.kv_blocks_used, before.kv_blocks_used);
  EXPECT_EQ(after.running, 0);
  EXPECT_EQ(after.softmax_equivalent_bytes, 0);
}

INSTANTIATE_TEST_SUITE_P(Golden, EngineCpuTest,
                         ::testing::Values(Family{"llama", 1e-4}, Family{"gdn", 5.2e-4}),
                         [](const auto& info) { return info.param.name; });

// NAtS-L and NHA: the engine's invariants over their state kinds (routed KV blocks, windows).
class EngineCpuHybridTest : public ::testing::TestWithParam<std::string> {};

TEST_P(EngineCpuHybridTest, ConcurrentEqualsAloneAndSessionsEqualConcatenation) {
  const std::string family = GetParam();
  auto engine = MakeEngine(family, Options());
  ASSERT_TRUE(engine.ok()) << engine.status();
  std::vector<Request> requests;
  for (int i = 0; i < 4; ++i) {
    Request r = GreedyRequest({}, 6);
    for (int j = 0; j < 40 + 50 * i; ++j) r.prompt.push_back((29 * i + 11 * j) % 251 + 3);
    requests.push_back(r);
  }
  std::vector<std::vector<int32_t>> alone;
  for (const Request& r : requests) alone.push_back(Collect(**(*engine)->Submit(r)).tokens);
  std::vector<std::unique_ptr<RequestHandle>> handles;
  for (const Request& r : requests) handles.push_back(std::move((*engine)->Submit(r)).value());
  for (size_t i = 0; i < requests.size(); ++i) {
    EXPECT_EQ(Collect(*handles[i]).tokens, alone[i]) << "request " << i;
  }

  auto s = CreateSessionSync(**engine, "s", requests[3].prompt);
  ASSERT_TRUE(s.ok()) << s.status();
  Request turn = GreedyRequest({7, 8, 9}, 6);
  turn.session_id = "s";
  const Collected c1 = Collect(**(*engine)->Submit(turn));
  const Collected c2 = Collect(**(*engine)->Submit(turn));
  const std::vector<int32_t> whole = Concat({requests[3].prompt, {7, 8, 9}, c1.tokens, {7, 8, 9}});
  EXPECT_EQ(Collect(**(*engine)->Submit(GreedyRequest(whole, 6))).tokens, c2.tokens);
  const EngineStats st = (*engine)->Stats();
  EXPECT_EQ(st.sessions, 1);
  EXPECT_EQ(st.slots_used, 1);
  EXPECT_GT(st.softmax_equivalent_bytes, 0);
  if (family == "natsl") {
    EXPECT_GT(st.routed_to_softmax + st.routed_to_gdn, 0);
  }
}

INSTANTIATE_TEST_SUITE_P(Golden, EngineCpuHybridTest, ::testing::Values("natsl", "nha"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace hyla::testing
