// ublk-volumed: the volume daemon. docs/daemon.md describes configuration,
// state, start-up/recovery and signals; docs/control-protocol.md the socket.
//
//   ublk-volumed [--config /etc/ublk-volumed/config.json] [--state-dir DIR]
//                [--socket PATH] [--log-level info]
//
// Runs in the foreground (systemd Type=notify). Signals: SIGTERM/SIGINT shut
// down (devices not in use are stopped and deleted, devices in use are
// detached for the next daemon to re-attach); SIGHUP is ignored (logged).
// Exit status: 0 clean stop, 1 runtime failure, 2 bad configuration.
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstdio>
#include <exception>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>
#include <system_error>

#include "ublkvol/common/unique_fd.h"
#include "ublkvol/common/version.h"
#include "ublkvol/daemon/config.h"
#include "ublkvol/daemon/control_server.h"
#include "ublkvol/daemon/sd_notify.h"
#include "ublkvol/daemon/service.h"

namespace ublkvol::daemon {
namespace {

constexpr int kExitFailure = 1;
constexpr int kExitConfig = 2;

int fail(int code, const std::string& message) {
  spdlog::critical("{}", message);
  (void)std::fprintf(stderr, "ublk-volumed: error: %s\n", message.c_str());
  return code;
}

Status make_dirs(const std::string& dir, mode_t mode) {
  for (size_t pos = 1; pos <= dir.size(); ++pos) {
    if (pos == dir.size() || dir[pos] == '/') {
      const std::string part = dir.substr(0, pos);
      if (::mkdir(part.c_str(), mode) != 0 && errno != EEXIST) {
        return errno_error("cannot create directory " + part);
      }
    }
  }
  return ok_status();
}

int run(int argc, char** argv) {
  CLI::App app{
      "ublk-volumed: replicated, thin-provisioned volumes as /dev/ublkbN.\n"
      "Managed with `ublk-volume`; see docs/daemon.md."};
  std::string config_path = kDefaultConfigPath;
  std::string state_dir;
  std::string socket_path;
  std::string log_level;
  CLI::Option* config_option =
      app.add_option("--config", config_path,
                     "JSON config file (must exist if given; without --config a missing " +
                         std::string(kDefaultConfigPath) + " means all defaults)")
          ->capture_default_str();
  app.add_option("--state-dir", state_dir, "overrides config state_dir (state.json, lock)");
  app.add_option("--socket", socket_path, "overrides config control_socket");
  app.add_option("--log-level", log_level,
                 "overrides config log_level: trace, debug, info, warn, error, critical, off");
  app.add_flag_callback(
      "--version",
      [] {
        std::printf("ublk-volumed %s\n", version_string());
        throw CLI::Success();
      },
      "print the version and exit");
  app.footer(
      "Runs in the foreground (no --foreground needed; systemd Type=notify). SIGTERM/SIGINT:\n"
      "clean stop (devices in use are detached and re-attached by the next start).\n"
      "Exit status: 0 clean stop, 1 failure, 2 bad configuration or arguments.");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : kExitConfig;
  }

  spdlog::set_default_logger(spdlog::stderr_logger_mt("ublk-volumed"));
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");

  const bool config_given = config_option->count() > 0;
  auto config = load_config(config_path, /*must_exist=*/config_given);
  if (!config.ok()) {
    return fail(kExitConfig, config.error().message());
  }
  if (!config_given && ::access(config_path.c_str(), F_OK) != 0) {
    spdlog::info("no config file {}: using the defaults", config_path);
  } else {
    spdlog::info("config file {}", config_path);
  }
  if (!state_dir.empty()) {
    config->state_dir = state_dir;
  }
  if (!socket_path.empty()) {
    config->control_socket = socket_path;
  }
  if (!log_level.empty()) {
    config->log_level = log_level;
  }
  if (Status valid = validate_config(*config); !valid.ok()) {
    return fail(kExitConfig, valid.error().message());
  }
  spdlog::set_level(spdlog::level::from_str(config->log_level));

  // Only the main thread takes signals (queue and store threads inherit the mask).
  sigset_t signals;
  sigemptyset(&signals);
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) {
    sigaddset(&signals, sig);
  }
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  (void)::signal(SIGPIPE, SIG_IGN);
  UniqueFd signal_fd(::signalfd(-1, &signals, SFD_CLOEXEC | SFD_NONBLOCK));
  if (!signal_fd) {
    return fail(kExitFailure, "cannot create a signalfd");
  }

  if (Status made = make_dirs(config->state_dir, 0700); !made.ok()) {
    return fail(kExitFailure, made.error().message());
  }
  // One daemon per state dir.
  const std::string lock_path = config->state_dir + "/lock";
  UniqueFd lock(::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!lock || ::flock(lock.get(), LOCK_EX | LOCK_NB) != 0) {
    return fail(kExitFailure, "cannot lock " + lock_path + ": " +
                                  std::error_code(errno, std::generic_category()).message() +
                                  " (is another ublk-volumed using this state dir?)");
  }

  const SystemdNotifier notifier = SystemdNotifier::from_environment();
  spdlog::info("ublk-volumed {} starting (pid {}, state dir {})", version_string(), ::getpid(),
               config->state_dir);
  spdlog::info("writes: {}", config->write_through
                                 ? "write-through (every write FUA)"
                                 : "write-back (stores journal mappings before a write completes)");
  (void)notifier.notify("STATUS=opening stores and volumes");
  auto service = Service::start(*config);
  if (!service.ok()) {
    return fail(kExitFailure, service.error().message());
  }
  ControlServerOptions server_options;
  server_options.socket_path = config->control_socket;
  server_options.socket_group = config->socket_group;
  server_options.max_connections = config->max_connections;
  server_options.root_reserved_connections = config->root_reserved_connections;
  server_options.max_connections_per_uid = config->max_connections_per_uid;
  server_options.request_timeout_ms = config->request_timeout_ms;
  server_options.idle_timeout_ms = config->idle_timeout_ms;
  auto server = ControlServer::listen(
      server_options, [&](const Request& request) { return (*service)->handle(request); });
  if (!server.ok()) {
    return fail(kExitFailure, server.error().message());
  }

  bool stop_requested = false;
  Status watched = (*server)->watch(signal_fd.get(), [&] {
    signalfd_siginfo si{};
    while (::read(signal_fd.get(), &si, sizeof(si)) == sizeof(si)) {
      if (si.ssi_signo == SIGHUP) {
        spdlog::info("SIGHUP ignored (the config is read at start; restart to apply it)");
        continue;
      }
      spdlog::info("signal {} from pid {}: shutting down", si.ssi_signo, si.ssi_pid);
      stop_requested = true;
      (*server)->stop();
    }
  });
  if (!watched.ok()) {
    return fail(kExitFailure, watched.error().message());
  }
  UniqueFd watchdog_timer;
  if (auto interval = notifier.watchdog_interval()) {
    watchdog_timer.reset(::timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK));
    itimerspec spec{};
    spec.it_interval.tv_sec = interval->count() / 1'000'000;
    spec.it_interval.tv_nsec = (interval->count() % 1'000'000) * 1000;
    spec.it_value = spec.it_interval;
    if (!watchdog_timer || ::timerfd_settime(watchdog_timer.get(), 0, &spec, nullptr) != 0) {
      return fail(kExitFailure, "cannot arm the watchdog timer");
    }
    (void)(*server)->watch(watchdog_timer.get(), [&] {
      uint64_t expirations = 0;
      (void)::read(watchdog_timer.get(), &expirations, sizeof(expirations));
      (void)notifier.notify("WATCHDOG=1");
    });
  }

  // Stores deleted, replaced or failed under the daemon are noticed here.
  UniqueFd store_check_timer(::timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK));
  itimerspec check_spec{};
  check_spec.it_interval.tv_sec = Service::kStoreCheckIntervalMs / 1000;
  check_spec.it_interval.tv_nsec = (Service::kStoreCheckIntervalMs % 1000) * 1'000'000L;
  check_spec.it_value = check_spec.it_interval;
  if (!store_check_timer ||
      ::timerfd_settime(store_check_timer.get(), 0, &check_spec, nullptr) != 0) {
    return fail(kExitFailure, "cannot arm the store check timer");
  }
  (void)(*server)->watch(store_check_timer.get(), [&] {
    uint64_t expirations = 0;
    (void)::read(store_check_timer.get(), &expirations, sizeof(expirations));
    (*service)->check_stores();
  });

  const std::string status = (*service)->status_line();
  spdlog::info("ready: {}; control socket {}", status, config->control_socket);
  (void)notifier.notify("READY=1\nSTATUS=" + status);

  Status ran = (*server)->run();
  (void)notifier.notify("STOPPING=1\nSTATUS=stopping");
  (*server)->close_listener();
  (*server)->refuse_pending(
      Error(ESHUTDOWN, "ublk-volumed is shutting down; the request was not run"));
  const Service::ShutdownReport report = (*service)->shutdown();
  for (const auto& line : report.detached) {
    spdlog::warn("left for recovery: {}", line);
  }
  spdlog::info("stopped: {} device(s) deleted, {} detached", report.stopped.size(),
               report.detached.size());
  if (!ran.ok()) {
    return fail(kExitFailure, ran.error().message());
  }
  return stop_requested ? 0 : kExitFailure;
}

}  // namespace
}  // namespace ublkvol::daemon

int main(int argc, char** argv) {
  try {
    return ublkvol::daemon::run(argc, argv);
  } catch (const std::exception& e) {
    // Nothing should throw this far; if something does, say what and exit
    // with the documented failure code instead of a bare std::terminate.
    (void)std::fprintf(stderr, "ublk-volumed: error: %s\n", e.what());
    return ublkvol::daemon::kExitFailure;
  }
}
