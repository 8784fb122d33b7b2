// The embedded default model (models/default, trained by tools/train/train.py) through
// Checkpoint::Open and the CPU backend (label unit; default_model_eval_test.cc has the slower
// end-to-end checks):
//   * it is the trained NAtS-L model the card describes (shape, size);
//   * the backend reproduces the logits the training program exported for a held-out passage
//     (tests/default_model/golden.safetensors), through one prefill, prefill + token-by-token
//     decode, and random step splits, with the same routing decisions.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/types/span.h"
#include "gtest/gtest.h"
#include "runtime/engine/backend.h"
#include "runtime/engine/sequence_runner.h"
#include "runtime/model/checkpoint.h"
#include "runtime/state/state_layout.h"
#include "runtime/state/state_store.h"
#include "tests/default_model/default_model_util.h"
#include "tests/testing/golden_util.h"

namespace hyla {
namespace {

namespace fs = std::filesystem;
using default_model_testing::Golden;
using default_model_testing::kHeads;
using default_model_testing::kVocab;
using default_model_testing::LoadGolden;
using default_model_testing::ModelDir;
using testing::LoadCpuBackend;
using testing::MaxAbsDiff;
using testing::PrefillThenDecode;
using testing::RandomSplit;

constexpr int kChunk = 64;
constexpr int kNatslLayers[3] = {1, 3, 5};  // config gdn_layers = [0, 2, 4]

class DefaultModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto golden = LoadGolden();
    ASSERT_TRUE(golden.ok()) << golden.status();
    golden_ = std::move(golden).value();
    auto backend = LoadCpuBackend(ModelDir());
    ASSERT_TRUE(backend.ok()) << backend.status();
    backend_ = std::move(backend).value();
  }

  // Max |logit| of the golden passage scales the fp32 tolerance: the fixtures' 1e-4 bound is
  // for logits of magnitude ~1, and fp32 rounding differences between two correct
  // implementations (different summation orders, chunked vs recurrent delta rule) grow with the
  // magnitude of the activations. The trained model's logits reach ~20.
  float Tolerance() const {
    float m = 0.0f;
    for (float x : golden_.logits) m = std::max(m, std::fabs(x));
    return 1e-4f * std::max(1.0f, m);
  }

  std::vector<float> Run(absl::Span<const int32_t> ids, const std::vector<int64_t>& chunks) {
    auto logits = RunSequenceLogits(*backend_, ids, chunks);
    EXPECT_TRUE(logits.ok()) << logits.status();
    return logits.ok() ? *logits : std::vector<float>();
  }

  Golden golden_;
  std::unique_ptr<cpu::CpuBackend> backend_;
};

TEST_F(DefaultModelTest, IsTheTrainedNatslModel) {
  const ModelConfig& c = backend_->config();
  EXPECT_EQ(c.family, Family::kNatsl);
  EXPECT_EQ(c.vocab_size, kVocab);
  EXPECT_EQ(c.hidden_size, 256);
  ASSERT_EQ(c.num_layers, 6);
  for (int l = 0; l < c.num_layers; ++l) {
    EXPECT_EQ(c.layers[l].kind, l % 2 == 1 ? LayerKind::kNatsl : LayerKind::kGdn) << l;
  }
  const uintmax_t bytes = fs::file_size(ModelDir() + "/model.safetensors");
  EXPECT_LE(bytes, 30u * 1000 * 1000) << "the issue's size limit";
  EXPECT_GE(bytes, 5u * 1000 * 1000 * 4) << "5M fp32 parameters at least";
}

TEST_F(DefaultModelTest, ReproducesTrainingLogitsInOnePrefill) {
  const std::vector<float> got = Run(golden_.ids, {});
  const float diff = MaxAbsDiff(got, golden_.logits);
  std::printf("default model golden logits (prefill): max|diff| %.3g, tolerance %.3g\n", diff,
              Tolerance());
  EXPECT_LE(diff, Tolerance());
}

TEST_F(DefaultModelTest, ReproducesTrainingLogitsThroughDecode) {
  const int64_t t = static_cast<int64_t>(golden_.ids.size());
  const std::vector<float> decode = Run(golden_.ids, PrefillThenDecode(t, 70));
  const float diff = MaxAbsDiff(decode, golden_.logits);
  std::printf("default model golden logits (prefill 70 + decode): max|diff| %.3g\n", diff);
  EXPECT_LE(diff, Tolerance());
  for (uint32_t seed : {1u, 2u}) {
    EXPECT_LE(MaxAbsDiff(Run(golden_.ids, RandomSplit(t, 90, seed)), golden_.logits), Tolerance())
        << "split seed " << seed;
  }
}

// After the passage, every NAtS-L KV stream holds exactly the complete chunks that the training
// program routed to softmax (routing == 0) for that layer and head, then the current chunk.
TEST_F(DefaultModelTest, RoutesChunksAsTheTrainingProgram) {
  auto seq = backend_->store().NewSequence();
  ASSERT_TRUE(seq.ok()) << seq.status();
  backend_->ResetSlot((*seq)->slot);
  SequenceWork w;
  w.seq = seq->get();
  w.tokens = golden_.ids;
  w.logits = LogitsMode::kLast;
  StepOutput out;
  ASSERT_TRUE(backend_->Step({w}, &out).ok());
  const int64_t complete = static_cast<int64_t>(golden_.ids.size()) / kChunk;
  ASSERT_EQ(golden_.chunks, complete + 1) << "the golden passage ends in an incomplete chunk";
  int64_t to_softmax = 0, to_gdn = 0;
  bool both_ops = false;
  for (int i = 0; i < 3; ++i) {
    for (int h = 0; h < kHeads; ++h) {
      std::vector<int64_t> expected;
      for (int64_t c = 0; c < complete; ++c) {
        const int op = golden_.routing[(i * golden_.chunks + c) * kHeads + h];
        ASSERT_NE(op, -1);
        if (op == 0) {
          expected.push_back(c);
          ++to_softmax;
        } else {
          ++to_gdn;
        }
      }
      expected.push_back(complete);
      std::vector<int64_t> actual;
      const int stream = backend_->layout().first_stream(kNatslLayers[i]) + h;
      for (const BlockRef& ref : (*seq)->streams[stream]) actual.push_back(ref.chunk);
      EXPECT_EQ(actual, expected) << "layer " << kNatslLayers[i] << " head " << h;
    }
  }
  both_ops = to_softmax > 0 && to_gdn > 0;
  EXPECT_TRUE(both_ops) << "the passage should exercise both ops";
  EXPECT_EQ(out.routing.to_softmax, to_softmax);
  EXPECT_EQ(out.routing.to_gdn, to_gdn);
  backend_->store().Release(std::move(seq).value());
}

}  // namespace
}  // namespace hyla
