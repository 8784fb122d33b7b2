// hyla-server: serves a model over gRPC with Prometheus metrics. See `hyla-server --help` and
// service/server.h. SIGTERM / SIGINT drain the server (health NOT_SERVING, new calls
// UNAVAILABLE, in-flight calls finish within --drain-deadline) and exit 0.
#include <pthread.h>
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "service/server.h"
#include "service/server_flags.h"

int main(int argc, char** argv) {
  // absl::Mutex's lock-order (deadlock) detection is on in the distribution's absl build: every
  // lock then updates a process-wide graph under a global lock, which serialises the engine's,
  // the notifier's and gRPC's threads on the serving path (docs/performance.md "Serving
  // overhead"). The tests keep it on.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  // Block the stop signals in every thread (gRPC's, the engine's, the exposer's inherit the mask)
  // and wait for them here: Shutdown is not async-signal-safe.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  std::vector<std::string> args(argv + 1, argv + argc);
  const char* env_token = std::getenv("HYLA_AUTH_TOKEN");
  auto flags = hyla::service::ParseServerFlags(args, env_token != nullptr ? env_token : "");
  if (!flags.ok()) {
    std::cerr << "hyla-server: " << flags.status().message() << "\n";
    return 2;
  }
  if (flags->help) {
    std::cout << hyla::service::ServerUsage();
    return 0;
  }
  auto server = hyla::service::HylaServer::Create(*flags);
  if (!server.ok()) {
    std::cerr << "hyla-server: start-up failed: " << server.status().message() << "\n";
    return 1;
  }
  std::cerr << (*server)->startup_log() << std::flush;

  int sig = 0;
  sigwait(&stop_signals, &sig);
  std::cerr << "hyla-server: " << (sig == SIGTERM ? "SIGTERM" : "SIGINT")
            << " received: draining (health NOT_SERVING, new calls UNAVAILABLE, deadline "
            << absl::FormatDuration(flags->drain_deadline) << ")\n"
            << std::flush;
  const hyla::service::DrainResult r = (*server)->Drain(flags->drain_deadline);
  std::cerr << "hyla-server: shut down after " << absl::FormatDuration(r.elapsed) << ": "
            << (r.drained ? std::string("every call finished")
                          : absl::StrCat(r.cut_calls, " call(s) cut at the drain deadline"))
            << "; exit 0\n"
            << std::flush;
  // The gRPC server and the engine are stopped; what is left is the metrics listener, whose
  // civetweb threads take up to 2 s to notice a stop. Nothing remains to flush: exit now.
  std::fflush(nullptr);
  std::_Exit(0);
}
