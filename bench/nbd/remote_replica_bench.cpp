// remote_replica_bench: what a remote replica (NBD, docs/nbd.md) costs a
// replicated volume, on one machine (loopback TCP). Figures, not a test.
//
//   remote_replica_bench [--dir /var/tmp] [--size 256M] [--runtime 10]
//                        [--qd 32] [--server nbdkit|qemu-nbd] [--json]
//
//   local    2 replicas, both RawReplicaStore on O_DIRECT files in --dir
//   remote   2 replicas, one local as above, one RemoteReplica on an NBD
//            server (--server) serving a file in --dir over 127.0.0.1
//   rebuild  a volume of the local replica (data written) gains a fresh
//            remote replica: full rebuild rate over NBD (MB/s)
// local/remote: 4K random writes at --qd from one queue for --runtime s;
// IOPS, the ratio remote/local, and where the time goes: the volume's
// request latency p50/p99, the remote replica's NBD request latency
// p50/p99 (NbdDevice histogram: log2 buckets, upper bounds), CPU per I/O of
// this process (engine, store threads, libnbd) and of the server process.
// Prints a table, or JSON with --json.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <arpa/inet.h>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <netinet/in.h>
#include <nlohmann/json.hpp>
#include <random>
#include <spdlog/spdlog.h>
#include <sstream>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include "ublkvol/dbs/file_device.h"
#include "ublkvol/engine/raw_replica_store.h"
#include "ublkvol/engine/replicated_volume.h"
#include "ublkvol/engine/store_thread.h"
#include "ublkvol/nbd/latency_histogram.h"
#include "ublkvol/nbd/remote_replica.h"

#include "../common/process_usage.h"

namespace {

using namespace ublkvol;  // NOLINT(google-build-using-namespace): a benchmark's main file
using Clock = std::chrono::steady_clock;

// Thrown to main(), so the scratch files are removed on the way out.
[[noreturn]] void die(const std::string& what) { throw std::runtime_error(what); }

std::string errno_text(int err) { return std::generic_category().message(err); }

// Removes the scratch files however main() ends.
struct ScratchFiles {
  std::vector<std::string> paths;
  ScratchFiles() = default;
  ScratchFiles(const ScratchFiles&) = delete;
  ScratchFiles& operator=(const ScratchFiles&) = delete;
  ~ScratchFiles() {
    for (const auto& path : paths) {
      ::unlink(path.c_str());
    }
  }
};

template <typename T>
T value_or_die(Result<T> result, const std::string& what) {
  if (!result.ok()) {
    die(what + ": " + result.error().to_string());
  }
  return std::move(result).value();
}

void ok_or_die(const Status& status, const std::string& what) {
  if (!status.ok()) {
    die(what + ": " + status.error().to_string());
  }
}

uint64_t parse_size(const std::string& text) {
  char* end = nullptr;
  const double value = std::strtod(text.c_str(), &end);
  const std::string unit = end == nullptr ? "" : std::string(end);
  uint64_t mult = 1;
  if (unit == "K" || unit == "k") {
    mult = uint64_t{1} << 10;
  } else if (unit == "M" || unit == "m") {
    mult = uint64_t{1} << 20;
  } else if (unit == "G" || unit == "g") {
    mult = uint64_t{1} << 30;
  }
  return static_cast<uint64_t>(value * static_cast<double>(mult));
}

// A file of `bytes` holding a non-zero pattern (so a rebuild copies real
// data, not holes), written with plain writes.
void fill_file(const std::string& path, uint64_t bytes) {
  const int fd = ::open(path.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0600);
  if (fd < 0) {
    die("create " + path + ": " + errno_text(errno));
  }
  std::vector<char> chunk(size_t{1} << 20, 0x5A);
  for (uint64_t done = 0; done < bytes; done += chunk.size()) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(chunk.size(), bytes - done));
    if (::write(fd, chunk.data(), n) != static_cast<ssize_t>(n)) {
      die("write " + path + ": " + errno_text(errno));
    }
  }
  ::fsync(fd);
  ::close(fd);
}

// An NBD server process on a file, listening on 127.0.0.1 (port chosen by
// the kernel), handed its socket by systemd socket activation (LISTEN_FDS),
// so it is reachable at once.
class Server {
 public:
  Server(const std::string& kind, const std::string& path) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        ::listen(listen_fd_, 16) != 0 ||
        ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      die(std::string("listen on 127.0.0.1: ") + errno_text(errno));
    }
    uri_ = "nbd://127.0.0.1:" + std::to_string(ntohs(addr.sin_port)) + "/";
    std::vector<std::string> argv;
    if (kind == "nbdkit") {
      argv = {"nbdkit", "-f", "file", "file=" + path, "cache=none"};
    } else if (kind == "qemu-nbd") {
      argv = {"qemu-nbd", "-f", "raw", "-t", "-e", "8", "--cache=none", "--aio=native", path};
    } else {
      die("unknown --server '" + kind + "' (nbdkit, qemu-nbd)");
    }
    std::vector<char*> args;
    args.reserve(argv.size() + 1);
    for (auto& arg : argv) {
      args.push_back(arg.data());
    }
    args.push_back(nullptr);
    const pid_t parent = ::getpid();
    pid_ = ::fork();
    if (pid_ < 0) {
      die("fork failed");
    }
    if (pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) {
        ::_exit(127);
      }
      if (listen_fd_ == 3) {
        ::fcntl(3, F_SETFD, 0);  // dup2 onto itself would keep FD_CLOEXEC
      } else {
        ::dup2(listen_fd_, 3);
      }
      // Only async-signal-safe calls from here: setenv is not, but this
      // child of a single-threaded parent (no thread started yet) may.
      char pid_text[32];
      (void)std::snprintf(pid_text, sizeof pid_text, "%d", ::getpid());
      ::setenv("LISTEN_PID", pid_text, 1);  // NOLINT(concurrency-mt-unsafe): see above
      ::setenv("LISTEN_FDS", "1", 1);       // NOLINT(concurrency-mt-unsafe): see above
      ::execvp(args[0], args.data());
      ::_exit(127);
    }
  }
  ~Server() {
    ::kill(pid_, SIGTERM);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    ::close(listen_fd_);
  }
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  [[nodiscard]] const std::string& uri() const { return uri_; }
  // CPU seconds (user + system) the server has used so far.
  [[nodiscard]] double cpu_seconds() const {
    std::ifstream in("/proc/" + std::to_string(pid_) + "/stat");
    std::string line;
    std::getline(in, line);
    // Fields after the command name (which may hold spaces) in parentheses.
    std::istringstream rest(line.substr(line.rfind(')') + 2));
    std::string field;
    double ticks = 0;
    for (int i = 3; i <= 15 && rest >> field; ++i) {
      if (i == 14 || i == 15) {  // utime, stime
        ticks += std::stod(field);
      }
    }
    return ticks / static_cast<double>(::sysconf(_SC_CLK_TCK));
  }

 private:
  int listen_fd_ = -1;
  pid_t pid_ = -1;
  std::string uri_;
};

// One local replica: a RawReplicaStore on an O_DIRECT file, its own thread.
struct LocalReplica {
  std::unique_ptr<dbs::FileDevice> device;
  std::unique_ptr<engine::RawReplicaStore> store;
  std::unique_ptr<engine::StoreThread> thread;

  LocalReplica(const std::string& path, uint64_t size, bool format) {
    dbs::FileDeviceOptions fo;
    fo.queue_depth = 256;
    fo.create_size = size + (uint64_t{2} << 20);
    device = value_or_die(dbs::FileDevice::open(path, fo), "open " + path);
    if (format) {
      engine::RawReplicaFormatOptions opts;
      opts.size_bytes = size;
      opts.zero_data = false;  // pre-filled data, as a written volume
      ok_or_die(engine::format_raw_replica(*device, opts), "format " + path);
    }
    store = value_or_die(engine::open_raw_replica(*device), "open replica " + path);
    engine::StoreThreadOptions to;
    to.name = "local";
    thread = value_or_die(engine::StoreThread::start(to), "store thread");
    ok_or_die(thread->attach(*store), "attach");
  }
  ~LocalReplica() {
    (void)thread->detach(*store);
    thread->stop();
  }
  LocalReplica(const LocalReplica&) = delete;
  LocalReplica& operator=(const LocalReplica&) = delete;
  [[nodiscard]] engine::ReplicaBinding binding() const { return {store.get(), thread.get()}; }
};

struct LoadResult {
  int error = 0;  // the first failed write's result
  uint64_t ios = 0;
  double seconds = 0;
  double cpu_s = 0;
  nbd::LatencyHistogram latency;
};

// 4K random writes at `qd` from queue 0 for `runtime` seconds.
LoadResult random_writes(engine::ReplicatedVolume& volume, unsigned qd, double runtime) {
  auto queue = value_or_die(volume.open_queue(0), "open queue");
  struct Op {
    engine::VolumeIo io;
    Clock::time_point start;
    bool busy = false;
    LoadResult* result = nullptr;
  };
  LoadResult result;
  std::vector<Op> ops(qd);
  auto* pool = static_cast<std::byte*>(std::aligned_alloc(4096, size_t{qd} * 4096));
  std::memset(pool, 0xA5, size_t{qd} * 4096);
  std::mt19937_64 rng(42);
  const uint64_t blocks = volume.info().size_bytes / 4096;
  const double cpu0 = bench::process_usage().cpu_s;
  const auto t0 = Clock::now();
  const auto end =
      t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(runtime));
  unsigned busy = 0;
  bool running = true;
  while (running || busy > 0) {
    const auto now = Clock::now();
    running = running && now < end;
    for (unsigned i = 0; i < qd && running; ++i) {
      Op& op = ops[i];
      if (op.busy) {
        continue;
      }
      op.io = engine::VolumeIo{};
      op.io.op = engine::VolumeOp::kWrite;
      op.io.offset = (rng() % blocks) * 4096;
      op.io.length = 4096;
      op.io.buffer = pool + size_t{i} * 4096;
      op.io.user_data = &op;
      op.io.on_complete = [](engine::VolumeIo& io, int status) {
        auto& done = *static_cast<Op*>(io.user_data);
        if (status != 0 && done.result->error == 0) {
          done.result->error = status;
        }
        done.busy = false;
        done.result->latency.record_ns(static_cast<uint64_t>(
            std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - done.start)
                .count()));
        ++done.result->ios;
      };
      op.result = &result;
      op.start = now;
      op.busy = true;
      ++busy;
      queue->submit(op.io);
    }
    queue->kick();
    const uint64_t before = result.ios;
    if (queue->reap() == 0) {
      pollfd pfd{.fd = queue->wake_fd(), .events = POLLIN, .revents = 0};
      ::poll(&pfd, 1, 10);
      (void)queue->reap();
    }
    busy -= static_cast<unsigned>(result.ios - before);
  }
  result.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  result.cpu_s = bench::process_usage().cpu_s - cpu0;
  std::free(pool);  // NOLINT(cppcoreguidelines-no-malloc): aligned_alloc'd above
  if (result.error != 0) {
    die("a write failed: " + errno_text(-result.error));
  }
  return result;
}

struct Row {
  std::string scenario;
  double iops = 0;
  uint64_t p50_us = 0;
  uint64_t p99_us = 0;
  uint64_t remote_p50_us = 0;
  uint64_t remote_p99_us = 0;
  double engine_cpu_us_per_io = 0;
  double server_cpu_us_per_io = 0;
  double mb_per_s = 0;
  double seconds = 0;
};

}  // namespace

int main(int argc, char** argv) try {
  CLI::App app{"remote replica vs local: 4K randwrite, breakdown, rebuild rate"};
  std::string dir = "/var/tmp";
  std::string size_text = "256M";
  double runtime = 10;
  unsigned qd = 32;
  std::string server_kind = "nbdkit";
  bool json = false;
  app.add_option("--dir", dir, "directory for the replica files (O_DIRECT: not tmpfs)");
  app.add_option("--size", size_text, "volume size");
  app.add_option("--runtime", runtime, "seconds per load run");
  app.add_option("--qd", qd, "4K random writes in flight");
  app.add_option("--server", server_kind, "NBD server of the remote replica: nbdkit or qemu-nbd");
  app.add_flag("--json", json, "print JSON");
  CLI11_PARSE(app, argc, argv);
  spdlog::set_level(spdlog::level::warn);
  const uint64_t size = parse_size(size_text);
  if (size < (uint64_t{16} << 20) || size % 4096 != 0) {
    die("--size must be at least 16M and a multiple of 4K");
  }
  const std::string base = dir + "/remote_replica_bench_" + std::to_string(::getpid());
  ScratchFiles scratch;
  scratch.paths = {base + "_local0", base + "_local1", base + "_remote"};
  const std::vector<std::string>& files = scratch.paths;
  for (const auto& f : files) {
    fill_file(f, size + (uint64_t{2} << 20));
  }
  Server server(server_kind, files[2]);
  nbd::RemoteReplicaOptions remote_options;
  remote_options.thread.name = "remote";
  {
    engine::RawReplicaFormatOptions fo;
    fo.size_bytes = size;
    fo.zero_data = false;
    ok_or_die(nbd::format_remote_replica(server.uri(), fo, remote_options.device),
              "format the remote replica");
  }
  std::vector<Row> rows;

  // ---- local + local ----
  {
    LocalReplica a(files[0], size, true);
    LocalReplica b(files[1], size, true);
    auto volume = value_or_die(engine::ReplicatedVolume::open(engine::ReplicatedVolumeOptions{},
                                                              {a.binding(), b.binding()}),
                               "open the local volume");
    LoadResult load = random_writes(*volume, qd, runtime);
    ok_or_die(volume->close(), "close");
    Row row{"local"};
    row.iops = static_cast<double>(load.ios) / load.seconds;
    row.p50_us = load.latency.quantile_us(500);
    row.p99_us = load.latency.quantile_us(990);
    row.engine_cpu_us_per_io = load.cpu_s * 1e6 / static_cast<double>(load.ios);
    rows.push_back(row);
  }

  // ---- local + remote ----
  {
    LocalReplica a(files[0], size, true);
    auto remote = value_or_die(nbd::RemoteReplica::open(server.uri(), remote_options),
                               "open the remote replica");
    auto volume = value_or_die(engine::ReplicatedVolume::open(engine::ReplicatedVolumeOptions{},
                                                              {a.binding(), remote->binding()}),
                               "open the volume with a remote replica");
    const double server_cpu0 = server.cpu_seconds();
    LoadResult load = random_writes(*volume, qd, runtime);
    const double server_cpu = server.cpu_seconds() - server_cpu0;
    auto stats = value_or_die(remote->stats(), "remote stats");
    ok_or_die(volume->close(), "close");
    Row row{"remote"};
    row.iops = static_cast<double>(load.ios) / load.seconds;
    row.p50_us = load.latency.quantile_us(500);
    row.p99_us = load.latency.quantile_us(990);
    row.remote_p50_us = stats.latency_p50_us;
    row.remote_p99_us = stats.latency_p99_us;
    row.engine_cpu_us_per_io = load.cpu_s * 1e6 / static_cast<double>(load.ios);
    row.server_cpu_us_per_io = server_cpu * 1e6 / static_cast<double>(load.ios);
    rows.push_back(row);
  }

  // ---- full rebuild of a fresh remote replica ----
  {
    {
      // The local replica alone forms the volume, so the remote one is new.
      LocalReplica a(files[0], size, true);
      auto volume = value_or_die(
          engine::ReplicatedVolume::open(engine::ReplicatedVolumeOptions{}, {a.binding()}),
          "open the rebuild source");
      ok_or_die(volume->close(), "close");
    }
    engine::RawReplicaFormatOptions fo;
    fo.size_bytes = size;
    fo.zero_data = false;
    ok_or_die(nbd::format_remote_replica(server.uri(), fo, remote_options.device),
              "format the remote replica");
    LocalReplica a(files[0], size, false);
    auto remote = value_or_die(nbd::RemoteReplica::open(server.uri(), remote_options),
                               "open the remote replica");
    const double server_cpu0 = server.cpu_seconds();
    const double cpu0 = bench::process_usage().cpu_s;
    const auto t0 = Clock::now();
    auto volume = value_or_die(engine::ReplicatedVolume::open(engine::ReplicatedVolumeOptions{},
                                                              {a.binding(), remote->binding()}),
                               "open the volume to rebuild");
    ok_or_die(volume->wait_rebuild(), "rebuild");
    const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    const engine::RebuildProgress progress = volume->status().rebuild;
    ok_or_die(volume->close(), "close");
    Row row{"rebuild"};
    row.seconds = seconds;
    row.mb_per_s = static_cast<double>(progress.total_bytes) / seconds / 1e6;
    const double mib = static_cast<double>(progress.total_bytes) / (1 << 20);
    row.engine_cpu_us_per_io = (bench::process_usage().cpu_s - cpu0) * 1e6 / mib;
    row.server_cpu_us_per_io = (server.cpu_seconds() - server_cpu0) * 1e6 / mib;
    rows.push_back(row);
  }
  const double ratio = rows[0].iops > 0 ? rows[1].iops / rows[0].iops : 0;
  if (json) {
    nlohmann::json j;
    j["size_bytes"] = size;
    j["runtime_s"] = runtime;
    j["qd"] = qd;
    j["server"] = server_kind;
    j["ratio_remote_vs_local"] = ratio;
    for (const Row& r : rows) {
      nlohmann::json row = {{"scenario", r.scenario}};
      if (r.scenario == "rebuild") {
        row["mb_per_s"] = r.mb_per_s;
        row["seconds"] = r.seconds;
        row["engine_cpu_us_per_mib"] = r.engine_cpu_us_per_io;
        row["server_cpu_us_per_mib"] = r.server_cpu_us_per_io;
      } else {
        row["iops"] = r.iops;
        row["p50_us"] = r.p50_us;
        row["p99_us"] = r.p99_us;
        row["engine_cpu_us_per_io"] = r.engine_cpu_us_per_io;
        if (r.scenario == "remote") {
          row["remote_nbd_p50_us"] = r.remote_p50_us;
          row["remote_nbd_p99_us"] = r.remote_p99_us;
          row["server_cpu_us_per_io"] = r.server_cpu_us_per_io;
        }
      }
      j["results"].push_back(row);
    }
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    std::printf("4K randwrite QD%u, %s volume, remote replica on %s over 127.0.0.1\n", qd,
                size_text.c_str(), server_kind.c_str());
    std::printf("%-8s %10s %8s %8s %10s %10s %12s %12s\n", "", "IOPS", "p50 us", "p99 us",
                "nbd p50", "nbd p99", "engine us/io", "server us/io");
    for (const Row& r : rows) {
      if (r.scenario != "rebuild") {
        std::printf("%-8s %10.0f %8llu %8llu %10llu %10llu %12.1f %12.1f\n", r.scenario.c_str(),
                    r.iops, static_cast<unsigned long long>(r.p50_us),
                    static_cast<unsigned long long>(r.p99_us),
                    static_cast<unsigned long long>(r.remote_p50_us),
                    static_cast<unsigned long long>(r.remote_p99_us), r.engine_cpu_us_per_io,
                    r.server_cpu_us_per_io);
      }
    }
    std::printf("ratio remote/local: %.2f\n", ratio);
    std::printf(
        "rebuild of the remote replica: %.1f MB/s (%.1f s; CPU us/MiB engine %.0f, "
        "server %.0f)\n",
        rows[2].mb_per_s, rows[2].seconds, rows[2].engine_cpu_us_per_io,
        rows[2].server_cpu_us_per_io);
  }
  return 0;
} catch (const std::exception& e) {
  (void)std::fprintf(stderr, "remote_replica_bench: error: %s\n", e.what());
  return 1;
}
