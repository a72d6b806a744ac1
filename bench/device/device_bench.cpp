// device_bench: 4 KiB random read / write at a fixed queue depth through
// FileDevice, side by side with fio (ioengine=io_uring, direct=1) on the same
// file, same depth, same runtime. The device layer should be close to free:
// the goal is >= 0.95x fio's IOPS.
//
//   device_bench [--file /dev/shm/x] [--size-mib 512] [--runtime 5] [--qd 32]
//                [--sweep] [--json]
//
// --sweep also measures the FileDevice option variants (registered file on /
// off, registered buffers, SINGLE_ISSUER, wait and submit batching) so their
// effect can be reported.
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "ublkvol/dbs/file_device.h"

#include "../common/process_usage.h"

namespace {

using ublkvol::bench::process_usage;
using ublkvol::bench::Usage;
using ublkvol::dbs::FileDevice;
using ublkvol::dbs::FileDeviceOptions;
using ublkvol::dbs::IoOp;
using ublkvol::dbs::IoRequest;
using Clock = std::chrono::steady_clock;

struct Config {
  std::string file;  // default: /dev/shm/ublkvol-device-bench-<pid>
  uint64_t size_mib = 512;
  double runtime_s = 5;
  unsigned queue_depth = 32;
  bool sweep = false;
  bool json = false;
  bool keep_file = false;
  bool skip_fio = false;
  unsigned rounds = 3;
};

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

struct FreeDeleter {
  void operator()(std::byte* p) const { std::free(p); }
};

// xorshift64*: cheap, good enough to spread offsets.
struct Random {
  uint64_t state;
  uint64_t next() {
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    return state * 0x2545F4914F6CDD1DULL;
  }
};

struct Loop {
  FileDevice* device = nullptr;
  Random random{0x9E3779B97F4A7C15ULL};
  uint64_t blocks = 0;
  uint64_t completed = 0;
  uint64_t errors = 0;
  bool stopping = false;

  void start(IoRequest& request) {
    request.offset = (random.next() % blocks) * 4096;
    device->submit(request);
  }
};

void on_complete(IoRequest& request, int result) {
  auto* loop = static_cast<Loop*>(request.user_data);
  loop->completed++;
  if (result != 0) {
    loop->errors++;
  }
  if (!loop->stopping) {
    loop->start(request);
  }
}

// One timed run. CPU time and context switches count every thread of the
// process doing the I/O, io_uring's io-wq workers included (for fio: its
// whole process with its startup, from RUSAGE_CHILDREN: fio's own usr_cpu
// counts only the job thread). On a loaded machine
// IOPS swing with the CPU share the run gets; CPU per I/O shows the cost.
struct RunResult {
  double iops = 0;
  double cpu_us_per_io = 0;
  double ctx_per_io = 0;
};

struct Variant {
  std::string name;
  bool register_file;
  bool register_buffers;
  bool single_issuer = true;
  unsigned wait_batch = 0;
  unsigned submit_batch = FileDeviceOptions{}.submit_batch;
};

// Runs one timed workload through FileDevice.
RunResult run_device(const Config& config, IoOp op, const Variant& variant) {
  FileDeviceOptions options;
  options.queue_depth = config.queue_depth;
  options.register_file = variant.register_file;
  options.single_issuer = variant.single_issuer;
  options.wait_batch = variant.wait_batch;
  options.submit_batch = variant.submit_batch;
  auto opened = FileDevice::open(config.file, options);
  if (!opened.ok()) {
    std::cerr << "device_bench: " << opened.error().to_string() << "\n";
    // NOLINTNEXTLINE(concurrency-mt-unsafe): single-threaded benchmark
    std::exit(1);
  }
  FileDevice& device = **opened;
  const size_t pool_bytes = size_t{config.queue_depth} * 4096;
  std::unique_ptr<std::byte, FreeDeleter> pool(
      static_cast<std::byte*>(std::aligned_alloc(4096, pool_bytes)));
  std::memset(pool.get(), 0x5A, pool_bytes);
  if (variant.register_buffers) {
    std::vector<std::span<std::byte>> regions = {{pool.get(), pool_bytes}};
    auto status = device.register_buffers(regions);
    if (!status.ok()) {
      std::cerr << "device_bench: " << status.error().to_string() << "\n";
      // NOLINTNEXTLINE(concurrency-mt-unsafe): single-threaded benchmark
      std::exit(1);
    }
  }
  Loop loop{&device};
  loop.blocks = device.size_bytes() / 4096;
  std::vector<IoRequest> requests(config.queue_depth);
  for (unsigned i = 0; i < config.queue_depth; ++i) {
    requests[i].op = op;
    requests[i].length = 4096;
    requests[i].buffer = pool.get() + size_t{i} * 4096;
    requests[i].on_complete = &on_complete;
    requests[i].user_data = &loop;
    loop.start(requests[i]);
  }
  device.kick();
  const Usage usage_before = process_usage();
  auto start = Clock::now();
  auto deadline = start + std::chrono::duration<double>(config.runtime_s);
  uint64_t polls = 0;
  while (true) {
    device.poll(/*wait=*/true);
    if ((++polls & 15) == 0 && Clock::now() >= deadline) {
      break;
    }
  }
  double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  const Usage usage_after = process_usage();
  uint64_t completed = loop.completed;
  loop.stopping = true;
  while (device.in_flight() > 0) {
    device.poll(true);
  }
  // NOLINTNEXTLINE(concurrency-mt-unsafe): nothing in this program calls setenv
  if (std::getenv("DEVICE_BENCH_DEBUG") != nullptr) {
    const auto& c = device.counters();
    std::cerr << variant.name << ": polls " << polls << " submit calls " << c.submit_calls
              << " sqes " << c.sqes_submitted << " ("
              << static_cast<double>(c.sqes_submitted) / static_cast<double>(c.submit_calls)
              << " per call), waits " << c.waits << "\n";
  }
  if (loop.errors != 0) {
    std::cerr << "device_bench: " << loop.errors << " I/O errors\n";
    // NOLINTNEXTLINE(concurrency-mt-unsafe): single-threaded benchmark
    std::exit(1);
  }
  const auto ios = static_cast<double>(std::max<uint64_t>(completed, 1));
  return {static_cast<double>(completed) / elapsed,
          (usage_after.cpu_s - usage_before.cpu_s) * 1e6 / ios,
          (usage_after.switches - usage_before.switches) / ios};
}

// Runs fio on the same file (iops -1 if fio is missing/failed).
RunResult run_fio(const Config& config, IoOp op) {
  std::string rw = op == IoOp::kRead ? "randread" : "randwrite";
  std::string output = config.file + ".fio.json";
  std::string command = "fio --name=baseline --filename=" + config.file +
                        " --ioengine=io_uring --direct=1 --rw=" + rw +
                        " --bs=4k --iodepth=" + std::to_string(config.queue_depth) +
                        " --size=" + std::to_string(config.size_mib) +
                        "M --runtime=" + std::to_string(config.runtime_s) +
                        " --time_based --norandommap --randrepeat=0 --output-format=json"
                        " --output=" +
                        output + " >/dev/null 2>&1";
  const Usage before = process_usage(RUSAGE_CHILDREN);
  // NOLINTNEXTLINE(concurrency-mt-unsafe): fio runs from the single-threaded benchmark
  int rc = std::system(command.c_str());
  const Usage after = process_usage(RUSAGE_CHILDREN);
  if (rc != 0) {
    std::cerr << "device_bench: fio failed (exit " << rc << "): " << command << "\n";
    return {-1, 0, 0};
  }
  FILE* f = std::fopen(output.c_str(), "r");
  if (f == nullptr) {
    return {-1, 0, 0};
  }
  std::string text;
  char chunk[4096];
  size_t n = 0;
  while ((n = std::fread(chunk, 1, sizeof(chunk), f)) > 0) {
    text.append(chunk, n);
  }
  (void)std::fclose(f);
  ::unlink(output.c_str());
  auto parsed = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) {
    std::cerr << "device_bench: cannot parse fio output\n";
    return {-1, 0, 0};
  }
  const char* side = op == IoOp::kRead ? "read" : "write";
  const auto& job = parsed["jobs"][0];
  RunResult result;
  result.iops = job[side]["iops"].get<double>();
  const double ios = std::max(1.0, job[side]["total_ios"].get<double>());
  result.cpu_us_per_io = (after.cpu_s - before.cpu_s) * 1e6 / ios;
  result.ctx_per_io = (after.switches - before.switches) / ios;
  return result;
}

// Fills the file once so both engines read real data (tmpfs holes would
// read faster than pages).
void prepare_file(const Config& config) {
  FileDeviceOptions options;
  options.create_size = config.size_mib << 20;
  options.queue_depth = 32;
  auto opened = FileDevice::open(config.file, options);
  if (!opened.ok()) {
    std::cerr << "device_bench: " << opened.error().to_string() << "\n";
    // NOLINTNEXTLINE(concurrency-mt-unsafe): single-threaded benchmark
    std::exit(1);
  }
  constexpr size_t kChunk = 1 << 20;
  std::unique_ptr<std::byte, FreeDeleter> chunk(
      static_cast<std::byte*>(std::aligned_alloc(4096, kChunk)));
  std::memset(chunk.get(), 0xA5, kChunk);
  for (uint64_t offset = 0; offset < (config.size_mib << 20); offset += kChunk) {
    auto status = ublkvol::dbs::write_sync(**opened, offset, {chunk.get(), kChunk});
    if (!status.ok()) {
      std::cerr << "device_bench: " << status.error().to_string() << "\n";
      // NOLINTNEXTLINE(concurrency-mt-unsafe): single-threaded benchmark
      std::exit(1);
    }
  }
}

}  // namespace

int main(int argc, char** argv) try {
  Config config;
  CLI::App app{"4 KiB random I/O through FileDevice vs fio on the same file"};
  app.add_option(
      "--file", config.file,
      "File to benchmark on (created, filled; default /dev/shm/ublkvol-device-bench-PID)");
  app.add_option("--size-mib", config.size_mib, "File size in MiB")->check(CLI::Range(1, 1 << 20));
  app.add_option("--runtime", config.runtime_s, "Seconds per measurement")
      ->check(CLI::Range(0.1, 3600.0));
  app.add_option("--qd", config.queue_depth, "Queue depth")->check(CLI::Range(1, 4096));
  app.add_flag("--sweep", config.sweep, "Also measure registered file/buffer variants");
  app.add_flag("--json", config.json, "Print JSON instead of a table");
  app.add_flag("--keep-file", config.keep_file, "Do not delete the file afterwards");
  app.add_flag("--skip-fio", config.skip_fio, "Only the device runs (for profiling)");
  app.add_option("--rounds", config.rounds,
                 "Alternate fio and device runs this many times; report medians")
      ->check(CLI::Range(1, 100));
  CLI11_PARSE(app, argc, argv);
  if (config.file.empty()) {
    // Per process: two runs on one machine must not share a file.
    config.file = "/dev/shm/ublkvol-device-bench-" + std::to_string(::getpid());
  }

  prepare_file(config);
  std::vector<Variant> variants = {{"default (registered file)", true, false}};
  if (config.sweep) {
    variants.push_back({"plain fd", false, false});
    variants.push_back({"registered file+buffers", true, true});
    variants.push_back({"no SINGLE_ISSUER/DEFER_TASKRUN", true, false, false});
    variants.push_back({"wait batch 8", true, false, true, 8});
    variants.push_back({"wait batch 16", true, false, true, 16});
    variants.push_back({"submit batch 1", true, false, true, 0, 1});
    variants.push_back({"submit at poll only", true, false, true, 0, 0});
  }
  nlohmann::json results = nlohmann::json::array();
  // fio and the device runs alternate, round after round, so that load from
  // anything else on the machine hits both alike; medians are reported.
  for (IoOp op : {IoOp::kRead, IoOp::kWrite}) {
    std::vector<RunResult> fio_runs;
    std::vector<std::vector<RunResult>> device_runs(variants.size());
    for (unsigned round = 0; round < config.rounds; ++round) {
      fio_runs.push_back(config.skip_fio ? RunResult{} : run_fio(config, op));
      for (size_t v = 0; v < variants.size(); ++v) {
        device_runs[v].push_back(run_device(config, op, variants[v]));
      }
    }
    auto median_of = [](const std::vector<RunResult>& runs, double RunResult::*field) {
      std::vector<double> values;
      values.reserve(runs.size());
      for (const auto& run : runs) {
        values.push_back(run.*field);
      }
      return median(values);
    };
    auto iops_list = [](const std::vector<RunResult>& runs) {
      std::vector<double> values;
      values.reserve(runs.size());
      for (const auto& run : runs) {
        values.push_back(run.iops);
      }
      return values;
    };
    double fio_iops = median_of(fio_runs, &RunResult::iops);
    for (size_t v = 0; v < variants.size(); ++v) {
      double iops = median_of(device_runs[v], &RunResult::iops);
      results.push_back(
          {{"workload", std::string("4k rand") + (op == IoOp::kRead ? "read" : "write")},
           {"variant", variants[v].name},
           {"qd", config.queue_depth},
           {"rounds", config.rounds},
           {"device_iops", iops},
           {"fio_iops", fio_iops},
           {"device_runs", iops_list(device_runs[v])},
           {"fio_runs", iops_list(fio_runs)},
           {"device_cpu_us_per_io", median_of(device_runs[v], &RunResult::cpu_us_per_io)},
           {"fio_cpu_us_per_io", median_of(fio_runs, &RunResult::cpu_us_per_io)},
           {"device_ctx_per_io", median_of(device_runs[v], &RunResult::ctx_per_io)},
           {"fio_ctx_per_io", median_of(fio_runs, &RunResult::ctx_per_io)},
           {"ratio", fio_iops > 0 ? iops / fio_iops : 0.0}});
    }
  }
  if (!config.keep_file) {
    ::unlink(config.file.c_str());
  }
  if (config.json) {
    nlohmann::json out = {{"benchmark", "device_bench"},
                          {"file", config.file},
                          {"size_mib", config.size_mib},
                          {"runtime_s", config.runtime_s},
                          {"results", results}};
    std::cout << out.dump(2) << "\n";
    return 0;
  }
  std::printf(
      "file %s, %llu MiB, QD %u, %.1f s per run, median of %u alternating rounds\n"
      "(CPU and context switches: all threads of the process, io_uring workers included)\n",
      config.file.c_str(), static_cast<unsigned long long>(config.size_mib), config.queue_depth,
      config.runtime_s, config.rounds);
  std::printf("%-14s %-30s %11s %11s %6s %17s %15s\n", "workload", "variant", "device IOPS",
              "fio IOPS", "ratio", "CPU us/IO dev/fio", "ctxsw/IO d/f");
  for (const auto& row : results) {
    std::printf("%-14s %-30s %11.0f %11.0f %6.3f %8.2f/%-8.2f %7.2f/%-7.2f\n",
                row["workload"].get<std::string>().c_str(),
                row["variant"].get<std::string>().c_str(), row["device_iops"].get<double>(),
                row["fio_iops"].get<double>(), row["ratio"].get<double>(),
                row["device_cpu_us_per_io"].get<double>(), row["fio_cpu_us_per_io"].get<double>(),
                row["device_ctx_per_io"].get<double>(), row["fio_ctx_per_io"].get<double>());
  }
  return 0;
} catch (const std::exception& e) {
  // Nothing should throw this far; if something does, say what instead of
  // letting std::terminate abort without a word.
  (void)std::fprintf(stderr, "device_bench: error: %s\n", e.what());
  return 1;
}
