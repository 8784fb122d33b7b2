#include "service/server.h"

#include <algorithm>
#include <climits>
#include <exception>
#include <fstream>
#include <functional>
#include <sstream>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/generic/async_generic_service.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/impl/server_builder_option.h"
#include "prometheus/exposer.h"
#include "runtime/base/status_macros.h"
#include "runtime/cpu/cpu_backend.h"
#ifdef HYLA_HAVE_CUDA_BACKEND
#include "runtime/cuda/cuda_backend.h"
#endif
#include "runtime/engine/engine.h"
#include "runtime/model/checkpoint.h"
#include "runtime/model/tokenizer.h"
#include "runtime/state/state_layout.h"
#include "service/cpu_quota.h"
#include "service/hyla_service.h"
#include "service/memory_plan.h"
#include "service/metrics.h"
#include "tools/default_model.h"
#include "tools/model_tensors.h"

#ifndef HYLA_VERSION
#define HYLA_VERSION "0.1.0"
#endif

namespace hyla::service {
namespace {

constexpr const char* kHealthNames[] = {"", "hyla.v1.Hyla", "readiness", "liveness"};

int VisibleGpus() {
#ifdef HYLA_HAVE_CUDA_BACKEND
  return cuda::CudaDeviceCount();
#else
  return 0;
#endif
}

// --device auto|cuda|cpu → "cuda" or "cpu".
absl::StatusOr<std::string> ResolveDevice(const std::string& requested) {
  if (requested == "cpu") return std::string("cpu");
  const int gpus = VisibleGpus();
  if (requested == "auto") return std::string(gpus > 0 ? "cuda" : "cpu");
#ifndef HYLA_HAVE_CUDA_BACKEND
  return absl::InvalidArgumentError(
      "--device cuda: this build has no CUDA backend (nvcc was not found at build time; "
      "configure with -DHYLA_CUDA=ON)");
#endif
  if (gpus == 0) {
    return absl::FailedPreconditionError(
        "--device cuda: no CUDA device is visible (check the driver, CUDA_VISIBLE_DEVICES and the "
        "container's GPU resources)");
  }
  return std::string("cuda");
}

int DurationMs(absl::Duration d) {
  const int64_t ms = absl::ToInt64Milliseconds(d);
  return static_cast<int>(std::min<int64_t>(ms, INT_MAX));
}

absl::StatusOr<std::string> ReadFile(const std::string& flag, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("--", flag, ": cannot read ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  if (ss.str().empty()) {
    return absl::InvalidArgumentError(absl::StrCat("--", flag, ": ", path, " is empty"));
  }
  return ss.str();
}

// "HOST:PORT" with the port replaced.
std::string WithPort(const std::string& host_port, int port) {
  return absl::StrCat(host_port.substr(0, host_port.rfind(':')), ":", port);
}

// Removes the builder plugins (server reflection registers itself for every server): the health
// listener serves grpc.health.v1 and nothing else.
class NoPluginsOption : public grpc::ServerBuilderOption {
 public:
  void UpdateArguments(grpc::ChannelArguments*) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins) override {
    plugins->clear();
  }
};

void SetHealth(grpc::Server* server, const char* name, bool serving) {
  if (server != nullptr) server->GetHealthCheckService()->SetServingStatus(name, serving);
}

}  // namespace

HylaServer::~HylaServer() {
  if (health_server_ != nullptr) {
    health_server_->Shutdown(std::chrono::system_clock::now());
    health_server_->Wait();
  }
  if (!stopped_ && server_ != nullptr) {
    service_->MarkForcedShutdown();
    server_->Shutdown(std::chrono::system_clock::now());
    server_->Wait();
  }
  server_.reset();
  service_.reset();
  engine_.reset();
  exposer_.reset();
  metrics_.reset();
}

absl::StatusOr<std::unique_ptr<HylaServer>> HylaServer::Create(const ServerFlags& flags) {
  std::unique_ptr<HylaServer> s(new HylaServer());
  s->flags_ = flags;

  // ---- model and memory plan ----
  std::string model_dir = flags.model;
  if (model_dir.empty()) {
    absl::StatusOr<std::string> dir = tools::FindDefaultModelDir();
    if (!dir.ok()) {
      return absl::NotFoundError(
          absl::StrCat("--model: not given, and no default model: ", dir.status().message()));
    }
    model_dir = *dir;
  }
  absl::StatusOr<ModelConfig> config = Checkpoint::ReadConfig(model_dir);
  if (!config.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--model ", model_dir, ": ", config.status().message()));
  }
  HYLA_ASSIGN_OR_RETURN(const std::string device_kind, ResolveDevice(flags.device));
  const bool use_cuda = device_kind == "cuda";
  // --workers 0 (the default): one per visible GPU with CUDA, else one.
  const int workers = flags.workers > 0 ? flags.workers : (use_cuda ? VisibleGpus() : 1);
  const bool bf16 = use_cuda && flags.precision == "bf16";
  HYLA_ASSIGN_OR_RETURN(StateLayout layout,
                        StateLayout::Create(*config, bf16 ? DType::kBF16 : DType::kF32));
  int64_t max_context = flags.max_context;
  if (max_context == 0) {
    max_context = config->max_position_embeddings > 0 ? config->max_position_embeddings : 8192;
  }
  if (max_context < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max-context must be at least 2, got ", max_context));
  }
  MemoryPlanInput plan_in;
  plan_in.budget_bytes = flags.memory_budget_bytes;
  plan_in.workers = workers;
  plan_in.slot_bytes = layout.slot_bytes();
  plan_in.block_bytes = layout.block_bytes();
  plan_in.num_streams = layout.num_streams();
  plan_in.max_context = max_context;
  HYLA_ASSIGN_OR_RETURN(MemoryPlan plan, PlanMemory(plan_in));

  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer =
      CreateTokenizerForModel(model_dir, *config);
  std::string tokenizer_note = "byte tokenizer";
  if (tokenizer.ok()) {
    s->tokenizer_ = std::move(*tokenizer);
  } else {
    tokenizer_note = absl::StrCat("no tokenizer (token ids only): ", tokenizer.status().message());
  }

  // ---- metrics ----
  const std::string device = absl::StrJoin(std::vector<std::string>(workers, device_kind), ",");
  BuildInfo build;
  build.version = HYLA_VERSION;
  build.model_type = config->model_type;
  build.family = std::string(FamilyName(config->family));
  build.device = device_kind;
  HYLA_ASSIGN_OR_RETURN(s->metrics_, Metrics::Create(build, max_context));

  // ---- engine ----
  EngineOptions eo;
  eo.num_workers = workers;
  eo.max_queued = flags.queue_bound;
  eo.max_context = max_context;
  eo.max_batch =
      flags.max_batch > 0 ? flags.max_batch : std::max(1, std::min(64, plan.slots_per_worker));
  eo.token_budget = flags.token_budget;
  eo.prefill_chunk_tokens = flags.prefill_chunk;
  if (absl::Status st = ValidateStepBudget(eo.max_batch, eo.token_budget, eo.prefill_chunk_tokens);
      !st.ok()) {
    if (flags.max_batch > 0) return st;
    return absl::InvalidArgumentError(absl::StrCat(
        st.message(), " (--max-batch 0 means min(64, state slots per worker) = ", eo.max_batch,
        "; set --max-batch or raise --token-budget)"));
  }
  eo.default_max_new_tokens = static_cast<int>(std::min<int64_t>(256, max_context - 1));
  eo.session_ttl =
      flags.session_ttl == absl::ZeroDuration() ? absl::InfiniteDuration() : flags.session_ttl;
  eo.max_sessions = flags.max_sessions;
  eo.stall_timeout = flags.stall_timeout;
  eo.max_pending_events = flags.max_pending_tokens;
  eo.notify_threads = flags.notify_threads;
  eo.tokenizer = s->tokenizer_;
  eo.observer = s->metrics_;
  const int hw = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  std::string threads_note;
  int threads = flags.threads;
  if (threads > 0) {
    threads_note = "--threads";
  } else {
    const CpuCount cpus = DetectCpuCount(hw);
    threads = std::max(1, cpus.cpus / workers);
    threads_note =
        absl::StrCat(cpus.cpus, " CPUs from ", cpus.source, " / ", workers, " worker(s)");
  }
  cpu::CpuBackendOptions bo;
  bo.num_threads = threads;
  bo.store.num_slots = plan.slots_per_worker;
  bo.store.num_blocks = plan.blocks_per_worker;
  bo.store.max_kv_tokens_per_stream = flags.kv_cap_tokens;
  bo.store.cap_policy = flags.kv_cap_policy;
  std::function<absl::StatusOr<std::unique_ptr<Backend>>(int)> factory =
      [model_dir, bo](int) -> absl::StatusOr<std::unique_ptr<Backend>> {
    HYLA_ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> ckpt, Checkpoint::Open(model_dir));
    HYLA_ASSIGN_OR_RETURN(std::unique_ptr<cpu::CpuBackend> b,
                          cpu::CpuBackend::Create(std::move(ckpt), bo));
    return std::unique_ptr<Backend>(std::move(b));
  };
#ifdef HYLA_HAVE_CUDA_BACKEND
  if (use_cuda) {
    cuda::CudaBackendOptions co;
    co.precision = bf16 ? cuda::Precision::kBf16 : cuda::Precision::kF32;
    co.store = bo.store;
    co.max_step_seqs = eo.max_batch;
    co.max_step_tokens = std::max<int64_t>(eo.token_budget, eo.max_batch);
    co.max_context = max_context;  // the width of the decode-graph block tables
    const int gpus = VisibleGpus();
    threads_note =
        absl::StrCat("CUDA, ", cuda::PrecisionName(co.precision), ", ", gpus, " visible GPU(s)");
    factory = [model_dir, co, gpus](int worker) -> absl::StatusOr<std::unique_ptr<Backend>> {
      cuda::CudaBackendOptions o = co;
      o.device = worker % gpus;
      HYLA_ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> ckpt, Checkpoint::Open(model_dir));
      HYLA_ASSIGN_OR_RETURN(std::unique_ptr<cuda::CudaBackend> b,
                            cuda::CudaBackend::Create(std::move(ckpt), o));
      return std::unique_ptr<Backend>(std::move(b));
    };
  }
#endif
  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Create(eo, factory);
  if (!engine.ok()) {
    return absl::Status(engine.status().code(),
                        absl::StrCat("--model ", model_dir, ": ", engine.status().message()));
  }
  s->engine_ = std::move(*engine);
  Engine* engine_ptr = s->engine_.get();
  s->metrics_->SetStatsSource([engine_ptr] { return engine_ptr->Stats(); });

  // ---- gRPC server ----
  HylaServiceOptions so;
  so.auth_token = flags.auth_token;
  so.stall_timeout = flags.stall_timeout;
  so.device = device;
  so.parameters = tools::CountParameters(*config);
  s->service_ = std::make_unique<HylaService>(s->engine_.get(), s->metrics_, so);

  std::shared_ptr<grpc::ServerCredentials> creds;
  if (!flags.tls_cert.empty()) {
    HYLA_ASSIGN_OR_RETURN(std::string cert, ReadFile("tls-cert", flags.tls_cert));
    HYLA_ASSIGN_OR_RETURN(std::string key, ReadFile("tls-key", flags.tls_key));
    grpc::SslServerCredentialsOptions ssl;
    ssl.pem_key_cert_pairs.push_back({key, cert});
    creds = grpc::SslServerCredentials(ssl);
  } else {
    creds = grpc::InsecureServerCredentials();
  }
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int grpc_port = -1;
  builder.AddListeningPort(flags.listen, creds, &grpc_port);
  builder.RegisterService(s->service_.get());
  builder.SetMaxReceiveMessageSize(4 << 20);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, DurationMs(flags.keepalive_time));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, DurationMs(flags.keepalive_timeout));
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
                             DurationMs(flags.keepalive_min_ping_interval));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS,
                             flags.keepalive_permit_without_calls ? 1 : 0);
  if (flags.max_connection_age > absl::ZeroDuration()) {
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_MS,
                               DurationMs(flags.max_connection_age));
  }
  if (flags.max_connection_age_grace > absl::ZeroDuration()) {
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS,
                               DurationMs(flags.max_connection_age_grace));
  }
  builder.AddChannelArgument(GRPC_ARG_SERVER_HANDSHAKE_TIMEOUT_MS, 10000);
  // gRPC sets SO_REUSEPORT by default: a second server on a taken port would silently share it.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  s->server_ = builder.BuildAndStart();
  if (s->server_ == nullptr || grpc_port <= 0) {
    s->server_.reset();
    return absl::UnavailableError(
        absl::StrCat("--listen: cannot listen on ", flags.listen, " (address in use or invalid)"));
  }
  s->grpc_address_ = WithPort(flags.listen, grpc_port);
  grpc::HealthCheckServiceInterface* health = s->server_->GetHealthCheckService();
  for (const char* name : kHealthNames) health->SetServingStatus(name, false);  // not ready yet

  // ---- plaintext health listener ----
  if (!flags.health_listen.empty()) {
    grpc::ServerBuilder hb;
    int health_port = -1;
    hb.AddListeningPort(flags.health_listen, grpc::InsecureServerCredentials(), &health_port);
    hb.SetOption(std::make_unique<NoPluginsOption>());
    s->health_unimplemented_ = std::make_unique<grpc::CallbackGenericService>();
    hb.RegisterCallbackGenericService(s->health_unimplemented_.get());
    hb.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
    hb.AddChannelArgument(GRPC_ARG_SERVER_HANDSHAKE_TIMEOUT_MS, 10000);
    s->health_server_ = hb.BuildAndStart();
    if (s->health_server_ == nullptr || health_port <= 0) {
      s->health_server_.reset();
      s->service_->MarkForcedShutdown();
      s->server_->Shutdown(std::chrono::system_clock::now());
      s->server_->Wait();
      s->server_.reset();
      return absl::UnavailableError(absl::StrCat("--health-listen: cannot listen on ",
                                                 flags.health_listen,
                                                 " (address in use or invalid)"));
    }
    s->health_address_ = WithPort(flags.health_listen, health_port);
    for (const char* name : kHealthNames) SetHealth(s->health_server_.get(), name, false);
  }
  // ---- metrics listener (after the gRPC port: a failed bind there costs no civetweb stop) ----
  try {
    s->exposer_ = std::make_unique<prometheus::Exposer>(flags.metrics_listen);
  } catch (const std::exception& e) {
    if (s->health_server_ != nullptr) {
      s->health_server_->Shutdown(std::chrono::system_clock::now());
      s->health_server_->Wait();
      s->health_server_.reset();
    }
    s->service_->MarkForcedShutdown();
    s->server_->Shutdown(std::chrono::system_clock::now());
    s->server_->Wait();
    s->server_.reset();
    return absl::UnavailableError(
        absl::StrCat("--metrics-listen: cannot listen on ", flags.metrics_listen, ": ", e.what()));
  }
  s->exposer_->RegisterCollectable(s->metrics_);
  const std::vector<int> mports = s->exposer_->GetListeningPorts();
  s->metrics_address_ = WithPort(flags.metrics_listen, mports.empty() ? 0 : mports.front());

  for (const char* name : kHealthNames) {
    health->SetServingStatus(name, true);
    SetHealth(s->health_server_.get(), name, true);
  }

  const EngineInfo& info = s->engine_->info();
  s->startup_log_ = absl::StrCat(
      "hyla-server ", HYLA_VERSION, ": model ", model_dir, " (family ", build.family,
      ", model_type ", config->model_type, ", ", config->num_layers, " layers, vocab ",
      config->vocab_size, ", ", tokenizer_note, "), device ", device, ", max context ",
      info.max_context, "\n", "hyla-server: memory plan: ", DescribeMemoryPlan(plan_in, plan),
      "; slot ", layout.slot_bytes(), " bytes, KV block ", layout.block_bytes(), " bytes, ",
      layout.num_streams(), " KV streams\n", "hyla-server: threads: ", threads, " per worker (",
      threads_note, "); batch: ", eo.max_batch, " sequences, ", eo.token_budget,
      " tokens per step, prefill chunk ", eo.prefill_chunk_tokens, "\n",
      "hyla-server: listening grpc=", s->grpc_address_, " metrics=", s->metrics_address_,
      " tls=", flags.tls_cert.empty() ? "off" : "on",
      " auth=", flags.auth_token.empty() ? "off" : "on",
      s->health_address_.empty() ? "" : absl::StrCat(" health=", s->health_address_), "\n");
  return s;
}

DrainResult HylaServer::Drain(absl::Duration deadline) {
  DrainResult r;
  const absl::Time start = absl::Now();
  // Refuse new calls first, then report NOT_SERVING: a client that sees NOT_SERVING knows that
  // new calls are refused.
  service_->StartDrain();
  grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService();
  for (const char* name : {"", "hyla.v1.Hyla", "readiness"}) {
    health->SetServingStatus(name, false);
    SetHealth(health_server_.get(), name, false);
  }
  r.drained = service_->WaitIdle(start + deadline);
  if (!r.drained) {
    r.cut_calls = service_->active_calls();
    service_->MarkForcedShutdown();
  }
  server_->Shutdown(std::chrono::system_clock::now());
  server_->Wait();
  if (health_server_ != nullptr) {
    health_server_->Shutdown(std::chrono::system_clock::now());
    health_server_->Wait();
    health_server_.reset();
  }
  stopped_ = true;
  server_.reset();
  engine_.reset();
  r.elapsed = absl::Now() - start;
  return r;
}

}  // namespace hyla::service
