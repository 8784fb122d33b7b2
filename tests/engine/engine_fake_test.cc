// Engine behaviour over the deterministic FakeBackend: generation and stop criteria end to end,
// batching invariance, admission (queue and memory), cancellation, deadlines, slow consumers,
// sessions (continuation, fork, busy, TTL, LRU), routing over workers, shutdown, validation.
// Synchronisation is by condition variables (the backend's gate, stream waits, the observer) and
// the injected ManualClock; no test sleeps to synchronise (one sleeps to measure host time).
#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/engine/clock.h"
#include "runtime/engine/engine.h"
#include "runtime/model/tokenizer.h"
#include "tests/engine/engine_test_util.h"
#include "tests/engine/fake_backend.h"

namespace hyla::testing {
namespace {

using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

struct Harness {
  std::shared_ptr<ManualClock> clock = std::make_shared<ManualClock>();
  std::shared_ptr<RecordingObserver> observer = std::make_shared<RecordingObserver>();
  std::vector<FakeBackend*> backends;
  FakeBackendOptions backend_options;
  std::unique_ptr<Engine> engine;
};

EngineOptions SmallOptions() {
  EngineOptions o;
  o.num_workers = 1;
  o.max_queued = 16;
  o.max_batch = 4;
  o.prefill_chunk_tokens = 8;
  o.token_budget = 16;
  o.default_max_new_tokens = 8;
  o.session_ttl = absl::Minutes(10);
  o.max_sessions = 16;
  o.stall_timeout = absl::Seconds(5);
  o.max_pending_events = 4;
  o.session_id_seed = 99;
  return o;
}

std::unique_ptr<Harness> MakeHarness(EngineOptions o = SmallOptions(),
                                     FakeBackendOptions b = FakeBackendOptions(),
                                     bool gated = false) {
  auto h = std::make_unique<Harness>();
  h->backend_options = b;
  o.clock = h->clock;
  o.observer = h->observer;
  o.tokenizer = std::make_shared<ByteTokenizer>(1, b.eos);
  Harness* raw = h.get();
  auto engine = Engine::Create(o, [raw, b, gated](int) -> absl::StatusOr<std::unique_ptr<Backend>> {
    std::unique_ptr<FakeBackend> backend = FakeBackend::Create(b);
    backend->SetGated(gated);
    raw->backends.push_back(backend.get());
    return std::unique_ptr<Backend>(std::move(backend));
  });
  HYLA_CHECK(engine.ok());
  h->engine = std::move(engine).value();
  return h;
}

Request Greedy(std::vector<int32_t> prompt, int max_new) {
  Request r;
  r.prompt = std::move(prompt);
  r.sampling.temperature = 0.0f;
  r.stopping.max_new_tokens = max_new;
  return r;
}

std::vector<int32_t> Ids(const std::string& s) {
  std::vector<int32_t> ids;
  for (unsigned char c : s) ids.push_back(c);
  return ids;
}

std::vector<int32_t> Concat(std::vector<std::vector<int32_t>> parts) {
  std::vector<int32_t> out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

// State memory back to empty: no slot or block held, nothing running or queued.
void ExpectNoStateHeld(const Engine& engine) {
  const EngineStats s = engine.Stats();
  EXPECT_EQ(s.slots_used, 0);
  EXPECT_EQ(s.kv_blocks_used, 0);
  EXPECT_EQ(s.kv_blocks_reserved, 0);
  EXPECT_EQ(s.running, 0);
  EXPECT_EQ(s.waiting, 0);
  EXPECT_EQ(s.softmax_equivalent_bytes, 0);
  EXPECT_EQ(engine.InFlight(), 0);
}

// ---------------------------------------------------------------------------------------------
// Generation

TEST(EngineTest, GreedyGenerationStreamsTokensTextAndUsage) {
  auto h = MakeHarness();
  auto handle = h->engine->Submit(Greedy(Ids("a"), 5));
  ASSERT_TRUE(handle.ok()) << handle.status();
  const Collected c = Collect(**handle);
  EXPECT_THAT(c.tokens, ElementsAreArray(Ids("bcdef")));
  EXPECT_EQ(c.text, "bcdef");
  EXPECT_EQ(c.finish.reason, FinishReason::kLength);
  EXPECT_TRUE(c.finish.status.ok());
  const Usage& u = c.finish.usage;
  EXPECT_EQ(u.prompt_tokens, 1);
  EXPECT_EQ(u.reused_tokens, 0);
  EXPECT_EQ(u.generated_tokens, 5);
  // The last sampled token is not folded: 1 + 4 tokens in the state, one 64-token block.
  const StateLayout& layout = h->backends[0]->layout();
  EXPECT_EQ(u.state.context_tokens, 5);
  EXPECT_EQ(u.state.slot_bytes, layout.slot_bytes());
  EXPECT_EQ(u.state.kv_blocks, 1);
  EXPECT_EQ(u.state.kv_bytes, layout.block_bytes());
  EXPECT_EQ(u.state.softmax_equivalent_bytes, layout.SoftmaxEquivalentBytes(5));
  ExpectNoStateHeld(*h->engine);
  EXPECT_EQ(h->observer->first_tokens(), 1);
  EXPECT_EQ(h->observer->inter_tokens(), 4);
  const EngineStats s = h->engine->Stats();
  EXPECT_EQ(s.generated_tokens, 5);
  EXPECT_EQ(s.prompt_tokens, 1);
  EXPECT_EQ(s.finished_by_reason[static_cast<int>(FinishReason::kLength)], 1);
}

TEST(EngineTest, StopStringIsExcludedFromText) {
  auto h = MakeHarness();
  Request r = Greedy(Ids("a"), 10);
  r.stopping.stop = {"de"};
  auto handle = h->engine->Submit(r);
  ASSERT_TRUE(handle.ok());
  const Collected c = Collect(**handle);
  EXPECT_THAT(c.tokens, ElementsAreArray(Ids("bcde")));
  EXPECT_EQ(c.text, "bc");
  EXPECT_EQ(c.finish.reason, FinishReason::kStop);
  EXPECT_EQ(c.finish.matched_stop, "de");
}

TEST(EngineTest, EosStopsAndMinNewTokensSuppressesIt) {
  auto h = MakeHarness();
  // After 0 the model's favourite is 1, then 2 = EOS.
  auto plain = h->engine->Submit(Greedy({0}, 10));
  ASSERT_TRUE(plain.ok());
  const Collected c = Collect(**plain);
  EXPECT_THAT(c.tokens, ElementsAreArray({1, 2}));
  EXPECT_EQ(c.finish.reason, FinishReason::kStop);
  EXPECT_EQ(c.finish.matched_stop_token, 2);
  EXPECT_EQ(c.text, "\x01");

  Request r = Greedy({0}, 10);
  r.stopping.min_new_tokens = 4;
  auto suppressed = h->engine->Submit(r);
  ASSERT_TRUE(suppressed.ok());
  const Collected d = Collect(**suppressed);
  ASSERT_GE(d.tokens.size(), 5u);
  for (int i = 0; i < 4; ++i) EXPECT_NE(d.tokens[i], 2) << i;

  Request ignore = Greedy({0}, 3);
  ignore.stopping.ignore_eos = true;
  auto ignored = h->engine->Submit(ignore);
  ASSERT_TRUE(ignored.ok());
  const Collected e = Collect(**ignored);
  EXPECT_THAT(e.tokens, ElementsAreArray({1, 2, 3}));
  EXPECT_EQ(e.finish.reason, FinishReason::kLength);
}

TEST(EngineTest, StopTokenIdsStop) {
  auto h = MakeHarness();
  Request r = Greedy(Ids("a"), 10);
  r.stopping.stop_token_ids = {'d'};
  auto handle = h->engine->Submit(r);
  ASSERT_TRUE(handle.ok());
  const Collected c = Collect(**handle);
  EXPECT_THAT(c.tokens, ElementsAreArray(Ids("bcd")));
  EXPECT_EQ(c.text, "bc");
  EXPECT_EQ(c.finish.matched_stop_token, 'd');
}

TEST(EngineTest, LogprobsWithAlternatives) {
  auto h = MakeHarness();
  Request r = Greedy(Ids("a"), 3);
  r.logprobs = true;
  r.top_logprobs = 3;
  auto handle = h->engine->Submit(r);
  ASSERT_TRUE(handle.ok());
  const Collected c = Collect(**handle);
  ASSERT_EQ(c.logprobs.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(c.logprobs[i].id, c.tokens[i]);
    ASSERT_EQ(c.logprobs[i].top.size(), 3u);
    EXPECT_EQ(c.logprobs[i].top[0].id, c.tokens[i]);  // greedy: the best alternative
    EXPECT_FLOAT_EQ(c.logprobs[i].top[0].logprob, c.logprobs[i].logprob);
    EXPECT_LT(c.logprobs[i].logprob, 0.0f);
  }
}

TEST(EngineTest, LongPromptIsPrefilledInChunksWithLogitsOnlyAtTheEnd) {
  auto h = MakeHarness();
  std::vector<int32_t> prompt(30);
  for (int i = 0; i < 30; ++i) prompt[i] = 10 + i;
  auto handle = h->engine->Submit(Greedy(prompt, 2));
  ASSERT_TRUE(handle.ok());
  const Collected c = Collect(**handle);
  EXPECT_THAT(c.tokens, ElementsAreArray(FakeBackend::Greedy(h->backend_options, prompt, 2)));
  std::vector<int64_t> sizes;
  for (const auto& step : h->backends[0]->steps()) sizes.push_back(step.at(0).tokens);
  // Chunks of prefill_chunk_tokens = 8 (two per step under the budget of 16 would need two
  // requests; one request gets one chunk per step), then one decode.
  EXPECT_THAT(sizes, ElementsAreArray({8, 8, 8, 6, 1}));
}

// A backend that samples where the logits are (Backend::SamplesOnDevice, as the CUDA backend
// does) gives every request the tokens, logprobs and alternatives of sampling in the engine:
// seeded draws, penalties, min_new_tokens suppressing EOS, top logprobs, concurrent requests.
TEST(EngineTest, BackendSamplingEqualsEngineSampling) {
  FakeBackendOptions b;
  b.peak = 1.0f;  // flat enough that sampling matters
  std::vector<Request> requests;
  for (int i = 0; i < 6; ++i) {
    Request r;
    for (int j = 0; j <= 2 * i; ++j) r.prompt.push_back((5 * i + j) % 250 + 3);
    r.sampling.temperature = i == 0 ? 0.0f : 0.7f + 0.1f * i;
    r.sampling.top_k = i % 2 == 0 ? 0 : 40;
    r.sampling.top_p = i % 3 == 0 ? 1.0f : 0.9f;
    r.sampling.repetition_penalty = i == 4 ? 1.3f : 1.0f;
    r.sampling.frequency_penalty = i == 5 ? 0.5f : 0.0f;
    r.sampling.seed = 77 + i;
    r.stopping.max_new_tokens = 10;
    r.stopping.min_new_tokens = 3;
    r.logprobs = true;
    r.top_logprobs = i % 3;
    requests.push_back(r);
  }
  std::vector<Collected> results[2];
  int64_t sampled_in_backend[2] = {0, 0};
  for (int mode = 0; mode < 2; ++mode) {
    b.device_sampling = mode == 1;
    EngineOptions o = SmallOptions();
    o.max_batch = 4;
    auto h = MakeHarness(o, b);
    std::vector<std::unique_ptr<RequestHandle>> handles;
    for (const Request& r : requests) {
      auto handle = h->engine->Submit(r);
      ASSERT_TRUE(handle.ok());
      handles.push_back(std::move(handle).value());
    }
    for (auto& handle : handles) results[mode].push_back(Collect(*handle));
    sampled_in_backend[mode] = h->backends[0]->device_sampled();
    ExpectNoStateHeld(*h->engine);
  }
  EXPECT_EQ(sampled_in_backend[0], 0);
  EXPECT_GT(sampled_in_backend[1], 0);
  for (size_t i = 0; i < requests.size(); ++i) {
    const Collected& cpu = results[0][i];
    const Collected& dev = results[1][i];
    EXPECT_EQ(dev.tokens, cpu.tokens) << "request " << i;
    ASSERT_EQ(dev.logprobs.size(), cpu.logprobs.size()) << "request " << i;
    for (size_t k = 0; k < cpu.logprobs.size(); ++k) {
      EXPECT_EQ(dev.logprobs[k].id, cpu.logprobs[k].id);
      EXPECT_EQ(dev.logprobs[k].logprob, cpu.logprobs[k].logprob);
      ASSERT_EQ(dev.logprobs[k].top.size(), cpu.logprobs[k].top.size());
      for (size_t t = 0; t < cpu.logprobs[k].top.size(); ++t) {
        EXPECT_EQ(dev.logprobs[k].top[t].id, cpu.logprobs[k].top[t].id);
      }
    }
    EXPECT_EQ(dev.finish.reason, cpu.finish.reason) << "request " << i;
  }
}

// N concurrent requests with fixed seeds give the same tokens as each request alone.
TEST(EngineTest, ConcurrentRequestsEqualRequestsAlone) {
  FakeBackendOptions b;
  b.peak = 0.0f;  // the next token depends on the whole history
  const int n = 10;
  std::vector<Request> requests;
  for (int i = 0; i < n; ++i) {
    Request r;
    for (int j = 0; j <= 3 * i; ++j) r.prompt.push_back((7 * i + j) % 250 + 3);
    r.sampling.temperature = 0.8f;
    r.sampling.top_k = 50;
    r.sampling.seed = 1000 + i;
    r.stopping.max_new_tokens = 12;
    requests.push_back(r);
  }
  std::vector<std::vector<int32_t>> alone;
  {
    auto h = MakeHarness(SmallOptions(), b);
    for (const Request& r : requests) {
      auto handle = h->engine->Submit(r);
      ASSERT_TRUE(handle.ok());
      alone.push_back(Collect(**handle).tokens);
    }
  }
  EngineOptions o = SmallOptions();
  o.max_batch = 4;
  auto h = MakeHarness(o, b);
  std::vector<std::unique_ptr<RequestHandle>> handles;
  for (const Request& r : requests) {
    auto handle = h->engine->Submit(r);
    ASSERT_TRUE(handle.ok());
    handles.push_back(std::move(handle).value());
  }
  for (int i = 0; i < n; ++i) {
    const Collected c = Collect(*handles[i]);
    EXPECT_EQ(c.tokens, alone[i]) << "request " << i;
    EXPECT_EQ(c.tokens.size(), 12u);
  }
  // Requests did share steps.
  size_t widest = 0;
  for (const auto& step : h->backends[0]->steps()) widest = std::max(widest, step.size());
  EXPECT_GT(widest, 1u);
  EXPECT_LE(widest, 4u);
  ExpectNoStateHeld(*h->engine);
}

// Running decodes get a token in every step while a long prompt is prefilled beside them.
TEST(EngineTest, DecodesAreNeverStarvedByPrefill) {
  EngineOptions o = SmallOptions();
  o.max_batch = 2;
  o.prefill_chunk_tokens = 4;
  o.token_budget = 5;
  auto h = MakeHarness(o, FakeBackendOptions(), /*gated=*/true);
  auto a = h->engine->Submit(Greedy(Ids("a"), 20));
  ASSERT_TRUE(a.ok());
  h->backends[0]->Allow(1);
  StreamEvent first = (*a)->Next();  // A is decoding now (held in its second step)
  ASSERT_EQ(first.token_ids.size(), 1u);
  std::vector<int32_t> long_prompt(40, 'x');
  auto b = h->engine->Submit(Greedy(long_prompt, 2));
  ASSERT_TRUE(b.ok());
  h->backends[0]->SetGated(false);
  const Collected ca = Collect(**a);
  Collect(**b);
  const auto steps = h->backends[0]->steps();
  const int32_t a_slot = steps[0][0].slot;
  int64_t a_decodes = 0;
  int b_chunks_beside_a = 0;
  for (const auto& step : steps) {
    bool has_a = false;
    bool has_b_prefill = false;
    for (const FakeWork& w : step) {
      if (w.slot == a_slot && w.position > 0) {
        has_a = true;
        ++a_decodes;
      }
      if (w.slot != a_slot && w.tokens > 1) {
        has_b_prefill = true;
        EXPECT_LE(w.tokens, 4);
      }
    }
    if (has_b_prefill && a_decodes < 19) {
      EXPECT_TRUE(has_a) << "a prefill step without A's decode";
      ++b_chunks_beside_a;
    }
  }
  EXPECT_EQ(a_decodes, 19);

  EXPECT_GT(b_chunks_beside_a, 0);
  EXPECT_EQ(ca.tokens.size() + 1, 20u);
}

// ---------------------------------------------------------------------------------------------
// Admission

TEST(EngineTest, QueueBoundOverflowIsUnavailableQueueFull) {
  EngineOptions o = SmallOptions();
  o.max_queued = 1;
  o.max_batch = 1;
  auto h = MakeHarness(o, FakeBackendOptions(), /*gated=*/true);
  auto a = h->engine->Submit(Greedy(Ids("a"), 3));
  ASSERT_TRUE(a.ok());
  h->backends[0]->AwaitEntered(1);  // A runs (held in its first step)
  auto b = h->engine->Submit(Greedy(Ids("b"), 3));
  ASSERT_TRUE(b.ok()) << b.status();  // B waits in the queue (max_batch 1)
  auto c = h->engine->Submit(Greedy(Ids("c"), 3));
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("queue full"));
  h->backends[0]->SetGated(false);
  EXPECT_EQ(Collect(**a).tokens.size(), 3u);
  EXPECT_EQ(Collect(**b).tokens.size(), 3u);
  EXPECT_EQ(h->engine->Stats().rejected_by_reason[static_cast<int>(RejectReason::kQueueFull)], 1);
  EXPECT_THAT(h->observer->rejected(), ElementsAreArray({RejectReason::kQueueFull}));
  ExpectNoStateHeld(*h->engine);
}

TEST(EngineTest, MemoryBudgetOverflowIsUnavailableMemory) {
  EngineOptions o = SmallOptions();
  o.max_queued = 1;
  FakeBackendOptions b;
  b.num_slots = 1;
  auto h = MakeHarness(o, b, /*gated=*/true);
  auto a = h->engine->Submit(Greedy(Ids("a"), 3));
  ASSERT_TRUE(a.ok());
  h->backends[0]->AwaitEntered(1);  // A holds the only slot
  auto w = h->engine->Submit(Greedy(Ids("b"), 3));
  ASSERT_TRUE(w.ok()) << w.status();  // waits for memory in the queue
  auto c = h->engine->Submit(Greedy(Ids("c"), 3));
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("memory"));
  h->backends[0]->SetGated(false);
  EXPECT_EQ(Collect(**a).finish.reason, FinishReason::kLength);
  EXPECT_EQ(Collect(**w).finish.reason, FinishReason::kLength);
  EXPECT_EQ(h->engine->Stats().rejected_by_reason[static_cast<int>(RejectReason::kMemory)], 1);
  ExpectNoStateHeld(*h->engine);
}

TEST(EngineTest, RequestLargerThanThePoolIsInvalid) {
  FakeBackendOptions b;
  b.num_blocks = 2;  // 128 tokens of KV
  auto h = MakeHarness(SmallOptions(), b);
  auto r = h->engine->Submit(Greedy(std::vector<int32_t>(100, 5), 100));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("whole pool"));
}

TEST(EngineTest, KvBlocksLimitAdmission) {
  // Three blocks: a request of 70 prompt + 60 new tokens reserves 3 blocks for its lifetime, so
  // the second waits until the first ends, and both complete.
  FakeBackendOptions b;
  b.num_blocks = 3;
  auto h = MakeHarness(SmallOptions(), b);
  auto x = h->engine->Submit(Greedy(std::vector<int32_t>(70, 5), 60));
  auto y = h->engine->Submit(Greedy(std::vector<int32_t>(70, 6), 60));
  ASSERT_TRUE(x.ok());
  ASSERT_TRUE(y.ok());
  const Collected cx = Collect(**x);
  const Collected cy = Collect(**y);
  EXPECT_EQ(cx.tokens.size(), 60u);
  EXPECT_EQ(cy.tokens.size(), 60u);
  for (const auto& step : h->backends[0]->steps()) EXPECT_EQ(step.size(), 1u);
  ExpectNoStateHeld(*h->engine);
}

// ---------------------------------------------------------------------------------------------
// Ending early

TEST(EngineTest, CancelFreesStateAtOnce) {
  auto h = MakeHarness(SmallOptions(), FakeBackendOptions(), /*gated=*/true);
  const EngineStats before = h->engine->Stats();
  auto a = h->engine->Submit(Greedy(Ids("a"), 1000));
  ASSERT_TRUE(a.ok());
  h->backends[0]->Allow(2);
  EXPECT_EQ((*a)->Next().token_ids.size(), 1u);
  h->backends[0]->AwaitEntered(3);  // held in its third step
  EXPECT_EQ(h->engine->Stats().slots_used, before.slots_used + 1);
  (*a)->Cancel();
  h->backends[0]->SetGated(false);
  const Collected c = Collect(**a);
  EXPECT_EQ(c.finish.reason, FinishReason::kCancelled);
  EXPECT_EQ(c.finish.status.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(c.finish.usage.generated_tokens, static_cast<int64_t>(c.tokens.size()) + 1);
  EXPECT_EQ(h->engine->Stats().slots_used, before.slots_used);
  EXPECT_EQ(h->engine->Stats().kv_blocks_used, before.kv_blocks_used);
  ExpectNoStateHeld(*h->engine);
}

TEST(EngineTest, DroppingTheHandleCancels) {
  auto h = MakeHarness(SmallOptions(), FakeBackendOptions(), /*gated=*/true);
  {
    auto a = h->engine->Submit(Greedy(Ids("a"), 1000));
    ASSERT_TRUE(a.ok());
    h->backends[0]->AwaitEntered(1);
  }
  h->backends[0]->SetGated(false);
  // The cancellation is seen within one step; wait for it through the finished count.
  auto done = h->engine->Submit(Greedy(Ids("z"), 1));
  ASSERT_TRUE(done.ok());
  Collect(**done);
  for (const RequestObservation& r : h->observer->finished()) {
    if (r.usage.prompt_tokens == 1 && r.usage.generated_tokens > 1) {
      EXPECT_EQ(r.reason, FinishReason::kCancelled);
    }
  }
  EXPECT_EQ(h->engine->Stats().finished_by_reason[static_cast<int>(FinishReason::kCancelled)], 1);
  ExpectNoStateHeld(*h->engine);
}

TEST(EngineTest, DeadlineWhileRunningFreesState) {
  auto h = MakeHarness(SmallOptions(), FakeBackendOptions(), /*gated=*/true);
  Request r = Greedy(Ids("a"), 1000);
  r.deadline = h->clock->Now() + absl::Seconds(10);
  auto a = h->engine->Submit(r);
  ASSERT_TRUE(a.ok());
  h->backends[0]->Allow(1);
  EXPECT_EQ((*a)->Next().token_ids.size(), 1u);
  h->backends[0]->AwaitEntered(2);
  h->clock->Advance(absl::Seconds(11));
  h->backends[0]->SetGated(false);
  const Collected c = Collect(**a);
  EXPECT_EQ(c.finish.reason, FinishReason::kDeadline);
  EXPECT_EQ(c.finish.status.code(), absl::StatusCode::kDeadlineExceeded);
  ExpectNoStateHeld(*h->engine);
}

TEST(EngineTest, DeadlineWhileQueued) {
  EngineOptions o = SmallOptions();
  o.max_batch = 1;
  auto h = MakeHarness(o, FakeBackendOptions(), /*gated=*/true);
  auto a = h->engine->Submit(Greedy(Ids("a"), 1000));
  ASSERT_TRUE(a.ok());
  h->backends[0]->AwaitEntered(1);
  Request r = Greedy(Ids("b"), 5);
  r.deadline = h->clock->Now() + absl::Seconds(5);
  auto b = h->engine->Submit(r);
  ASSERT_TRUE(b.ok());
  h->clock->Advance(absl::Seconds(6));
  h->backends[0]->Allow(2);  // A's first step ends; B expires in planning the second
  const Collected c = Collect(**b);
  EXPECT_EQ(c.finish.reason, FinishReason::kDeadline);
  EXPECT_EQ(c.finish.usage.generated_tokens, 0);
  EXPECT_TRUE(c.tokens.empty());
  h->backends[0]->AwaitEntered(3);
  (*a)->Cancel();
  h->backends[0]->SetGated(false);
  EXPECT_EQ(Collect(**a).finish.reason, FinishReason::kCancelled);
  ExpectNoStateHeld(*h->engine);
}

TEST(EngineTest, SlowConsumerIsEndedAndItsEventsMerged) {
  EngineOptions o = SmallOptions();
  o.max_pending_events = 2;
  o.stall_timeout = absl::Seconds(5);
  auto h = MakeHarness(o, FakeBackendOptions(), /*gated=*/true);
  absl::Notification first_event;
  auto a = h->engine->Submit(Greedy(Ids("a"), 1000), [&first_event] {
    if (!first_event.HasBeenNotified()) first_event.Notify();
  });
  ASSERT_TRUE(a.ok());
  h->backends[0]->Allow(5);
  first_event.WaitForNotification();
  h->backends[0]->AwaitEntered(6);  // five steps done, the reader has read nothing
  h->clock->Advance(absl::Seconds(6));
  // Another stream, read as it goes, carries on.
  auto other = h->engine->Submit(Greedy(Ids("A"), 12));
  ASSERT_TRUE(other.ok());
  h->backends[0]->SetGated(false);
  h->observer->AwaitFinished(FinishReason::kSlowConsumer);  // reading now would un-stall it
  const Collected c = Collect(**a);
  EXPECT_EQ(c.finish.reason, FinishReason::kSlowConsumer);
  EXPECT_EQ(c.finish.status.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(c.events, 2);  // at most max_pending_events were queued
  EXPECT_EQ(static_cast<int64_t>(c.tokens.size()), c.finish.usage.generated_tokens);
  EXPECT_GE(c.tokens.size(), 5u);
  const Collected d = Collect(**other);
  EXPECT_EQ(d.finish.reason, FinishReason::kLength);
  EXPECT_EQ(d.tokens.size(), 12u);
  EXPECT_GT(h->engine->Stats().merged_events, 0);
  ExpectNoStateHeld(*h->engine);
}

// ---------------------------------------------------------------------------------------------
// Sessions

FakeBackendOptions HistoryModel() {
  FakeBackendOptions b;
  b.peak = 0.0f;
  return b;
}

TEST(EngineSessionTest, ContinuationEqualsOneRequestOverTheConcatenation) {
  auto h = MakeHarness(SmallOptions(), HistoryModel());
  const std::vector<int32_t> prefix = Ids("You are a test.");
  const std::vector<int32_t> turn1 = Ids(" Hi");
  const std::vector<int32_t> turn2 = Ids(" More");
  auto s = CreateSessionSync(*h->engine, "", prefix);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->state.context_tokens, static_cast<int64_t>(prefix.size()));

  Request r1 = Greedy(turn1, 6);
  r1.session_id = s->id;
  auto h1 = h->engine->Submit(r1);
  ASSERT_TRUE(h1.ok());
  const Collected c1 = Collect(**h1);
  EXPECT_EQ(c1.tokens, FakeBackend::Greedy(h->backend_options, Concat({prefix, turn1}), 6));
  EXPECT_EQ(c1.finish.usage.prompt_tokens, static_cast<int64_t>(turn1.size()));
  EXPECT_EQ(c1.finish.usage.reused_tokens, static_cast<int64_t>(prefix.size()) - 1);

  Request r2 = Greedy(turn2, 6);
  r2.session_id = s->id;
  auto h2 = h->engine->Submit(r2);
  ASSERT_TRUE(h2.ok());
  const Collected c2 = Collect(**h2);
  const std::vector<int32_t> whole = Concat({prefix, turn1, c1.tokens, turn2});
  EXPECT_EQ(c2.tokens, FakeBackend::Greedy(h->backend_options, whole, 6));
  // Only the new tokens were processed.
  EXPECT_EQ(c2.finish.usage.prompt_tokens, static_cast<int64_t>(turn2.size()));
  EXPECT_EQ(c2.finish.usage.reused_tokens,
            static_cast<int64_t>(prefix.size() + turn1.size() + c1.tokens.size()) - 1);
  EXPECT_EQ(c2.finish.usage.state.context_tokens, static_cast<int64_t>(whole.size()) + 6);

  // The same as one request over the concatenation.
  auto one = h->engine->Submit(Greedy(whole, 6));
  ASSERT_TRUE(one.ok());
  EXPECT_EQ(Collect(**one).tokens, c2.tokens);

  auto info = h->engine->GetSession(s->id);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->state.context_tokens, static_cast<int64_t>(whole.size()) + 6);
  EXPECT_FALSE(info->busy);
  EXPECT_EQ(info->state.slot_bytes, h->backends[0]->layout().slot_bytes());
  EXPECT_EQ(info->state.kv_blocks, 1);

  // An empty prompt continues from the last generated token.
  Request r3 = Greedy({}, 3);
  r3.session_id = s->id;
  auto h3 = h->engine->Submit(r3);
  ASSERT_TRUE(h3.ok());
  const std::vector<int32_t> so_far = Concat({whole, c2.tokens});
  EXPECT_EQ(Collect(**h3).tokens, FakeBackend::Greedy(h->backend_options, so_far, 3));
}

// The worker recounts its idle-session totals only after a change (Publish's cache): the
// published softmax-equivalent bytes stay the sum over the sessions' own reports through
// creation, a fork, continuations (busy, then idle again, copy-on-write) and a deletion.
TEST(EngineSessionTest, PublishedTotalsFollowIdleAndBusySessions) {
  auto h = MakeHarness(SmallOptions(), HistoryModel());
  auto expect_sum = [&](const std::vector<std::string>& ids) {
    int64_t sum = 0;
    for (const std::string& id : ids) {
      auto info = h->engine->GetSession(id);
      ASSERT_TRUE(info.ok()) << id;
      EXPECT_FALSE(info->busy) << id;
      sum += info->state.softmax_equivalent_bytes;
    }
    EXPECT_GT(sum, 0);
    EXPECT_EQ(h->engine->Stats().softmax_equivalent_bytes, sum);
  };
  std::vector<int32_t> prefix(100);
  for (int i = 0; i < 100; ++i) prefix[i] = 30 + i % 50;
  ASSERT_TRUE(CreateSessionSync(*h->engine, "a", prefix).ok());
  expect_sum({"a"});
  ASSERT_TRUE(ForkSessionSync(*h->engine, "a", "b").ok());
  expect_sum({"a", "b"});
  Request rb = Greedy(Ids("b turn"), 6);
  rb.session_id = "b";
  Collect(**h->engine->Submit(rb));
  expect_sum({"a", "b"});
  Request ra = Greedy(Ids("a turn, longer"), 3);
  ra.session_id = "a";
  Collect(**h->engine->Submit(ra));
  expect_sum({"a", "b"});
  ASSERT_TRUE(h->engine->DeleteSession("a").ok());
  Collect(**h->engine->Submit(Greedy({5}, 1)));  // the worker has released "a" by now
  expect_sum({"b"});
}

TEST(EngineSessionTest, ForkDivergesWithoutChangingTheParent) {
  auto h = MakeHarness(SmallOptions(), HistoryModel());
  std::vector<int32_t> prefix(100);  // two blocks: the second is shared, then copied on write
  for (int i = 0; i < 100; ++i) prefix[i] = 30 + i % 50;
  auto parent = CreateSessionSync(*h->engine, "parent", prefix);
  ASSERT_TRUE(parent.ok()) << parent.status();
  const int64_t blocks_before = h->engine->Stats().kv_blocks_used;
  auto child = ForkSessionSync(*h->engine, "parent", "child");
  ASSERT_TRUE(child.ok()) << child.status();
  EXPECT_EQ(child->id, "child");
  EXPECT_EQ(child->worker, parent->worker);
  EXPECT_EQ(child->state.context_tokens, parent->state.context_tokens);
  // Blocks are shared, only a slot is added.
  EXPECT_EQ(h->engine->Stats().kv_blocks_used, blocks_before);
  EXPECT_EQ(h->engine->Stats().slots_used, 2);

  Request rc = Greedy(Ids("child turn"), 5);
  rc.session_id = "child";
  auto hc = h->engine->Submit(rc);
  ASSERT_TRUE(hc.ok());
  EXPECT_EQ(Collect(**hc).tokens,
            FakeBackend::Greedy(h->backend_options, Concat({prefix, Ids("child turn")}), 5));

  Request rp = Greedy(Ids("parent turn"), 5);
  rp.session_id = "parent";
  auto hp = h->engine->Submit(rp);
  ASSERT_TRUE(hp.ok());
  EXPECT_EQ(Collect(**hp).tokens,
            FakeBackend::Greedy(h->backend_options, Concat({prefix, Ids("parent turn")}), 5));
  ASSERT_TRUE(h->engine->DeleteSession("child").ok());
  ASSERT_TRUE(h->engine->DeleteSession("parent").ok());
  // Deletion is carried out by the worker; a request after it sees the memory back.
  Collect(**h->engine->Submit(Greedy({5}, 1)));
  ExpectNoStateHeld(*h->engine);
  EXPECT_EQ(h->engine->Stats().sessions_created, 2);
  EXPECT_EQ(h->engine->Stats().sessions_released, 2);
}

TEST(EngineSessionTest, BusySessionIsFailedPreconditionUnknownIsNotFound) {
  auto h = MakeHarness(SmallOptions(), FakeBackendOptions(), /*gated=*/true);
  h->backends[0]->SetGated(false);
  auto s = CreateSessionSync(*h->engine, "s1", Ids("hello"));
  ASSERT_TRUE(s.ok());
  h->backends[0]->SetGated(true);
  const int64_t entered = h->backends[0]->entered();
  Request r = Greedy(Ids("!"), 4);
  r.session_id = "s1";
  auto running = h->engine->Submit(r);
  ASSERT_TRUE(running.ok());
  h->backends[0]->AwaitEntered(entered + 1);

  auto again = h->engine->Submit(r);
  EXPECT_EQ(again.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(h->engine->DeleteSession("s1").code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(ForkSessionSync(*h->engine, "s1").status().code(),
            absl::StatusCode::kFailedPrecondition);
  auto info = h->engine->GetSession("s1");
  ASSERT_TRUE(info.ok());
  EXPECT_TRUE(info->busy);
  EXPECT_EQ(CreateSessionSync(*h->engine, "s1", {}).status().code(),
            absl::StatusCode::kAlreadyExists);

  h->backends[0]->SetGated(false);
  EXPECT_EQ(Collect(**running).tokens.size(), 4u);
  EXPECT_TRUE(h->engine->DeleteSession("s1").ok());
  EXPECT_EQ(h->engine->GetSession("s1").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(h->engine->Submit(r).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(h->engine->DeleteSession("s1").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ForkSessionSync(*h->engine, "s1").status().code(), absl::StatusCode::kNotFound);
}

TEST(EngineSessionTest, IdleSessionsExpireAfterTheTtl) {
  EngineOptions o = SmallOptions();
  o.session_ttl = absl::Seconds(60);
  auto h = MakeHarness(o);
  ASSERT_TRUE(CreateSessionSync(*h->engine, "old", Ids("x")).ok());
  h->clock->Advance(absl::Seconds(30));
  ASSERT_TRUE(CreateSessionSync(*h->engine, "young", Ids("y")).ok());
  h->clock->Advance(absl::Seconds(31));  // "old" is 61 s idle, "young" 31 s
  h->observer->AwaitEvictions(1);
  EXPECT_THAT(h->observer->evicted(), ElementsAreArray({EvictReason::kTtl}));
  EXPECT_EQ(h->engine->GetSession("old").status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(h->engine->GetSession("young").ok());
  h->clock->Advance(absl::Seconds(30));
  h->observer->AwaitEvictions(2);
  EXPECT_EQ(h->engine->GetSession("young").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(h->engine->Stats().evictions_by_reason[static_cast<int>(EvictReason::kTtl)], 2);
}

TEST(EngineSessionTest, MaxSessionsEvictsTheLeastRecentlyUsedIdleSession) {
  EngineOptions o = SmallOptions();
  o.max_sessions = 2;
  auto h = MakeHarness(o, FakeBackendOptions(), /*gated=*/false);
  ASSERT_TRUE(CreateSessionSync(*h->engine, "a", Ids("a")).ok());
  h->clock->Advance(absl::Seconds(1));
  ASSERT_TRUE(CreateSessionSync(*h->engine, "b", Ids("b")).ok());
  h->clock->Advance(absl::Seconds(1));
  // Use "a" so that "b" becomes the least recently used.
  Request r = Greedy(Ids("!"), 1);
  r.session_id = "a";
  Collect(**h->engine->Submit(r));
  h->clock->Advance(absl::Seconds(1));
  ASSERT_TRUE(CreateSessionSync(*h->engine, "c", Ids("c")).ok());
  h->observer->AwaitEvictions(1);
  EXPECT_THAT(h->observer->evicted(), ElementsAreArray({EvictReason::kCapacity}));
  EXPECT_EQ(h->engine->GetSession("b").status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(h->engine->GetSession("a").ok());
  EXPECT_TRUE(h->engine->GetSession("c").ok());

  // A busy session is never evicted: with "a" busy and "c" idle, "c" goes.
  h->backends[0]->SetGated(true);
  const int64_t entered = h->backends[0]->entered();
  r.stopping.max_new_tokens = 2;
  auto busy = h->engine->Submit(r);
  ASSERT_TRUE(busy.ok());
  h->backends[0]->AwaitEntered(entered + 1);
  absl::Notification created;
  ASSERT_TRUE(h->engine
                  ->CreateSession("d", {}, absl::InfiniteFuture(),
                                  [&created](absl::StatusOr<SessionInfo> s) {
                                    EXPECT_TRUE(s.ok()) << s.status();
                                    created.Notify();
                                  })
                  .ok());
  EXPECT_TRUE(h->engine->GetSession("a").ok());
  EXPECT_EQ(h->engine->GetSession("c").status().code(), absl::StatusCode::kNotFound);
  h->backends[0]->SetGated(false);
  created.WaitForNotification();
  Collect(**busy);
  std::vector<std::string> ids;
  for (const SessionInfo& s : h->engine->ListSessions()) ids.push_back(s.id);
  EXPECT_THAT(ids, ElementsAreArray({"a", "d"}));
}

TEST(EngineSessionTest, IdleSessionsAreEvictedForMemoryLruFirst) {
  FakeBackendOptions b;
  b.num_slots = 2;
  auto h = MakeHarness(SmallOptions(), b);
  ASSERT_TRUE(CreateSessionSync(*h->engine, "first", Ids("1")).ok());
  h->clock->Advance(absl::Seconds(1));
  ASSERT_TRUE(CreateSessionSync(*h->engine, "second", Ids("2")).ok());
  // Both slots are held by idle sessions; a request needs one.
  auto r = h->engine->Submit(Greedy(Ids("go"), 2));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(Collect(**r).finish.reason, FinishReason::kLength);
  EXPECT_THAT(h->observer->evicted(), ElementsAreArray({EvictReason::kLru}));
  EXPECT_EQ(h->engine->GetSession("first").status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(h->engine->GetSession("second").ok());
}

// ---------------------------------------------------------------------------------------------
// Workers, shutdown, validation

TEST(EngineTest, RequestsSpreadOverWorkersAndSessionsStayOnTheirWorker) {
  EngineOptions o = SmallOptions();
  o.num_workers = 2;
  auto h = MakeHarness(o, FakeBackendOptions(), /*gated=*/true);
  auto a = h->engine->Submit(Greedy(Ids("a"), 2));
  auto b = h->engine->Submit(Greedy(Ids("b"), 2));
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE(b.ok());
  h->backends[0]->AwaitEntered(1);
  h->backends[1]->AwaitEntered(1);  // each worker got one
  h->backends[0]->SetGated(false);
  h->backends[1]->SetGated(false);
  Collect(**a);
  Collect(**b);

  auto s = CreateSessionSync(*h->engine, "pinned", Ids("p"));
  ASSERT_TRUE(s.ok());
  const int w = s->worker;
  const size_t steps_before = h->backends[w]->steps().size();
  const size_t other_before = h->backends[1 - w]->steps().size();
  Request r = Greedy(Ids("q"), 3);
  r.session_id = "pinned";
  Collect(**h->engine->Submit(r));
  auto f = ForkSessionSync(*h->engine, "pinned");
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f->worker, w);
  EXPECT_EQ(h->backends[w]->steps().size(), steps_before + 3);
  EXPECT_EQ(h->backends[1 - w]->steps().size(), other_before);
}

// StepObservation's host-time split (the serving overhead's metrics): the parts are ordered and
// non-negative, and the time a step spends inside Backend::Step counts as `backend`, not as host
// time. The gate holds the first step for a measured 30 ms of real time (host times are wall
// time on the steady clock, whatever the engine's clock).
TEST(EngineTest, StepObservationsSplitHostAndBackendTime) {
  auto h = MakeHarness(SmallOptions(), FakeBackendOptions(), /*gated=*/true);
  const auto start = std::chrono::steady_clock::now();
  auto a = h->engine->Submit(Greedy(Ids("abc"), 4));
  ASSERT_TRUE(a.ok());
  h->backends[0]->AwaitEntered(1);
  absl::SleepFor(absl::Milliseconds(30));  // measured, not a synchronisation
  h->backends[0]->SetGated(false);
  const Collected c = Collect(**a);
  EXPECT_EQ(c.tokens.size(), 4u);
  h->observer->AwaitSteps(4);
  const absl::Duration wall = absl::FromChrono(std::chrono::steady_clock::now() - start);
  const std::vector<StepObservation> steps = h->observer->steps();
  ASSERT_EQ(steps.size(), 4u);  // one prefill step, then a decode step per further token
  EXPECT_GE(steps[0].backend, absl::Milliseconds(30));
  absl::Duration total;
  for (size_t i = 0; i < steps.size(); ++i) {
    const StepObservation& s = steps[i];
    SCOPED_TRACE(::testing::Message()
                 << "step " << i << ": before " << s.host_before << " schedule " << s.schedule
                 << " backend " << s.backend << " after " << s.host_after << " emit " << s.emit);
    EXPECT_GE(s.schedule, absl::ZeroDuration());
    EXPECT_GE(s.host_before, s.schedule);
    EXPECT_GE(s.backend, absl::ZeroDuration());
    EXPECT_GE(s.emit, absl::ZeroDuration());
    EXPECT_GE(s.host_after, s.emit);
    EXPECT_LT(s.host_before + s.host_after, absl::Milliseconds(30));  // the gate is not host time
    total += s.host_before + s.backend + s.host_after;
  }
  EXPECT_LE(total, wall);
  ExpectNoStateHeld(*h->engine);
}

// Several notifier threads per worker: every stream still gets all its tokens, in order.
TEST(EngineTest, SeveralNotifyThreadsDeliverEveryStreamInOrder) {
  EngineOptions o = SmallOptions();
  o.notify_threads = 3;
  auto h = MakeHarness(o);
  std::vector<std::unique_ptr<RequestHandle>> handles;
  const std::vector<std::string> prompts = {"a", "k", "q", "x"};
  for (const std::string& p : prompts) {
    auto a = h->engine->Submit(Greedy(Ids(p), 7), [] {});
    ASSERT_TRUE(a.ok());
    handles.push_back(std::move(*a));
  }
  for (size_t i = 0; i < prompts.size(); ++i) {
    const Collected c = Collect(*handles[i]);
    EXPECT_THAT(c.tokens,
                ElementsAreArray(FakeBackend::Greedy(h->backend_options, Ids(prompts[i]), 7)));
    EXPECT_EQ(c.finish.reason, FinishReason::kLength);
  }
  ExpectNoStateHeld(*h->engine);
}

// The old notification path (on_ready on the scheduler thread) still delivers every token.
TEST(EngineTest, NotifyOnWorkerThreadDeliversEveryToken) {
  EngineOptions o = SmallOptions();
  o.notify_on_worker_thread = true;
  auto h = MakeHarness(o);
  std::atomic<int> ready{0};
  auto a = h->engine->Submit(Greedy(Ids("a"), 6), [&ready] { ++ready; });
  ASSERT_TRUE(a.ok());
  const Collected c = Collect(**a);
  EXPECT_THAT(c.tokens, ElementsAreArray(FakeBackend::Greedy(h->backend_options, Ids("a"), 6)));
  EXPECT_EQ(c.finish.reason, FinishReason::kLength);
  EXPECT_GE(ready.load(), 1);
  ExpectNoStateHeld(*h->engine);
}

TEST(EngineTest, ShutdownEndsQueuedAndRunningRequests) {
  EngineOptions o = SmallOptions();
  o.max_batch = 1;
  auto h = MakeHarness(o, FakeBackendOptions(), /*gated=*/true);
  auto a = h->engine->Submit(Greedy(Ids("a"), 4000));
  auto b = h->engine->Submit(Greedy(Ids("b"), 4000));
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE(b.ok());
  h->backends[0]->AwaitEntered(1);
  h->engine->StartDrain();
  auto c = h->engine->Submit(Greedy(Ids("c"), 1));
  EXPECT_EQ(c.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("draining"));
  h->engine->Shutdown();  // takes effect after the step held in the gate
  h->backends[0]->SetGated(false);
  const Collected ca = Collect(**a);
  const Collected cb = Collect(**b);
  EXPECT_EQ(ca.tokens.size(), 1u);
  EXPECT_EQ(ca.finish.reason, FinishReason::kShutdown);
  EXPECT_EQ(ca.finish.status.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(cb.finish.reason, FinishReason::kShutdown);
  EXPECT_EQ(cb.finish.usage.generated_tokens, 0);
  h->engine.reset();  // handles outlive the engine
  EXPECT_TRUE((*a)->done());
}

struct InvalidRequestCase {
  std::string name;
  void (*mutate)(Request*);
  absl::StatusCode code;
  std::string field;
};

class EngineValidationTest : public ::testing::TestWithParam<InvalidRequestCase> {};

TEST_P(EngineValidationTest, NamesTheField) {
  auto h = MakeHarness();
  Request r = Greedy(Ids("ok"), 4);
  GetParam().mutate(&r);
  auto handle = h->engine->Submit(r);
  ASSERT_FALSE(handle.ok());
  EXPECT_EQ(handle.status().code(), GetParam().code) << handle.status();
  EXPECT_THAT(std::string(handle.status().message()), HasSubstr(GetParam().field));
}

INSTANTIATE_TEST_SUITE_P(
    Table, EngineValidationTest,
    ::testing::Values(
        InvalidRequestCase{"empty_prompt", [](Request* r) { r->prompt.clear(); },
                           absl::StatusCode::kInvalidArgument, "prompt"},
        InvalidRequestCase{"token_outside_vocab", [](Request* r) { r->prompt.push_back(256); },
                           absl::StatusCode::kInvalidArgument, "prompt[2]"},
        InvalidRequestCase{"negative_token", [](Request* r) { r->prompt[0] = -1; },
                           absl::StatusCode::kInvalidArgument, "prompt[0]"},
        InvalidRequestCase{"temperature", [](Request* r) { r->sampling.temperature = -1; },
                           absl::StatusCode::kInvalidArgument, "temperature"},
        InvalidRequestCase{"top_k_above_vocab", [](Request* r) { r->sampling.top_k = 257; },
                           absl::StatusCode::kInvalidArgument, "top_k"},
        InvalidRequestCase{"top_p", [](Request* r) { r->sampling.top_p = 0; },
                           absl::StatusCode::kInvalidArgument, "top_p"},
        InvalidRequestCase{"stop_empty", [](Request* r) { r->stopping.stop = {""}; },
                           absl::StatusCode::kInvalidArgument, "stop[0]"},
        InvalidRequestCase{"stop_token", [](Request* r) { r->stopping.stop_token_ids = {300}; },
                           absl::StatusCode::kInvalidArgument, "stop_token_ids[0]"},
        InvalidRequestCase{"min_above_max", [](Request* r) { r->stopping.min_new_tokens = 5; },
                           absl::StatusCode::kInvalidArgument, "min_new_tokens"},
        InvalidRequestCase{"max_new_above_context",
                           [](Request* r) { r->stopping.max_new_tokens = 5000; },
                           absl::StatusCode::kInvalidArgument, "max_new_tokens"},
        InvalidRequestCase{"top_logprobs", [](Request* r) { r->top_logprobs = 21; },
                           absl::StatusCode::kInvalidArgument, "top_logprobs"},
        InvalidRequestCase{"prompt_too_long", [](Request* r) { r->prompt.assign(4096, 5); },
                           absl::StatusCode::kInvalidArgument, "prompt"},
        InvalidRequestCase{"session_id_chars", [](Request* r) { r->session_id = "a b"; },
                           absl::StatusCode::kInvalidArgument, "session_id"},
        InvalidRequestCase{"unknown_session", [](Request* r) { r->session_id = "nope"; },
                           absl::StatusCode::kNotFound, "nope"}),
    [](const auto& info) { return info.param.name; });

TEST(EngineTest, CreateOptionsAreValidated) {
  EngineOptions o = SmallOptions();
  o.token_budget = 4;  // < max_batch - 1 + prefill_chunk_tokens
  auto e = Engine::Create(o, [](int) -> absl::StatusOr<std::unique_ptr<Backend>> {
    return std::unique_ptr<Backend>(FakeBackend::Create(FakeBackendOptions()));
  });
  EXPECT_EQ(e.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(e.status().message()), HasSubstr("token_budget"));
  o = SmallOptions();
  o.notify_threads = 0;
  e = Engine::Create(o, [](int) -> absl::StatusOr<std::unique_ptr<Backend>> {
    return std::unique_ptr<Backend>(FakeBackend::Create(FakeBackendOptions()));
  });
  EXPECT_EQ(e.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(e.status().message()), HasSubstr("notify_threads"));
}

}  // namespace
}  // namespace hyla::testing
