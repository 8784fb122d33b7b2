// Random-checkpoint generator: writes a Hugging Face style model directory (config.json +
// model.safetensors) for any family hyla serves, with the config keys and tensor names of the
// authors' code, so tests, benchmarks and `hyla-model info` can use models of any shape without
// the reference PyTorch stack.
//
// The config.json is written first (the keys and spelling of the authors' saved configs, as in
// shared/golden/<family>/config.json), then parsed back with ParseModelConfig, and the weights
// are exactly ListModelTensors(parsed config) (tools/model_tensors.h): one source of truth, so
// a generated checkpoint always loads with no missing or unexpected tensor.
//
// Values: a fixed seed gives the same bytes (own splitmix64 streams and Box-Muller, not
// <random>'s implementation-defined distributions; only libm's log/cos enter). Each tensor draws
// from its own stream, seeded from (seed, tensor name), so a tensor's values do not depend on the
// other tensors. Initialisation follows the reference (see InitKind), with the router exception of
// kRouterStd.
//
// Thread-safety: pure functions (GenerateModel writes only under out_dir).
#ifndef HYLA_TOOLS_MODEL_GENERATOR_H_
#define HYLA_TOOLS_MODEL_GENERATOR_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "runtime/model/config.h"
#include "runtime/model/dtype.h"

namespace hyla::tools {

// The dimensions of a generated model. Fields a family does not use are ignored.
struct ModelShape {
  Family family = Family::kNatsl;
  int vocab_size = 256;
  int hidden_size = 64;
  int num_layers = 4;
  // SwiGLU width; 0 writes "intermediate_size": null and lets the family's rule derive it from
  // hidden_ratio (fla GatedMLP: 256-aligned 2/3 · ratio · hidden). Llama needs it explicit.
  int intermediate_size = 128;
  int hidden_ratio = 4;
  // natsl / gdn: GDN q/k heads (= NAtS-L decision heads H); nha / llama: query heads.
  int num_heads = 2;
  int num_kv_heads = 0;  // nha / llama: KV heads (0: num_heads)
  int num_v_heads = 0;   // gdn: value heads for GVA (0: null, i.e. num_heads)
  // natsl / gdn: dk (config "head_dim"); llama: head_dim; nha: dk = dv (written as expand_k /
  // expand_v = head_dim · num_heads / hidden_size).
  int head_dim = 32;
  double expand_v = 2.0;        // natsl / gdn: dv = head_dim · expand_v
  int num_attn_heads = 4;       // natsl: softmax heads Ha (multiple of num_heads)
  std::vector<int> gdn_layers;  // natsl: the pure GDN layers (all others are NAtS-L layers)
  // gdn: softmax layers of a hybrid (fla "attn" specification); empty: "attn": null.
  std::vector<int> attn_layers;
  int attn_num_heads = 0;
  int attn_num_kv_heads = 0;
  int attn_window_size = 0;  // 0: full causal attention (null)
  int num_slots = 16;        // nha: M
  int window_size = 32;      // nha: W
  int kv_shift = 0;          // nha: gsa_kv_shift
  double rope_theta = 10000.0;
  double norm_eps = 1e-6;
  int max_position_embeddings = 2048;
  int bos_token_id = 1;
  int eos_token_id = 2;
  bool tie_word_embeddings = false;
  DType dtype = DType::kF32;  // weights dtype (F32, BF16 or F16), also the config's "dtype"
};

// The named shapes. Tiny test models (vocab 256): "tiny" (hidden 64) for every family, "small"
// (hidden 128, the golden fixtures' shapes), "tiny-hybrid" (gdn: GVA + a softmax layer).
// Paper scale (bf16; use config_only, their weights are GBs): natsl "natsl-340m" and
// "natsl-760m" (NAtS-L experiments/configs), nha "nha-llama3-8b" (32 layers, hidden 4096,
// 32 q / 8 kv heads, dk = dv = 128, M = 64, W = 64), llama "llama3-8b", gdn "qwen3next-1b"
// (hidden 2048, 24 layers, 16 q/k heads, 32 value heads × 128, attention every 4th layer).
// Their baselines for issue 5's comparison: gdn "qwen3next-1b-twin" (qwen3next-1b with every
// layer softmax attention) and llama "natsl-760m-twin" (a transformer of natsl-760m's
// dimensions: hidden 1536, 21 layers, SwiGLU 4096, 12 heads × 128, vocab 32000).
absl::StatusOr<ModelShape> PresetShape(Family family, absl::string_view preset);
// Preset names of a family, for --help and error messages.
std::vector<std::string> PresetNames(Family family);
// "natsl", "nha", "gdn", "llama" → Family.
absl::StatusOr<Family> ParseFamilyName(absl::string_view name);

struct GeneratorOptions {
  ModelShape shape;
  uint64_t seed = 0;
  // Write config.json only (paper-scale shapes for `hyla-model info` and memory planning).
  bool config_only = false;
  // Recorded in the safetensors "__metadata__" (with the seed); informational only.
  std::string preset;
  // Threads drawing the values (0: one per hardware thread). Every tensor has its own stream,
  // so the bytes written do not depend on this.
  int threads = 1;
};

// The config.json text for `shape`, as the authors' code would save it (sorted keys, indent 2).
absl::StatusOr<std::string> ConfigJsonFor(const ModelShape& shape);

// Writes out_dir/config.json and (unless config_only) out_dir/model.safetensors, creating
// out_dir. InvalidArgument for inconsistent shapes (naming the field), or what the config
// parser or the file system reports.
absl::Status GenerateModel(const GeneratorOptions& options, const std::string& out_dir);

}  // namespace hyla::tools

#endif  // HYLA_TOOLS_MODEL_GENERATOR_H_
