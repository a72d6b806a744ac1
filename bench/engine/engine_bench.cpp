// engine_bench: the replicated volume engine in-process (no ublk), against
// fio io_uring O_DIRECT on the same files as the baseline, in the same run.
// (One file of ~900 lines: every scenario shares the option parsing, the
// alternating fio/engine rounds and the one results table; a split would
// scatter one benchmark's flow over files that only it uses.)
//
//   engine_bench [--dir /dev/shm] [--size 512M] [--runtime 2] [--rebuild-size 1G] [--json]
//                [--reactors N] [--reactor-poll-us US] [--reactor-poll-max-percent P]
//                [--rounds 3] [--only randread,randwrite,null,qd1,rebuild]
//                [--replicas 1 2 3]
//
// Scenarios (4 KiB random, QD 32 unless said otherwise):
//   randread   fio on replica file 0, then the engine with R = 1, 2, 3 replicas
//   randwrite  fio on R files (one job per file, QD 32 each - what each
//              replica file sees from the engine), then the engine, R = 1..3
//   null       the engine on null replicas (complete at once): CPU time per
//              I/O per replica, latency p50/p99 (QD 32, and writes at QD 1)
//   rebuild    full rebuild of a replica of --rebuild-size, idle and under a
//              4 KiB random-write load (QD 32)
// randread/randwrite alternate fio and the engine for --rounds rounds and
// report medians; "cpu us/io" there is CPU time per I/O per replica file
// (fio: its whole process, io_uring workers included; engine: all threads of
// this process), the figure that stays comparable on a loaded machine;
// "user us" is its user part: the process's own code, without the syscalls
// and the kernel's work on the files (which fio pays as well).
// Prints a table, or JSON with --json.
#include <fcntl.h>
#include <poll.h>
#include <sys/resource.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <future>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <spdlog/spdlog.h>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "ublkvol/dbs/file_device.h"
#include "ublkvol/engine/raw_replica_store.h"
#include "ublkvol/engine/reactor_executor.h"
#include "ublkvol/engine/replicated_volume.h"
#include "ublkvol/engine/store_thread.h"
#include "ublkvol/reactor/reactor.h"

#include "../common/process_usage.h"
#include "../common/stale_scratch.h"

namespace ublkvol::engine {
namespace {

using Clock = std::chrono::steady_clock;

// The benchmark cannot go on without a volume or queue it asked for: say why
// and exit, rather than dereference an error.
template <typename T>
T value_or_exit(Result<T> result, const char* what) {
  if (!result.ok()) {
    (void)std::fprintf(stderr, "engine_bench: %s: %s\n", what, result.error().to_string().c_str());
    // NOLINTNEXTLINE(concurrency-mt-unsafe): fatal exit; no two threads reach it at once
    std::exit(1);
  }
  return std::move(result).value();
}

double cpu_seconds(int who = RUSAGE_SELF) { return ublkvol::bench::process_usage(who).cpu_s; }
double user_seconds(int who = RUSAGE_SELF) { return ublkvol::bench::process_usage(who).user_s; }

uint64_t parse_size(const std::string& s) {
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  std::string unit = end == nullptr ? "" : std::string(end);
  uint64_t mult = 1;
  if (unit == "K" || unit == "k") {
    mult = 1ULL << 10U;
  } else if (unit == "M" || unit == "m") {
    mult = 1ULL << 20U;
  } else if (unit == "G" || unit == "g") {
    mult = 1ULL << 30U;
  }
  return static_cast<uint64_t>(v * static_cast<double>(mult));
}

// A replica that completes everything at once, for measuring the engine's
// own CPU cost.
class NullReplicaStore final : public ReplicaStore {
 public:
  explicit NullReplicaStore(uint64_t size) : size_(size) { meta_.fresh = true; }
  std::string_view name() const override { return "null"; }
  uint64_t size_bytes() const override { return size_; }
  void submit(ReplicaIo& io) override {
    io.store_next = nullptr;
    if (tail_ == nullptr) {
      head_ = &io;
    } else {
      tail_->store_next = &io;
    }
    tail_ = &io;
    ++in_flight_;
  }
  void kick() override {}
  unsigned poll(bool /*wait*/) override {
    unsigned n = 0;
    ReplicaIo* io = head_;
    head_ = tail_ = nullptr;
    while (io != nullptr) {
      ReplicaIo* next = io->store_next;
      --in_flight_;
      ++n;
      io->on_complete(*io, 0);
      io = next;
    }
    return n;
  }
  unsigned in_flight() const override { return in_flight_; }
  int completion_fd() const override { return -1; }
  const ReplicaMeta& meta() const override { return meta_; }
  Status write_meta(const ReplicaMeta& m) override {
    meta_ = m;
    return ok_status();
  }
  uint64_t region_bytes() const override { return 1U << 20U; }
  std::vector<uint8_t> dirty_regions() const override { return std::vector<uint8_t>(size_ >> 20U); }
  Status clear_dirty() override { return ok_status(); }

 private:
  uint64_t size_;
  ReplicaMeta meta_;
  ReplicaIo* head_ = nullptr;
  ReplicaIo* tail_ = nullptr;
  unsigned in_flight_ = 0;
};

struct Result {
  std::string scenario;
  std::string what;
  unsigned replicas = 0;
  double iops = 0;
  double mb_per_s = 0;
  double p50_us = 0;
  double p99_us = 0;
  double cpu_us_per_io_per_replica = 0;
  // Of it, user time: the engine's (or fio's) own code, without the
  // syscalls and the kernel's work on the files.
  double user_us_per_io_per_replica = 0;
  double ratio = 0;               // against the fio baseline
  std::vector<double> runs = {};  // IOPS of each round
};

// fio baseline: returns total IOPS over the jobs. `cpu_us_per_io`: CPU time
// of the whole fio process (its io_uring workers and startup included) per
// I/O of all jobs; `user_us_per_io`: the user part of it.
double run_fio(const std::vector<std::string>& files, const std::string& rw, unsigned iodepth,
               double runtime, double* p50_us, double* p99_us, double* cpu_us_per_io = nullptr,
               double* user_us_per_io = nullptr) {
  std::string cmd = "fio --output-format=json --ioengine=io_uring --direct=1 --bs=4k --rw=" + rw +
                    " --iodepth=" + std::to_string(iodepth) +
                    " --time_based --runtime=" + std::to_string(runtime) +
                    " --norandommap --randrepeat=0";
  for (size_t i = 0; i < files.size(); ++i) {
    cmd += " --name=j" + std::to_string(i) + " --filename=" + files[i];
  }
  cmd += " 2>/dev/null";
  const double cpu_before = cpu_seconds(RUSAGE_CHILDREN);
  const double user_before = user_seconds(RUSAGE_CHILDREN);
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) {
    return 0;
  }
  std::string out;
  char buf[4096];
  size_t n = 0;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) {
    out.append(buf, n);
  }
  pclose(p);
  const double cpu = cpu_seconds(RUSAGE_CHILDREN) - cpu_before;
  const double user = user_seconds(RUSAGE_CHILDREN) - user_before;
  auto j = nlohmann::json::parse(out, nullptr, false);
  if (j.is_discarded()) {
    (void)std::fprintf(stderr, "fio output not parseable\n");
    return 0;
  }
  double iops = 0;
  double ios = 0;
  const char* dir = rw == "randread" ? "read" : "write";
  for (auto& job : j["jobs"]) {
    iops += job[dir]["iops"].get<double>();
    ios += job[dir]["total_ios"].get<double>();
    if (p50_us != nullptr) {
      *p50_us = job[dir]["clat_ns"]["percentile"]["50.000000"].get<double>() / 1000.0;
      *p99_us = job[dir]["clat_ns"]["percentile"]["99.000000"].get<double>() / 1000.0;
    }
  }
  if (cpu_us_per_io != nullptr) {
    *cpu_us_per_io = cpu * 1e6 / std::max(ios, 1.0);
  }
  if (user_us_per_io != nullptr) {
    *user_us_per_io = user * 1e6 / std::max(ios, 1.0);
  }
  return iops;
}

struct Replicas {
  std::vector<std::unique_ptr<dbs::FileDevice>> devices;
  std::vector<std::unique_ptr<NullReplicaStore>> nulls;
  std::vector<std::unique_ptr<RawReplicaStore>> stores;
  std::vector<std::unique_ptr<StoreThread>> threads;
  std::vector<std::unique_ptr<ReactorExecutor>> executors;  // --reactors
  std::vector<ReplicaBinding> bindings;

  ~Replicas() {
    for (auto& t : threads) {
      t->stop();
    }
  }
};

// StoreThreadOptions::spin_before_sleep for every store thread the
// benchmark starts (--store-spin-us; several values = one engine row each).
std::chrono::microseconds g_store_spin{0};
// --reactors N: stores on N reactors (store i on reactor i mod N), the load
// a poller of reactor 0; null (--reactors 0, the default): a StoreThread per
// store and the load on the main thread, the shape before issue 14.
std::unique_ptr<reactor::ReactorSet> g_reactor_set;

// A store's owner: an executor on its reactor, or a thread of its own.
StoreExecutor* start_owner(Replicas& reps, unsigned i, const std::string& name, ReplicaStore& store,
                           std::chrono::microseconds idle_poll) {
  if (g_reactor_set) {
    auto ex = ReactorExecutor::create(g_reactor_set->for_store(i), name);
    if (!ex.ok() || !(*ex)->attach(store).ok()) {
      (void)std::fprintf(stderr, "engine_bench: cannot put store %s on a reactor\n", name.c_str());
      // NOLINTNEXTLINE(concurrency-mt-unsafe): fatal exit; no two threads reach it at once
      std::exit(1);
    }
    reps.executors.push_back(std::move(*ex));
    return reps.executors.back().get();
  }
  auto thread = StoreThread::start({name, idle_poll, g_store_spin});
  (void)(*thread)->attach(store);
  reps.threads.push_back(std::move(thread.value()));
  return reps.threads.back().get();
}

// FileDeviceOptions::submit_batch for every replica file (--submit-batch).
unsigned g_submit_batch = dbs::FileDeviceOptions{}.submit_batch;

std::unique_ptr<Replicas> file_replicas(const std::vector<std::string>& files, unsigned r,
                                        bool format) {
  auto reps = std::make_unique<Replicas>();
  for (unsigned i = 0; i < r; ++i) {
    dbs::FileDeviceOptions fo;
    fo.queue_depth = 256;
    fo.submit_batch = g_submit_batch;
    auto dev = dbs::FileDevice::open(files[i], fo);
    if (!dev.ok()) {
      (void)std::fprintf(stderr, "%s\n", dev.error().to_string().c_str());
      // NOLINTNEXTLINE(concurrency-mt-unsafe): fatal exit; no two threads reach it at once
      std::exit(1);
    }
    if (format) {
      RawReplicaFormatOptions opts;
      opts.zero_data = false;  // files hold identical pre-filled data
      if (Status st = format_raw_replica(**dev, opts); !st.ok()) {
        (void)std::fprintf(stderr, "%s\n", st.error().to_string().c_str());
        // NOLINTNEXTLINE(concurrency-mt-unsafe): fatal exit; no two threads reach it at once
        std::exit(1);
      }
    }
    auto store = open_raw_replica(**dev);
    if (!store.ok()) {
      (void)std::fprintf(stderr, "%s\n", store.error().to_string().c_str());
      // NOLINTNEXTLINE(concurrency-mt-unsafe): fatal exit; no two threads reach it at once
      std::exit(1);
    }
    StoreExecutor* owner = start_owner(*reps, i, "store" + std::to_string(i), **store,
                                       StoreThreadOptions{}.idle_poll_interval);
    reps->bindings.push_back({store->get(), owner});
    reps->devices.push_back(std::move(dev.value()));
    reps->stores.push_back(std::move(store.value()));
  }
  return reps;
}

std::unique_ptr<Replicas> null_replicas(unsigned r, uint64_t size) {
  auto reps = std::make_unique<Replicas>();
  for (unsigned i = 0; i < r; ++i) {
    reps->nulls.push_back(std::make_unique<NullReplicaStore>(size));
    StoreExecutor* owner = start_owner(*reps, i, "null" + std::to_string(i), *reps->nulls.back(),
                                       std::chrono::microseconds(200));
    reps->bindings.push_back({reps->nulls.back().get(), owner});
  }
  return reps;
}

// Figures of one load run.
struct LoadResult {
  uint64_t ios = 0;
  double seconds = 0;
  double cpu = 0;
  double user = 0;  // of cpu
  double p50_us = 0;
  double p99_us = 0;
};

// The load generator: one pass = submit every free slot, kick, reap. Runs on
// the caller's thread (sleeping on the queue's wake fd when a pass did
// nothing) or, with --reactors, as a poller of reactor 0.
class LoadGen final : public reactor::Poller {
 public:
  LoadGen(Volume& volume, VolumeQueue& q, VolumeOp op, unsigned qd, double runtime,
          const std::atomic<bool>* stop)
      : q_(q), op_(op), ops_(qd), stop_(stop), blocks_(volume.info().size_bytes / 4096) {
    lat_.reserve(4U << 20U);
    pool_ = static_cast<std::byte*>(std::aligned_alloc(4096, size_t{qd} * 4096));
    std::memset(pool_, 0x5A, size_t{qd} * 4096);
    for (unsigned i = 0; i < qd; ++i) {
      ops_[i].buf = pool_ + size_t{i} * 4096;
      ops_[i].lat = &lat_;
    }
    cpu0_ = cpu_seconds();
    user0_ = user_seconds();
    t0_ = Clock::now();
    end_ =
        t0_ + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(runtime));
  }
  ~LoadGen() override { std::free(pool_); }
  LoadGen(const LoadGen&) = delete;
  LoadGen& operator=(const LoadGen&) = delete;

  // One pass; how many I/Os completed.
  unsigned step() {
    if (running_) {
      for (Op& o : ops_) {
        if (o.busy) {
          continue;
        }
        o.io = VolumeIo{};
        o.io.op = op_;
        o.io.offset = (rng_() % blocks_) * 4096;
        o.io.length = 4096;
        o.io.buffer = o.buf;
        o.io.user_data = &o;
        o.io.on_complete = &LoadGen::on_complete;
        o.busy = true;
        o.start = Clock::now();
        q_.submit(o.io);
      }
      q_.kick();
    }
    unsigned ran = q_.reap();
    result_.ios += ran;
    unsigned busy = 0;
    for (Op& o : ops_) {
      busy += o.busy ? 1 : 0;
    }
    if (running_ && (Clock::now() >= end_ || (stop_ != nullptr && stop_->load()))) {
      running_ = false;
    }
    if (!running_ && busy == 0 && !done_) {
      done_ = true;
      finish();
    }
    return ran;
  }
  [[nodiscard]] bool done() const { return done_; }

  unsigned poll() override {
    if (done_) {
      return 0;
    }
    unsigned ran = step();
    if (done_) {
      finished_.set_value();
    }
    return ran;
  }
  [[nodiscard]] int wait_fd() const override { return q_.wake_fd(); }
  [[nodiscard]] bool waiting() const override { return !done_ && q_.in_flight() > 0; }

  std::future<void> finished() { return finished_.get_future(); }
  [[nodiscard]] const LoadResult& result() const { return result_; }

 private:
  struct Op {
    VolumeIo io;
    std::byte* buf = nullptr;
    Clock::time_point start;
    std::vector<uint32_t>* lat = nullptr;
    bool busy = false;
  };
  static void on_complete(VolumeIo& io, int result) {
    auto& o = *static_cast<Op*>(io.user_data);
    o.busy = false;
    if (result != 0) {
      (void)std::fprintf(stderr, "I/O failed: %d\n", result);
      // NOLINTNEXTLINE(concurrency-mt-unsafe): fatal exit; no two threads reach it at once
      std::exit(1);
    }
    if (o.lat->size() < o.lat->capacity()) {
      o.lat->push_back(static_cast<uint32_t>(
          std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - o.start).count()));
    }
  }
  void finish() {
    result_.seconds = std::chrono::duration<double>(Clock::now() - t0_).count();
    result_.cpu = cpu_seconds() - cpu0_;
    result_.user = user_seconds() - user0_;
    std::sort(lat_.begin(), lat_.end());
    if (!lat_.empty()) {
      result_.p50_us = lat_[lat_.size() / 2] / 1000.0;
      result_.p99_us = lat_[lat_.size() * 99 / 100] / 1000.0;
    }
  }

  VolumeQueue& q_;
  VolumeOp op_;
  std::vector<Op> ops_;
  const std::atomic<bool>* stop_;
  uint64_t blocks_;
  std::vector<uint32_t> lat_;
  std::byte* pool_ = nullptr;
  std::mt19937_64 rng_{42};
  double cpu0_ = 0;
  double user0_ = 0;
  Clock::time_point t0_, end_;
  bool running_ = true;
  bool done_ = false;
  LoadResult result_;
  std::promise<void> finished_;
};

// Opens the volume's queue 0 where the load will run: on reactor 0 with
// --reactors (so replicas on that reactor are called directly).
ublkvol::Result<std::unique_ptr<VolumeQueue>> open_bench_queue(Volume& volume) {
  if (!g_reactor_set) {
    return volume.open_queue(0);
  }
  std::unique_ptr<VolumeQueue> q;
  Status st = g_reactor_set->at(0).call([&]() -> Status {
    auto opened = volume.open_queue(0);
    if (!opened.ok()) {
      return opened.error();
    }
    q = std::move(*opened);
    return ok_status();
  });
  if (!st.ok()) {
    return st.error();
  }
  return q;
}

// Runs 4 KiB random I/O at `qd` on `q` for `runtime` seconds.
LoadResult run_load(Volume& volume, VolumeQueue& q, VolumeOp op, unsigned qd, double runtime,
                    const std::atomic<bool>* stop = nullptr) {
  LoadGen gen(volume, q, op, qd, runtime, stop);
  if (g_reactor_set) {
    reactor::Reactor& home = g_reactor_set->at(0);
    std::future<void> finished = gen.finished();
    (void)home.add(gen);
    finished.wait();
    (void)home.remove(gen);
    return gen.result();
  }
  while (!gen.done()) {
    if (gen.step() == 0 && !gen.done()) {
      pollfd p{q.wake_fd(), POLLIN, 0};
      ::poll(&p, 1, 100);
      uint64_t v = 0;
      ssize_t n = ::read(q.wake_fd(), &v, sizeof(v));
      (void)n;
    }
  }
  return gen.result();
}

// A table row for an engine run: IOPS and latency from the load.
Result engine_row(std::string scenario, std::string what, unsigned replicas, const LoadResult& lr) {
  Result res{std::move(scenario), std::move(what), replicas};
  res.iops = static_cast<double>(lr.ios) / lr.seconds;
  res.p50_us = lr.p50_us;
  res.p99_us = lr.p99_us;
  return res;
}

// Figures of one scenario over several rounds; a row reports their medians.
struct Samples {
  std::vector<double> iops, p50, p99, cpu, user;
  void add(double i, double a, double b, double c, double u) {
    iops.push_back(i);
    p50.push_back(a);
    p99.push_back(b);
    cpu.push_back(c);
    user.push_back(u);
  }
  static double median(std::vector<double> v) {
    if (v.empty()) {
      return 0;
    }
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  }
  [[nodiscard]] Result row(std::string scenario, std::string what, unsigned replicas) const {
    Result res{std::move(scenario), std::move(what), replicas};
    res.iops = median(iops);
    res.mb_per_s = res.iops * 4096 / 1e6;
    res.p50_us = median(p50);
    res.p99_us = median(p99);
    res.cpu_us_per_io_per_replica = median(cpu);
    res.user_us_per_io_per_replica = median(user);
    res.runs = iops;
    return res;
  }
};

void fill_files(const std::vector<std::string>& files, uint64_t size) {
  const size_t chunk = 1U << 20U;
  std::vector<char> buf(chunk);
  std::mt19937_64 rng(7);
  for (size_t i = 0; i < chunk; i += 8) {
    uint64_t v = rng();
    std::memcpy(buf.data() + i, &v, 8);
  }
  for (const std::string& f : files) {
    int fd = ::open(f.c_str(), O_CREAT | O_TRUNC | O_WRONLY, 0600);
    if (fd < 0) {
      std::perror(f.c_str());
      // NOLINTNEXTLINE(concurrency-mt-unsafe): fatal exit; no two threads reach it at once
      std::exit(1);
    }
    for (uint64_t off = 0; off < size; off += chunk) {
      if (::pwrite(fd, buf.data(), chunk, static_cast<off_t>(off)) != static_cast<ssize_t>(chunk)) {
        std::perror("pwrite");
        // NOLINTNEXTLINE(concurrency-mt-unsafe): fatal exit; no two threads reach it at once
        std::exit(1);
      }
    }
    ::close(fd);
  }
}

}  // namespace
}  // namespace ublkvol::engine

int main(int argc, char** argv) try {
  using namespace ublkvol::engine;
  CLI::App app{"replicated engine benchmark (in-process) with an fio baseline"};
  std::string dir = "/dev/shm";
  std::string size_s = "512M";
  std::string rebuild_size_s = "1G";
  double runtime = 2;
  bool json = false;
  bool skip_fio = false;
  app.add_option("--dir", dir, "directory for the replica files (tmpfs)");
  app.add_option("--size", size_s, "size of each replica file");
  app.add_option("--rebuild-size", rebuild_size_s, "size of the rebuilt replica");
  app.add_option("--runtime", runtime, "seconds per scenario");
  app.add_flag("--json", json, "print JSON");
  app.add_flag("--no-fio", skip_fio, "skip the fio baselines");
  unsigned rounds = 3;
  std::string only_list;
  std::vector<unsigned> replica_counts = {1, 2, 3};
  app.add_option("--rounds", rounds, "alternating fio/engine rounds (medians reported)")
      ->check(CLI::Range(1, 100));
  app.add_option("--only", only_list,
                 "comma-separated scenarios: randread,randwrite,null,qd1,rebuild (default all)");
  app.add_option("--replicas", replica_counts, "replica counts to run (default 1 2 3)")
      ->check(CLI::Range(1, 3));
  std::vector<unsigned> store_spins = {0};
  app.add_option("--store-spin-us", store_spins,
                 "store threads' spin before sleeping, us (several: one engine row each)");
  // Periodic dirty-bitmap clearing: -1 keeps the engine's default; a short
  // interval shows the pause a clear causes in the latency figures.
  long dirty_clear_ms = -1;
  app.add_option("--dirty-clear-ms", dirty_clear_ms,
                 "ReplicatedVolumeOptions::dirty_clear_interval in ms (0 = off; default: the "
                 "engine's)");
  std::vector<unsigned> submit_batches = {g_submit_batch};
  app.add_option("--submit-batch", submit_batches,
                 "FileDeviceOptions::submit_batch of the replica files (0 = submit at poll "
                 "only; several: one engine row each)");
  unsigned reactors = 0;
  app.add_option("--reactors", reactors,
                 "run the stores on N reactors (store i on reactor i mod N) and the load as a "
                 "poller of reactor 0; 0 (default): one store thread per store, load on the main "
                 "thread (the shape before reactors)");
  unsigned reactor_poll_us = 0;
  app.add_option("--reactor-poll-us", reactor_poll_us,
                 "with --reactors: adaptive polling, keep polling this long for completions "
                 "in flight before sleeping (ReactorOptions::poll_in_flight; 0 = off)");
  unsigned reactor_poll_max_percent = 50;
  std::string rebuild_chunk_s = "1M";
  app.add_option("--rebuild-chunk", rebuild_chunk_s,
                 "rebuild: the copy unit (ReplicatedVolumeOptions::rebuild_chunk_bytes)");
  unsigned rebuild_busy_percent = ReplicatedVolumeOptions{}.rebuild_busy_percent;
  app.add_option("--rebuild-busy-percent", rebuild_busy_percent,
                 "rebuild: share of the time it takes while user I/O runs (100: no yielding)")
      ->check(CLI::Range(1U, 100U));
  app.add_option("--reactor-poll-max-percent", reactor_poll_max_percent,
                 "with --reactor-poll-us: at most this share of each reactor's time polling")
      ->check(CLI::Range(1U, 100U));
  CLI11_PARSE(app, argc, argv);
  if (reactors > 0) {
    ublkvol::reactor::ReactorSetOptions ro;
    ro.name_prefix = "bench-reactor";
    ro.count = reactors;
    ro.busy_poll_interval = std::chrono::microseconds(200);
    ro.poll_in_flight = std::chrono::microseconds(reactor_poll_us);
    ro.poll_max_percent = reactor_poll_max_percent;
    auto set = ublkvol::reactor::ReactorSet::start(ro);
    if (!set.ok()) {
      (void)std::fprintf(stderr, "engine_bench: %s\n", set.error().to_string().c_str());
      return 1;
    }
    g_reactor_set = std::move(*set);
  }
  std::string mode = reactors > 0 ? "reactors=" + std::to_string(reactors) : "threads";
  if (reactors > 0 && reactor_poll_us > 0) {
    mode += ", poll " + std::to_string(reactor_poll_us) + " us (max " +
            std::to_string(reactor_poll_max_percent) + "%)";
  }
  std::vector<std::string> only;
  for (size_t pos = 0; pos < only_list.size();) {
    size_t comma = only_list.find(',', pos);
    if (comma == std::string::npos) {
      comma = only_list.size();
    }
    only.push_back(only_list.substr(pos, comma - pos));
    pos = comma + 1;
  }
  for (const std::string& scenario : only) {
    if (scenario != "randread" && scenario != "randwrite" && scenario != "null" &&
        scenario != "qd1" && scenario != "rebuild") {
      (void)std::fprintf(stderr, "engine_bench: unknown scenario '%s' in --only\n",
                         scenario.c_str());
      return 2;
    }
  }
  // NOLINTNEXTLINE(concurrency-mt-unsafe): nothing in this program calls setenv
  spdlog::set_level(getenv("BENCH_DEBUG") ? spdlog::level::info : spdlog::level::warn);
  const uint64_t size = parse_size(size_s);
  const uint64_t rebuild_size = parse_size(rebuild_size_s);
  ublkvol::bench::remove_stale_scratch(dir, "engine_bench_", "engine_bench");
  std::vector<std::string> files;
  files.reserve(3);
  for (int i = 0; i < 3; ++i) {
    files.push_back(dir + "/engine_bench_r" + std::to_string(i) + "_" + std::to_string(getpid()));
  }
  fill_files(files, size);
  std::vector<Result> results;

  // Engine variants: every --store-spin-us x --submit-batch pair, one row each.
  struct Variant {
    unsigned spin_us;
    unsigned submit_batch;
  };
  std::vector<Variant> variants;
  for (unsigned spin_us : store_spins) {
    for (unsigned batch : submit_batches) {
      variants.push_back({spin_us, batch});
    }
  }
  auto engine_label = [&](const Variant& v) {
    std::string label = "engine";
    if (store_spins.size() > 1) {
      label += ", store spin " + std::to_string(v.spin_us) + " us";
    }
    if (submit_batches.size() > 1) {
      label += ", submit batch " + std::to_string(v.submit_batch);
    }
    return label;
  };
  auto wanted = [&](const std::string& scenario) {
    return only.empty() || std::find(only.begin(), only.end(), scenario) != only.end();
  };
  // One engine run on file replicas (fresh volume over the first r files).
  auto engine_file_run = [&](unsigned r, VolumeOp op, const Variant& variant) {
    g_store_spin = std::chrono::microseconds(variant.spin_us);
    g_submit_batch = variant.submit_batch;
    auto reps = file_replicas(files, r, true);
    ReplicatedVolumeOptions o;
    o.name = "bench";
    if (dirty_clear_ms >= 0) {
      o.dirty_clear_interval = std::chrono::milliseconds(dirty_clear_ms);
    }
    auto vol = value_or_exit(ReplicatedVolume::open(o, reps->bindings), "open volume");
    auto q = value_or_exit(open_bench_queue(*vol), "open queue");
    LoadResult lr = run_load(*vol, *q, op, 32, runtime);
    // NOLINTNEXTLINE(concurrency-mt-unsafe): nothing in this program calls setenv
    if (getenv("BENCH_DEBUG") != nullptr) {
      VolumeStatus st = vol->status();
      (void)std::fprintf(stderr, "engine_bench: %llu checkpoint(s), last paused I/O for %llu us\n",
                         static_cast<unsigned long long>(st.checkpoints),
                         static_cast<unsigned long long>(st.last_checkpoint_pause_us));
    }
    q.reset();
    (void)vol->close();
    return lr;
  };
  // Rounds alternate fio and the engine, so load from elsewhere on the
  // machine hits both alike; every figure is the median over the rounds.
  // CPU is per I/O per replica file written or read (fio: its whole
  // process, io_uring workers included; engine: every thread of this one).

  // ---- random read ----
  if (wanted("randread")) {
    Samples fio;
    std::array<std::vector<Samples>, 4> engine;
    for (unsigned round = 0; round < rounds; ++round) {
      if (!skip_fio) {
        double p50 = 0, p99 = 0, cpu = 0, user = 0;
        double iops = run_fio({files[0]}, "randread", 32, runtime, &p50, &p99, &cpu, &user);
        fio.add(iops, p50, p99, cpu, user);
      }
      for (unsigned r : replica_counts) {
        engine[r].resize(variants.size());
        for (size_t v = 0; v < variants.size(); ++v) {
          LoadResult lr = engine_file_run(r, VolumeOp::kRead, variants[v]);
          const auto ios = static_cast<double>(std::max<uint64_t>(lr.ios, 1));
          engine[r][v].add(static_cast<double>(lr.ios) / lr.seconds, lr.p50_us, lr.p99_us,
                           lr.cpu * 1e6 / ios, lr.user * 1e6 / ios);
        }
      }
    }
    double fio_read = 0;
    if (!skip_fio) {
      Result f = fio.row("randread", "fio 1 file", 1);
      fio_read = f.iops;
      f.ratio = 1;
      results.push_back(f);
    }
    for (unsigned r : replica_counts) {
      for (size_t v = 0; v < variants.size(); ++v) {
        Result res = engine[r][v].row("randread", engine_label(variants[v]), r);
        res.ratio = fio_read > 0 ? res.iops / fio_read : 0;
        results.push_back(res);
      }
    }
  }

  // ---- random write ----
  if (wanted("randwrite")) {
    std::array<Samples, 4> fio;
    std::array<std::vector<Samples>, 4> engine;
    for (unsigned round = 0; round < rounds; ++round) {
      for (unsigned r : replica_counts) {
        if (!skip_fio) {
          std::vector<std::string> fs(files.begin(), files.begin() + r);
          double p50 = 0, p99 = 0, cpu = 0, user = 0;
          double total = run_fio(fs, "randwrite", 32, runtime, &p50, &p99, &cpu, &user);
          // The engine writes every I/O to r files: compare with one file's share.
          fio[r].add(total / r, p50, p99, cpu, user);
        }
        engine[r].resize(variants.size());
        for (size_t v = 0; v < variants.size(); ++v) {
          LoadResult lr = engine_file_run(r, VolumeOp::kWrite, variants[v]);
          const auto ios = static_cast<double>(std::max<uint64_t>(lr.ios, 1)) * r;
          engine[r][v].add(static_cast<double>(lr.ios) / lr.seconds, lr.p50_us, lr.p99_us,
                           lr.cpu * 1e6 / ios, lr.user * 1e6 / ios);
        }
      }
    }
    for (unsigned r : replica_counts) {
      double fio_write = 0;
      if (!skip_fio) {
        Result f = fio[r].row("randwrite", "fio " + std::to_string(r) + " file(s), QD32 each", r);
        fio_write = f.iops;
        f.ratio = 1;
        results.push_back(f);
      }
      for (size_t v = 0; v < variants.size(); ++v) {
        Result res = engine[r][v].row("randwrite", engine_label(variants[v]), r);
        res.ratio = fio_write > 0 ? res.iops / fio_write : 0;
        results.push_back(res);
      }
    }
  }

  // ---- null replicas: the engine's own cost ----
  // The remaining scenarios run with the first --store-spin-us value.
  g_store_spin = std::chrono::microseconds(store_spins.front());
  g_submit_batch = submit_batches.front();
  for (VolumeOp op : {VolumeOp::kRead, VolumeOp::kWrite}) {
    if (!wanted("null")) {
      break;
    }
    for (unsigned r : replica_counts) {
      auto reps = null_replicas(r, 1ULL << 30U);
      ReplicatedVolumeOptions o;
      o.name = "null";
      auto vol = value_or_exit(ReplicatedVolume::open(o, reps->bindings), "open volume");
      auto q = value_or_exit(open_bench_queue(*vol), "open queue");
      LoadResult lr = run_load(*vol, *q, op, 32, runtime / 2);
      Result res = engine_row(op == VolumeOp::kRead ? "null-read" : "null-write",
                              "engine, null replicas", r, lr);
      // Reads touch one replica, writes every replica.
      unsigned touched = op == VolumeOp::kRead ? 1 : r;
      res.cpu_us_per_io_per_replica =
          lr.cpu * 1e6 / static_cast<double>(lr.ios) / static_cast<double>(touched);
      res.user_us_per_io_per_replica =
          lr.user * 1e6 / static_cast<double>(lr.ios) / static_cast<double>(touched);
      results.push_back(res);
      q.reset();
      (void)vol->close();
    }
  }

  // ---- null replicas at QD 1: the engine's latency without queueing ----
  for (unsigned r : replica_counts) {
    if (!wanted("qd1")) {
      break;
    }
    auto reps = null_replicas(r, 1ULL << 30U);
    ReplicatedVolumeOptions o;
    o.name = "null";
    auto vol = value_or_exit(ReplicatedVolume::open(o, reps->bindings), "open volume");
    auto q = value_or_exit(open_bench_queue(*vol), "open queue");
    LoadResult lr = run_load(*vol, *q, VolumeOp::kWrite, 1, runtime / 2);
    Result res = engine_row("null-qd1", "engine, null replicas, write QD1", r, lr);
    res.cpu_us_per_io_per_replica = lr.cpu * 1e6 / static_cast<double>(lr.ios) / r;
    res.user_us_per_io_per_replica = lr.user * 1e6 / static_cast<double>(lr.ios) / r;
    results.push_back(res);
    q.reset();
    (void)vol->close();
  }

  // ---- rebuild ----
  if (wanted("rebuild")) {
    std::vector<std::string> rf = {dir + "/engine_bench_rb0_" + std::to_string(getpid()),
                                   dir + "/engine_bench_rb1_" + std::to_string(getpid())};
    fill_files({rf[0]}, rebuild_size + (2U << 20U));
    fill_files({rf[1]}, rebuild_size + (2U << 20U));
    for (int loaded = 0; loaded < 2; ++loaded) {
      {
        // Replica 0 alone forms the volume; replica 1 is then new.
        auto reps = file_replicas({rf[0]}, 1, true);
        auto vol = value_or_exit(ReplicatedVolume::open(ReplicatedVolumeOptions{}, reps->bindings),
                                 "open volume");
        (void)vol->close();
      }
      auto reps0 = file_replicas({rf[0]}, 1, false);
      auto reps1 = file_replicas({rf[1]}, 1, true);
      std::vector<ReplicaBinding> b = {reps0->bindings[0], reps1->bindings[0]};
      ReplicatedVolumeOptions o;
      o.name = "rebuild";
      o.rebuild_chunk_bytes = static_cast<uint32_t>(parse_size(rebuild_chunk_s));
      o.rebuild_busy_percent = rebuild_busy_percent;
      auto t0 = Clock::now();
      auto vol = value_or_exit(ReplicatedVolume::open(o, b), "open volume");
      std::atomic<bool> stop{false};
      LoadResult lr;
      std::thread load;
      if (loaded != 0) {
        load = std::thread([&] {
          auto q = value_or_exit(open_bench_queue(*vol), "open queue");
          lr = run_load(*vol, *q, VolumeOp::kWrite, 32, 3600, &stop);
        });
      }
      (void)vol->wait_rebuild();
      double secs = std::chrono::duration<double>(Clock::now() - t0).count();
      stop = true;
      if (load.joinable()) {
        load.join();
      }
      RebuildProgress p = vol->status().rebuild;
      // NOLINTNEXTLINE(concurrency-mt-unsafe): nothing in this program calls setenv
      if (getenv("BENCH_DEBUG") != nullptr) {
        (void)std::fprintf(stderr, "engine_bench: rebuild %s: %llu steps, %llu waits (%.3f s)\n",
                           loaded != 0 ? "under load" : "idle",
                           static_cast<unsigned long long>(p.pieces),
                           static_cast<unsigned long long>(p.yields), p.yielded_seconds);
      }
      Result res{"rebuild",
                 loaded != 0 ? "full rebuild under 4K randwrite QD32" : "full rebuild idle", 2};
      res.mb_per_s = static_cast<double>(p.total_bytes) / secs / 1e6;
      if (loaded != 0) {
        res.iops = static_cast<double>(lr.ios) / lr.seconds;
        res.p50_us = lr.p50_us;
        res.p99_us = lr.p99_us;
      }
      results.push_back(res);
      (void)vol->close();
    }
    for (auto& f : rf) {
      ::unlink(f.c_str());
    }
  }
  for (auto& f : files) {
    ::unlink(f.c_str());
  }

  if (json) {
    nlohmann::json j;
    j["size_bytes"] = size;
    j["rebuild_size_bytes"] = rebuild_size;
    j["rebuild_chunk_bytes"] = parse_size(rebuild_chunk_s);
    j["rebuild_busy_percent"] = rebuild_busy_percent;
    j["runtime_s"] = runtime;
    j["rounds"] = rounds;
    j["mode"] = mode;
    j["reactors"] = reactors;
    j["reactor_poll_us"] = reactor_poll_us;
    j["reactor_poll_max_percent"] = reactor_poll_max_percent;
    for (const Result& r : results) {
      j["results"].push_back({{"scenario", r.scenario},
                              {"what", r.what},
                              {"replicas", r.replicas},
                              {"iops", r.iops},
                              {"mb_per_s", r.mb_per_s},
                              {"p50_us", r.p50_us},
                              {"p99_us", r.p99_us},
                              {"cpu_us_per_io_per_replica", r.cpu_us_per_io_per_replica},
                              {"user_us_per_io_per_replica", r.user_us_per_io_per_replica},
                              {"ratio_vs_fio", r.ratio},
                              {"iops_runs", r.runs}});
    }
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    std::printf("engine stores: %s\n", mode.c_str());
    std::printf("%-11s %-38s %2s %10s %9s %8s %8s %9s %9s %6s\n", "scenario", "what", "R", "IOPS",
                "MB/s", "p50 us", "p99 us", "cpu us/io", "user us", "x fio");
    for (const Result& r : results) {
      std::printf("%-11s %-38s %2u %10.0f %9.1f %8.1f %8.1f %9.2f %9.2f %6.2f\n",
                  r.scenario.c_str(), r.what.c_str(), r.replicas, r.iops, r.mb_per_s, r.p50_us,
                  r.p99_us, r.cpu_us_per_io_per_replica, r.user_us_per_io_per_replica, r.ratio);
    }
  }
  return 0;
} catch (const std::exception& e) {
  // Nothing should throw this far; if something does, say what instead of
  // letting std::terminate abort without a word.
  (void)std::fprintf(stderr, "engine_bench: error: %s\n", e.what());
  return 1;
}
