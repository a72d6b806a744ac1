// ublkvol-serve: serves one null, memory or replicated volume as
// /dev/ublkbN, for the frontend's tests and benchmarks (the production daemon
// is ublk-volumed).
//
//   ublkvol-serve --backend memory --size 1G --queues 2 --depth 128
//   ublkvol-serve --backend memory --size 256M --backing-file /dev/shm/v
//                 --state-file /run/v.json    # recoverable: survives kill -9
//   ublkvol-serve --recover --state-file /run/v.json       # re-attach after it
//   ublkvol-serve --backend replicated --size 1G --replica-file /dev/shm/r0
//                 --replica-file /dev/shm/r1 --replica-file /dev/shm/r2
//                 # 3 DBS replicas (files created + formatted if missing)
//
// Signals: SIGTERM / SIGINT stop and delete the device; SIGHUP detaches,
// leaving a --recoverable device for a later --recover; SIGUSR1 writes the
// stats file. The process also ends when the device is deleted by someone
// else. Exit status: 0 done, 1 runtime failure, 2 bad parameters.
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstdio>
#include <exception>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>
#include <string>
#include <system_error>

#include "ublkvol/reactor/reactor.h"
#include "ublkvol/stack/reactor_queue_host.h"
#include "ublkvol/ublk/control.h"
#include "ublkvol/ublk/device.h"
#include "ublkvol/ublk/features.h"
#include "ublkvol/ublk/recovery_record.h"
#include "ublkvol/ublk/single_thread_host.h"

#include "replicated_backend.h"
#include "serve_config.h"

namespace ublkvol::ublk {
namespace {

constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;

int fail(const Error& error) {
  (void)std::fprintf(stderr, "ublkvol-serve: error: %s\n", error.message().c_str());
  return error.errno_value() == EINVAL || error.errno_value() == ERANGE ? kExitUsage : kExitFailure;
}

Status write_text_file(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "w");
  if (f == nullptr) {
    return errno_error("cannot write " + tmp);
  }
  const bool ok = std::fputs(text.c_str(), f) >= 0;
  if (std::fclose(f) != 0 || !ok) {
    return errno_error("cannot write " + tmp);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    return errno_error("cannot rename " + tmp);
  }
  return ok_status();
}

nlohmann::json stats_json(const DeviceStats& s) {
  return {{"reads", s.reads},           {"writes", s.writes},
          {"fua_writes", s.fua_writes}, {"flushes", s.flushes},
          {"discards", s.discards},     {"write_zeroes", s.write_zeroes},
          {"bytes_read", s.bytes_read}, {"bytes_written", s.bytes_written},
          {"errors", s.errors},         {"zero_copy_ios", s.zero_copy_ios},
          {"copied_ios", s.copied_ios}};
}

nlohmann::json replica_json(const ReplicaReport& r) {
  return {{"file", r.file},
          {"state", engine::to_string(r.state)},
          {"reads", r.reads},
          {"writes", r.writes},
          {"fua_writes", r.fua_writes},
          {"flushes", r.flushes},
          {"discards", r.discards},
          {"write_zeroes", r.write_zeroes},
          {"device_writes", r.device_writes},
          {"device_flushes", r.device_flushes},
          {"device_discards", r.device_discards},
          {"store_commits", r.store_commits}};
}

void write_stats(const std::string& path, const UblkDevice& device,
                 const ReplicatedBackend* replicated) {
  if (path.empty()) {
    return;
  }
  // One line: {"queues": [{...}, ...], "replicas": [{...}, ...], "total": {...}}
  // (replicas only for the replicated backend; flat objects, so the e2e
  // tests' awk can pick fields).
  nlohmann::json j;
  j["total"] = stats_json(device.stats());
  j["queues"] = nlohmann::json::array();
  for (const DeviceStats& q : device.queue_stats()) {
    j["queues"].push_back(stats_json(q));
  }
  if (replicated != nullptr) {
    j["replicas"] = nlohmann::json::array();
    for (const ReplicaReport& r : replicated->replica_reports()) {
      j["replicas"].push_back(replica_json(r));
    }
  }
  Status s = write_text_file(path, j.dump() + "\n");
  if (!s.ok()) {
    spdlog::warn("stats file: {}", s.error().to_string());
  }
}

struct Args {
  ServeConfig config;
  std::string size;  // default: 1G (null, memory), the replicas' (replicated)
  std::string store_size = "0";
  std::string max_io = "0";
  std::string queue_loop = "thread";
  int reactors = -1;  // --reactors; -1: not given
  bool recover = false;
  bool no_pin = false;
  bool no_io_flusher = false;
  bool no_zero_copy = false;
  std::string state_file;
  std::string ready_file;
  std::string stats_file;
};

int serve(Args& args) {
  ServeConfig& config = args.config;
  auto queue_loop = parse_queue_loop(args.queue_loop);
  if (!queue_loop) {
    return fail(queue_loop.error());
  }
  config.queue_loop = *queue_loop;
  if (args.recover) {
    if (args.state_file.empty()) {
      return fail(Error(EINVAL, "--recover needs --state-file (written by the first server)"));
    }
    auto record = load_recovery_record(args.state_file);
    if (!record) {
      return fail(record.error());
    }
    auto recovered = config_from_record(*record, config);
    if (!recovered) {
      return fail(recovered.error());
    }
    config = recovered.value();
  } else {
    const std::string size_text =
        args.size.empty() ? (config.backend == "replicated" ? "0" : "1G") : args.size;
    auto size = parse_size(size_text);
    if (!size) {
      return fail(size.error());
    }
    if (*size == 0 && !args.size.empty() && config.backend == "replicated") {
      return fail(Error(EINVAL, "volume size is 0"));
    }
    config.size_bytes = *size;
    auto store_size = parse_size(args.store_size);
    if (!store_size) {
      return fail(store_size.error());
    }
    config.store_size_bytes = *store_size;
    auto max_io = parse_size(args.max_io);
    if (!max_io || *max_io > UINT32_MAX) {
      return fail(max_io ? Error(EINVAL, "--max-io is too large") : max_io.error());
    }
    config.device.max_io_bytes = static_cast<uint32_t>(*max_io);
  }
  config.device.pin_queue_threads = !args.no_pin;
  config.device.io_flusher = !args.no_io_flusher;
  if (!args.state_file.empty()) {
    config.device.recoverable = true;
  }
  Status valid = validate_serve_config(config);
  if (!valid.ok()) {
    return fail(valid.error());
  }

  // Queue threads inherit this mask: only the main thread takes signals.
  sigset_t signals;
  sigemptyset(&signals);
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGUSR1}) {
    sigaddset(&signals, sig);
  }
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  UniqueFd signal_fd(::signalfd(-1, &signals, SFD_CLOEXEC));
  if (!signal_fd) {
    return fail(errno_error("cannot create signalfd"));
  }

  // --reactors N: queues and replica stores on one ReactorSet; else
  // --queue-loop external: one thread runs every queue. Created after the
  // signal mask, which the threads inherit; destroyed after the device and
  // the backend (declared before them).
  std::unique_ptr<reactor::ReactorSet> reactors;
  std::unique_ptr<QueueHost> host;
  if (args.reactors >= 0) {
    reactor::ReactorSetOptions reactor_options;
    reactor_options.count = static_cast<unsigned>(args.reactors);
    reactor_options.pin = !args.no_pin;
    reactor_options.io_flusher = config.device.io_flusher;
    auto started = stack::start_reactors(reactor_options);
    if (!started) {
      return fail(started.error());
    }
    reactors = std::move(started.value());
    host = std::make_unique<stack::ReactorQueueHost>(*reactors);
    config.reactors = reactors.get();
    config.queue_loop = QueueLoop::kExternal;
    config.device.queue_loop = QueueLoop::kExternal;
    config.device.queue_host = host.get();
    spdlog::info("{} reactors (ublk queue q on reactor q mod {}, replica i on reactor i mod {})",
                 reactors->size(), reactors->size(), reactors->size());
  } else if (config.queue_loop == QueueLoop::kExternal) {
    auto started = SingleThreadQueueHost::start(config.device.io_flusher);
    if (!started) {
      return fail(started.error());
    }
    host = std::move(started.value());
    config.device.queue_loop = QueueLoop::kExternal;
    config.device.queue_host = host.get();
  }

  // Zero copy (docs/zero-copy.md) where it fits: one replica whose store is
  // served by the reactor of every queue (replica 0 is on reactor 0, queue q
  // on reactor q mod N), so its I/O goes out on the queue's ring. The kernel
  // decides the rest (AUTO_BUF_REG, 6.16+; ignored on 6.12).
  if (!args.no_zero_copy && config.backend == "replicated" && reactors != nullptr &&
      config.replica_files.size() == 1 && (reactors->size() == 1 || config.device.queues == 1)) {
    config.device.zero_copy = true;
    config.device.zero_copy_direct = true;
  }

  // The replicated backend is kept by its own type too: stats and clean close.
  std::unique_ptr<engine::Volume> volume;
  ReplicatedBackend* replicated = nullptr;
  if (config.backend == "replicated") {
    auto backend = ReplicatedBackend::open(config, args.recover);
    if (!backend) {
      return fail(backend.error());
    }
    replicated = backend->get();
    config.size_bytes = replicated->info().size_bytes;
    volume = std::move(*backend);
  } else {
    auto backend = make_backend(config);
    if (!backend) {
      return fail(backend.error());
    }
    volume = std::move(*backend);
  }
  auto device =
      args.recover
          ? UblkDevice::recover(*volume, static_cast<uint32_t>(config.device.dev_id), config.device)
          : UblkDevice::create(*volume, config.device);
  if (!device) {
    return fail(device.error());
  }
  UblkDevice& dev = **device;
  const auto& info = dev.info();
  if (!args.state_file.empty() && !args.recover) {
    Status saved = save_recovery_record(
        args.state_file,
        make_recovery_record(config, dev.id(), info.nr_hw_queues, info.queue_depth));
    if (!saved.ok()) {
      Status stopped = dev.stop_and_delete();
      (void)stopped;
      return fail(saved.error());
    }
  }
  spdlog::info("{} {} volume ({} bytes, {}-byte blocks) on {}: {} queues x {} tags, max I/O {}, {}",
               args.recover ? "re-attached" : "serving", config.backend, config.size_bytes,
               config.block_size, dev.block_path(), info.nr_hw_queues, info.queue_depth,
               info.max_io_buf_bytes, describe_features(info.flags));
  if (!args.ready_file.empty()) {
    nlohmann::json ready = {{"dev_id", dev.id()},
                            {"block_device", dev.block_path()},
                            {"pid", ::getpid()},
                            {"queues", info.nr_hw_queues},
                            {"queue_depth", info.queue_depth},
                            {"recovered", args.recover}};
    Status s = write_text_file(args.ready_file, ready.dump() + "\n");
    if (!s.ok()) {
      spdlog::warn("ready file: {}", s.error().to_string());
    }
  }

  enum class Ending { kStop, kDetach, kRemoved };
  Ending ending = Ending::kStop;
  while (true) {
    pollfd fds[2] = {{signal_fd.get(), POLLIN, 0}, {dev.finished_fd(), POLLIN, 0}};
    const int n = ::poll(fds, 2, -1);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0) {
      spdlog::error("poll failed: {}", std::error_code(errno, std::generic_category()).message());
      break;
    }
    if ((fds[1].revents & POLLIN) != 0) {
      ending = Ending::kRemoved;
      break;
    }
    if ((fds[0].revents & POLLIN) != 0) {
      signalfd_siginfo si{};
      if (::read(signal_fd.get(), &si, sizeof(si)) != sizeof(si)) {
        continue;
      }
      if (si.ssi_signo == SIGUSR1) {
        write_stats(args.stats_file, dev, replicated);
        continue;
      }
      ending = si.ssi_signo == SIGHUP ? Ending::kDetach : Ending::kStop;
      break;
    }
  }

  int status = 0;
  // Every queue is closed once the device stopped or detached: the
  // replicated volume can then checkpoint and close its stores.
  const auto close_backend = [&] {
    if (replicated != nullptr) {
      Status closed = replicated->close();
      if (!closed.ok()) {
        spdlog::error("{}", closed.error().to_string());
        status = kExitFailure;
      }
    }
  };
  switch (ending) {
    case Ending::kStop: {
      Status s = dev.stop_and_delete();
      write_stats(args.stats_file, dev, replicated);
      close_backend();
      if (!s.ok()) {
        spdlog::error("{}", s.error().to_string());
        status = kExitFailure;
      } else {
        spdlog::info("{} stopped and deleted", dev.block_path());
      }
      if (!args.state_file.empty()) {
        Status removed = remove_recovery_record(args.state_file);
        (void)removed;
      }
      break;
    }
    case Ending::kDetach: {
      Status s = dev.detach();
      write_stats(args.stats_file, dev, replicated);
      close_backend();
      spdlog::info("detached from {}; re-attach with --recover", dev.block_path());
      if (!s.ok()) {
        status = kExitFailure;
      }
      break;
    }
    case Ending::kRemoved: {
      Status queues = dev.queue_status();
      Status s = dev.stop_and_delete();
      write_stats(args.stats_file, dev, replicated);
      close_backend();
      if (!queues.ok()) {
        spdlog::error("queues ended: {}", queues.error().to_string());
        status = kExitFailure;
      } else {
        spdlog::info("{} was removed; exiting", dev.block_path());
      }
      (void)s;
      if (!args.state_file.empty()) {
        Status removed = remove_recovery_record(args.state_file);
        (void)removed;
      }
      break;
    }
  }
  return status;
}

}  // namespace
}  // namespace ublkvol::ublk

int main(int argc, char** argv) try {
  using ublkvol::ublk::Args;
  Args args;
  CLI::App app{"Serve a null, memory or replicated volume as /dev/ublkbN (tests and benchmarks)"};
  app.add_option("--backend", args.config.backend, "null | memory | replicated")
      ->capture_default_str();
  app.add_option("--size", args.size,
                 "volume size (4096, 64K, 512M, 1G, ...); default 1G, or for replicated the "
                 "size the existing replica files hold");
  app.add_option("--replica-file", args.config.replica_files,
                 "replicated: a DBS store file per replica (1..3; created and formatted if "
                 "missing or empty, never when recovering)");
  app.add_option("--store-size", args.store_size,
                 "replicated: size of newly created store files (0: volume + max(64M, 1/8))")
      ->capture_default_str();
  app.add_flag("--write-through,!--no-write-through", args.config.write_through,
               "replicated: send every write with FUA (durable on completion, slow). Default "
               "write-back: completed writes survive a killed server anyway, and power loss "
               "after a FLUSH");
  app.add_option("--volume-name", args.config.volume_name,
                 "replicated: the volume's name inside each store")
      ->capture_default_str();
  app.add_option("--snapshot", args.config.snapshot_name,
                 "replicated: snapshot the volume in every replica under this name before "
                 "serving (not with --recover)");
  app.add_option("--block-size", args.config.block_size, "logical block size (512..4096)")
      ->capture_default_str();
  app.add_option("--backing-file", args.config.backing_file,
                 "memory backend: keep the data in this file (tmpfs) so it outlives the process");
  app.add_option("--queues", args.config.device.queues, "hardware queues (threads)")
      ->capture_default_str();
  app.add_option("--depth", args.config.device.queue_depth, "tags per queue (1..4096)")
      ->capture_default_str();
  app.add_option("--max-io", args.max_io, "largest request (0: the volume's, 1M)")
      ->capture_default_str();
  app.add_option("--id", args.config.device.dev_id, "device number N of /dev/ublkbN (-1: any)")
      ->capture_default_str();
  app.add_flag("--recoverable", args.config.device.recoverable,
               "create with USER_RECOVERY|REISSUE (implied by --state-file)");
  app.add_option("--state-file", args.state_file,
                 "recovery record: written at start, read by --recover, removed at stop");
  app.add_flag("--recover", args.recover, "re-attach to the device in --state-file");
  app.add_option("--ready-file", args.ready_file, "write {dev_id, block_device, pid} when ready");
  app.add_option("--stats-file", args.stats_file, "write request counters here on exit / SIGUSR1");
  app.add_option("--queue-loop", args.queue_loop,
                 "thread: a thread per queue; external: every queue polled by one thread "
                 "(the reactor model)")
      ->capture_default_str();
  app.add_option("--reactors", args.reactors,
                 "run the queues and the replica stores on N reactors (0: one per CPU of the "
                 "affinity mask): queue q on reactor q mod N, replica i on reactor i mod N; "
                 "implies --queue-loop external")
      ->check(CLI::NonNegativeNumber);
  app.add_flag("--no-pin", args.no_pin, "do not pin queue threads (or reactors) to their CPUs");
  app.add_flag("--no-io-flusher", args.no_io_flusher, "do not mark queue threads IO_FLUSHER");
  app.add_flag("--no-zero-copy", args.no_zero_copy,
               "copy mode even where zero copy fits (replicated, 1 replica, --reactors with the "
               "replica's reactor running every queue; kernel with AUTO_BUF_REG, 6.16+)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  spdlog::set_pattern("ublkvol-serve[%P]: %l: %v");
  return ublkvol::ublk::serve(args);
} catch (const std::exception& e) {
  // Nothing should throw this far; if something does, say what instead of
  // letting std::terminate abort without a word.
  (void)std::fprintf(stderr, "ublkvol-serve: error: %s\n", e.what());
  return ublkvol::ublk::kExitFailure;
}
