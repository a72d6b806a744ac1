// dbs_bench: the Direct Block Store on real files, side by side with fio.
//
// Per directory (default /dev/shm = tmpfs and /var/tmp = disk):
//   - 4 KiB random read and write at QD 32 through DBS on mapped blocks, then
//     fio (ioengine=io_uring, direct=1, same file, same QD) - target >= 0.9x;
//   - allocating writes (first writes to unmapped blocks of a new thin volume);
//   - first writes after a snapshot (redirect-on-write into the new head).
// Once (on --meta-dir): a store with >= 1M extents mapped at 1 MiB extents on
// a sparse file: in-memory metadata (store accounting and RSS growth), open
// time with 10 snapshots, snapshot create time on a 1 TiB vs a 1 GiB volume.
//
// Prints a table; --json prints the same figures as JSON.
#include <malloc.h>
#include <sys/resource.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "ublkvol/dbs/file_device.h"
#include "ublkvol/dbs/format.h"
#include "ublkvol/dbs/store.h"

#include "../common/process_usage.h"
#include "../common/stale_scratch.h"

namespace {

using namespace ublkvol;
using namespace ublkvol::dbs;
using Clock = std::chrono::steady_clock;
using ublkvol::bench::process_usage;
using ublkvol::bench::remove_stale_scratch;
using ublkvol::bench::Usage;

constexpr uint64_t kBlock = 4096;
constexpr uint64_t kMiB = 1 << 20;

struct Config {
  std::vector<std::string> dirs = {"/dev/shm", "/var/tmp"};
  // tmpfs: the 1M-extent store writes 4 GiB (one block per extent).
  std::string meta_dir = "/dev/shm";
  uint64_t volume_mib = 512;
  double runtime_s = 3;
  int rounds = 3;
  unsigned queue_depth = 32;
  uint64_t meta_extents = 1 << 20;
  bool skip_fio = false;
  bool skip_meta = false;
  bool json = false;
  unsigned submit_batch = FileDeviceOptions{}.submit_batch;
};

[[noreturn]] void die(const std::string& what) {
  std::cerr << "dbs_bench: " << what << "\n";
  // NOLINTNEXTLINE(concurrency-mt-unsafe): single-threaded benchmark
  std::exit(1);
}

template <typename T>
T must(Result<T> result, const char* what) {
  if (!result.ok()) {
    die(std::string(what) + ": " + result.error().to_string());
  }
  return std::move(result.value());
}

void must(const Status& status, const char* what) {
  if (!status.ok()) {
    die(std::string(what) + ": " + status.error().to_string());
  }
}

struct AlignedFree {
  void operator()(std::byte* p) const { std::free(p); }
};
using Aligned = std::unique_ptr<std::byte, AlignedFree>;
Aligned aligned(size_t bytes) {
  Aligned p(static_cast<std::byte*>(std::aligned_alloc(4096, bytes)));
  std::memset(p.get(), 0x5A, bytes);
  return p;
}

// One timed run: IOPS and CPU microseconds per I/O.
struct RunResult {
  double iops = 0;
  double cpu_us_per_io = 0;
};

RunResult run_result(double ios, double seconds, const Usage& before, const Usage& after) {
  ios = std::max(ios, 1.0);
  return {ios / seconds, (after.cpu_s - before.cpu_s) * 1e6 / ios};
}

uint64_t rss_bytes() {
  malloc_trim(0);  // count what the process holds, not what malloc caches
  std::ifstream statm("/proc/self/statm");
  uint64_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
}

// QD-deep random 4 KiB I/O on [0, span_blocks) of a volume for `seconds`.
class RandomRunner {
 public:
  RandomRunner(Store& store, VolumeId volume, StoreOp op, uint64_t span_blocks, unsigned qd)
      : store_(store), volume_(volume), op_(op), span_(span_blocks), slots_(qd) {
    for (auto& slot : slots_) {
      slot.buffer = aligned(kBlock);
      slot.runner = this;
    }
  }

  RunResult run(double seconds) {
    const Usage usage_before = process_usage(RUSAGE_SELF);
    deadline_ = Clock::now() +
                std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
    const auto start = Clock::now();
    for (auto& slot : slots_) {
      issue(slot);
    }
    store_.kick();
    while (store_.in_flight() > 0) {
      store_.poll(true);
    }
    const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    const Usage usage_after = process_usage(RUSAGE_SELF);
    if (errors_ > 0) {
      die(std::to_string(errors_) + " I/O errors during the benchmark");
    }
    return run_result(static_cast<double>(completed_), elapsed, usage_before, usage_after);
  }

 private:
  struct Slot {
    StoreIo io;
    Aligned buffer;
    RandomRunner* runner = nullptr;
  };

  uint64_t next_block() {
    rng_ ^= rng_ << 13;
    rng_ ^= rng_ >> 7;
    rng_ ^= rng_ << 17;
    return rng_ % span_;
  }

  void issue(Slot& slot) {
    slot.io = StoreIo{};
    slot.io.op = op_;
    slot.io.volume = volume_;
    slot.io.offset = next_block() * kBlock;
    slot.io.length = kBlock;
    slot.io.buffer = slot.buffer.get();
    slot.io.user_data = &slot;
    slot.io.on_complete = [](StoreIo& io, int result) {
      auto& s = *static_cast<Slot*>(io.user_data);
      RandomRunner& r = *s.runner;
      if (result < 0) {
        ++r.errors_;
      }
      ++r.completed_;
      if (Clock::now() < r.deadline_) {
        r.issue(s);
      }
    };
    store_.submit(slot.io);
  }

  Store& store_;
  VolumeId volume_;
  StoreOp op_;
  uint64_t span_;
  std::vector<Slot> slots_;
  Clock::time_point deadline_;
  uint64_t completed_ = 0;
  uint64_t errors_ = 0;
  uint64_t rng_ = 0x9E3779B97F4A7C15ULL;
};

RunResult run_fio(const std::string& file, uint64_t offset, uint64_t size_bytes, bool write,
                  const Config& config) {
  const std::string output = file + ".fio.json";
  const std::string command =
      "fio --name=baseline --filename=" + file + " --offset=" + std::to_string(offset) +
      " --ioengine=io_uring --direct=1 --rw=" + (write ? "randwrite" : "randread") +
      " --bs=4k --iodepth=" + std::to_string(config.queue_depth) +
      " --size=" + std::to_string(size_bytes) +
      // Milliseconds: a whole-second cast made --runtime 0.5 ask fio for 0 s.
      " --runtime=" + std::to_string(std::llround(config.runtime_s * 1000)) + "ms" +
      " --time_based --norandommap --randrepeat=0 --output-format=json --output=" + output +
      " >/dev/null 2>&1";
  const Usage before = process_usage(RUSAGE_CHILDREN);
  // NOLINTNEXTLINE(concurrency-mt-unsafe): fio runs from the single-threaded benchmark
  if (std::system(command.c_str()) != 0) {
    std::cerr << "dbs_bench: fio failed: " << command << "\n";
    return {-1, 0};
  }
  const Usage after = process_usage(RUSAGE_CHILDREN);
  std::ifstream in(output);
  auto parsed = nlohmann::json::parse(in, nullptr, false);
  ::unlink(output.c_str());
  if (parsed.is_discarded()) {
    std::cerr << "dbs_bench: cannot parse fio's output " << output << "\n";
    return {-1, 0};
  }
  const auto& side = parsed["jobs"][0][write ? "write" : "read"];
  return run_result(side["total_ios"].get<double>(), side["runtime"].get<double>() / 1e3, before,
                    after);
}

std::unique_ptr<FileDevice> open_file(const std::string& path, uint64_t create_size,
                                      unsigned submit_batch = FileDeviceOptions{}.submit_batch) {
  FileDeviceOptions options;
  options.submit_batch = submit_batch;
  options.queue_depth = 128;
  options.create_size = create_size;
  return must(FileDevice::open(path, options), "open file");
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values.empty() ? 0 : values[values.size() / 2];
}

std::vector<double> field_of(const std::vector<RunResult>& runs, double RunResult::*field) {
  std::vector<double> values;
  values.reserve(runs.size());
  for (const auto& run : runs) {
    values.push_back(run.*field);
  }
  return values;
}

// Maps every block of `volume` with 1 MiB writes.
void fill_volume(Store& store, VolumeId volume, uint64_t volume_bytes) {
  Aligned chunk = aligned(kMiB);
  for (uint64_t offset = 0; offset < volume_bytes; offset += kMiB) {
    must(store.write(volume, offset, {chunk.get(), kMiB}), "fill");
  }
}

// Random 4 KiB first writes into a fresh thin volume, then random first
// writes after a snapshot of a fully written volume (redirect-on-write), on a
// new store file opened with `order`. Figures go to `row` under `suffix`.
void bench_allocating(const std::string& dir, const Config& config,
                      OpenOptions::MappingDataOrder order, const std::string& suffix,
                      nlohmann::json& row) {
  const std::string file = dir + "/dbs_bench_alloc_" + std::to_string(::getpid()) + ".img";
  ::unlink(file.c_str());
  const uint64_t volume_bytes = config.volume_mib * kMiB;
  const uint64_t blocks = volume_bytes / kBlock;
  {
    auto device = open_file(file, 3 * volume_bytes + 128 * kMiB, config.submit_batch);
    must(Store::format(*device, FormatOptions{}), "format");
    OpenOptions open_options;
    open_options.mapping_data_order = order;
    auto store = must(Store::open(*device, open_options), "open store");
    const VolumeId thin = must(store->create_volume("thin", volume_bytes), "create thin");
    row["dbs_alloc_write" + suffix + "_iops"] =
        RandomRunner(*store, thin, StoreOp::kWrite, blocks, config.queue_depth)
            .run(config.runtime_s / 2)
            .iops;
    row["alloc_extents_allocated" + suffix] =
        must(store->volume_info(thin), "info").allocated_bytes / store->stats().extent_bytes;
    const VolumeId full = must(store->create_volume("full", volume_bytes), "create volume");
    fill_volume(*store, full, volume_bytes);
    must(store->create_snapshot(full, "snap"), "snapshot");
    row["dbs_write_after_snapshot" + suffix + "_iops"] =
        RandomRunner(*store, full, StoreOp::kWrite, blocks, config.queue_depth)
            .run(config.runtime_s / 2)
            .iops;
    must(store->commit(), "commit");
    row["check_problems" + suffix] = store->check().size();
  }
  ::unlink(file.c_str());
}

nlohmann::json bench_dir(const std::string& dir, const Config& config) {
  // Per process: two benchmark runs on one machine must not share a file.
  const std::string file = dir + "/dbs_bench_" + std::to_string(::getpid()) + ".img";
  ::unlink(file.c_str());
  const uint64_t volume_bytes = config.volume_mib * kMiB;
  const uint64_t file_bytes = 2 * volume_bytes + 128 * kMiB;
  nlohmann::json row;
  row["dir"] = dir;
  row["volume_bytes"] = volume_bytes;
  {
    auto device = open_file(file, file_bytes, config.submit_batch);
    FormatOptions format;
    must(Store::format(*device, format), "format");
    auto store = must(Store::open(*device), "open store");
    const VolumeId volume = must(store->create_volume("mapped", volume_bytes), "create volume");
    // Map every block, commit.
    fill_volume(*store, volume, volume_bytes);
    must(store->commit(), "commit");
    const uint64_t blocks = volume_bytes / kBlock;
    // The volume's extents were allocated in order from physical extent 0:
    // fio runs on exactly those bytes of the file (so it cannot damage the
    // store's metadata and the runs can alternate, round by round, to even
    // out load from other processes). Medians are reported.
    format::Superblock sb{};
    {
      Aligned block = aligned(kBlock);
      must(read_sync(*device, 0, {block.get(), kBlock}), "read superblock");
      std::memcpy(&sb, block.get(), sizeof(sb));
    }
    const uint64_t data_offset = sb.data_start * kBlock;
    std::vector<RunResult> dbs_read, dbs_write, fio_read, fio_write;
    for (int round = 0; round < config.rounds; ++round) {
      dbs_read.push_back(RandomRunner(*store, volume, StoreOp::kRead, blocks, config.queue_depth)
                             .run(config.runtime_s));
      if (!config.skip_fio) {
        fio_read.push_back(run_fio(file, data_offset, volume_bytes, false, config));
      }
      dbs_write.push_back(RandomRunner(*store, volume, StoreOp::kWrite, blocks, config.queue_depth)
                              .run(config.runtime_s));
      if (!config.skip_fio) {
        fio_write.push_back(run_fio(file, data_offset, volume_bytes, true, config));
      }
    }
    // A failed fio run (iops < 0, reported on stderr) is left out and
    // counted; with none left the row has no fio figure and no ratio.
    auto record = [&](const std::string& name, std::vector<RunResult> runs) {
      const auto failed = std::erase_if(runs, [](const RunResult& r) { return r.iops < 0; });
      if (failed != 0) {
        row[name + "_failed_runs"] = failed;
      }
      if (runs.empty()) {
        return;
      }
      row[name + "_iops"] = median(field_of(runs, &RunResult::iops));
      row[name + "_runs"] = field_of(runs, &RunResult::iops);
      row[name + "_cpu_us_per_io"] = median(field_of(runs, &RunResult::cpu_us_per_io));
    };
    record("dbs_randread", dbs_read);
    record("dbs_randwrite", dbs_write);
    if (!config.skip_fio) {
      record("fio_randread", fio_read);
      record("fio_randwrite", fio_write);
      auto ratio = [&](const std::string& dbs, const std::string& fio, const char* name) {
        if (row.contains(fio + "_iops")) {
          row[name] = row[dbs + "_iops"].get<double>() / row[fio + "_iops"].get<double>();
        }
      };
      ratio("dbs_randread", "fio_randread", "read_ratio");
      ratio("dbs_randwrite", "fio_randwrite", "write_ratio");
    }
    must(store->commit(), "commit");
    row["check_problems"] = store->check().size();
  }
  ::unlink(file.c_str());
  // Allocating writes and first writes after a snapshot, once per way of
  // ordering their data before the journal record that maps them; each on a
  // fresh store, so neither inherits the other's freed or discarded extents.
  bench_allocating(dir, config, OpenOptions::MappingDataOrder::kFlushBeforeRecord, "", row);
  bench_allocating(dir, config, OpenOptions::MappingDataOrder::kFuaData, "_fua", row);
  return row;
}

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

nlohmann::json bench_metadata(const Config& config) {
  const std::string file =
      config.meta_dir + "/dbs_bench_meta_" + std::to_string(::getpid()) + ".img";
  ::unlink(file.c_str());
  const uint64_t extents = config.meta_extents;
  const uint64_t volume_bytes = extents * kMiB;
  nlohmann::json row;
  row["dir"] = config.meta_dir;
  row["extents_written"] = extents;
  // Data for `extents` 1 MiB extents plus metadata (sparse: only written
  // blocks take space).
  const uint64_t file_bytes = volume_bytes + volume_bytes / 8 + 512 * kMiB;
  auto device = open_file(file, file_bytes);
  FormatOptions format;
  format.max_volumes = 64;
  must(Store::format(*device, format), "format");
  const uint64_t rss_before = rss_bytes();
  auto store = must(Store::open(*device), "open store");
  const VolumeId big = must(store->create_volume("big", volume_bytes), "create 1 TiB volume");
  {
    // One 4 KiB write per extent, QD 32 - the minimum that maps the extent.
    struct Writer {
      Store* store;
      VolumeId volume;
      uint64_t next = 0, total = 0, done = 0;
      std::vector<StoreIo> ios;
      Aligned buffer = aligned(kBlock);
      void issue(StoreIo& io) {
        io = StoreIo{};
        io.op = StoreOp::kWrite;
        io.volume = volume;
        io.offset = next++ * kMiB;
        io.length = kBlock;
        io.buffer = buffer.get();
        io.user_data = this;
        io.on_complete = [](StoreIo& completed, int result) {
          auto& w = *static_cast<Writer*>(completed.user_data);
          if (result < 0) {
            die("write failed while mapping extents");
          }
          ++w.done;
          if (w.next < w.total) {
            w.issue(completed);
          }
        };
        store->submit(io);
      }
    } writer{store.get(), big, 0, extents, 0, std::vector<StoreIo>(32), aligned(kBlock)};
    const auto map_start = Clock::now();
    for (auto& io : writer.ios) {
      writer.issue(io);
    }
    while (store->in_flight() > 0) {
      store->poll(true);
    }
    // Every write allocated an extent; with journal_mappings each completed
    // after a (batched) mapping commit, so this is the allocating path's rate.
    row["map_extents_s"] = seconds_since(map_start);
  }
  // The mappings are in the journal already: this commit only flushes.
  const auto commit_start = Clock::now();
  must(store->commit(), "commit");
  row["commit_after_mapping_s"] = seconds_since(commit_start);
  const StoreStats stats = store->stats();
  row["mapped_extents"] = stats.mapped_extents;
  row["metadata_memory_bytes"] = stats.metadata_memory_bytes;
  row["rss_growth_bytes"] = rss_bytes() - rss_before;
  const double tb = static_cast<double>(stats.mapped_extents) * kMiB / 1e12;
  row["metadata_mb_per_tb"] = static_cast<double>(stats.metadata_memory_bytes) / 1e6 / tb;
  row["rss_mb_per_tb"] = static_cast<double>(rss_bytes() - rss_before) / 1e6 / tb;

  // Snapshot create: 1 TiB volume vs 1 GiB volume (both with data written).
  const VolumeId small = must(store->create_volume("small", 1024 * kMiB), "create 1 GiB");
  Aligned block = aligned(kBlock);
  for (uint64_t i = 0; i < 1024; ++i) {
    must(store->write(small, i * kMiB, {block.get(), kBlock}), "write small");
  }
  must(store->commit(), "commit");
  std::vector<double> big_times, small_times;
  for (int i = 0; i < 10; ++i) {
    must(store->write(big, static_cast<uint64_t>(i) * kMiB, {block.get(), kBlock}), "write");
    auto t = Clock::now();
    must(store->create_snapshot(big, "s" + std::to_string(i)), "snapshot big");
    big_times.push_back(seconds_since(t));
    t = Clock::now();
    must(store->create_snapshot(small, "s" + std::to_string(i)), "snapshot small");
    small_times.push_back(seconds_since(t));
  }
  std::sort(big_times.begin(), big_times.end());
  std::sort(small_times.begin(), small_times.end());
  row["snapshot_create_1tib_ms"] = big_times[big_times.size() / 2] * 1e3;
  row["snapshot_create_1gib_ms"] = small_times[small_times.size() / 2] * 1e3;
  must(store->delete_volume(small), "delete small");  // leaves the 10 snapshots of `big`
  store.reset();
  device.reset();

  // Open time with the 10 snapshots (checkpoint + journal replay).
  auto reopened_device = open_file(file, 0);
  const auto open_start = Clock::now();
  auto reopened = must(Store::open(*reopened_device), "reopen");
  row["open_time_s"] = seconds_since(open_start);
  row["snapshots"] = reopened->list_all_snapshots().size();
  reopened.reset();
  reopened_device.reset();
  ::unlink(file.c_str());
  return row;
}

}  // namespace

// Whether a fio baseline run failed: the comparison is incomplete, so the
// benchmark exits 1 (after printing what it has).
bool fio_failed(const nlohmann::json& result) {
  for (const auto& row : result["io"]) {
    if (row.contains("fio_randread_failed_runs") || row.contains("fio_randwrite_failed_runs")) {
      return true;
    }
  }
  return false;
}

int main(int argc, char** argv) try {
  Config config;
  CLI::App app{"Direct Block Store benchmark (vs fio on the same file)"};
  app.add_option("--dirs", config.dirs, "Directories for the store files (tmpfs, disk)");
  app.add_option("--meta-dir", config.meta_dir, "Directory for the 1M-extent sparse store");
  app.add_option("--volume-mib", config.volume_mib, "Volume size for the IOPS runs");
  app.add_option("--runtime", config.runtime_s, "Seconds per IOPS run");
  app.add_option("--rounds", config.rounds, "Alternating DBS/fio rounds (medians reported)");
  app.add_option("--qd", config.queue_depth, "Queue depth");
  app.add_option("--meta-extents", config.meta_extents, "Extents to map for the memory figure");
  app.add_flag("--skip-fio", config.skip_fio, "Do not run fio");
  app.add_option("--submit-batch", config.submit_batch,
                 "FileDeviceOptions::submit_batch for the IOPS runs (0 = submit at poll only)");
  app.add_flag("--skip-meta", config.skip_meta, "Skip the 1M-extent metadata part");
  app.add_flag("--json", config.json, "Print JSON instead of a table");
  CLI11_PARSE(app, argc, argv);

  nlohmann::json result;
  result["queue_depth"] = config.queue_depth;
  result["runtime_s"] = config.runtime_s;
  for (const auto& dir : config.dirs) {
    remove_stale_scratch(dir, "dbs_bench_", "dbs_bench");
  }
  remove_stale_scratch(config.meta_dir, "dbs_bench_", "dbs_bench");
  for (const auto& dir : config.dirs) {
    result["io"].push_back(bench_dir(dir, config));
  }
  if (!config.skip_meta) {
    result["metadata"] = bench_metadata(config);
  }
  if (config.json) {
    std::cout << result.dump(2) << "\n";
    return fio_failed(result) ? 1 : 0;
  }
  std::printf("4 KiB random I/O, QD %u, %g s per run, median of %d alternating rounds\n",
              config.queue_depth, config.runtime_s, config.rounds);
  std::printf(
      "(CPU: microseconds per I/O, all threads incl. io_uring workers; fio: its whole\n"
      " process with startup)\n");
  std::printf("%-10s %-34s %12s %12s %7s %17s\n", "dir", "workload", "DBS IOPS", "fio IOPS",
              "ratio", "CPU us/IO DBS/fio");
  for (const auto& row : result["io"]) {
    const std::string dir = row["dir"];
    auto line = [&](const char* name, const std::string& dbs, const std::string& fio,
                    const char* ratio) {
      std::printf("%-10s %-34s %12.0f", dir.c_str(), name, row[dbs + "_iops"].get<double>());
      if (!fio.empty() && row.contains(fio + "_iops")) {
        std::printf(" %12.0f %7.2f %8.2f/%-8.2f\n", row[fio + "_iops"].get<double>(),
                    row[ratio].get<double>(), row[dbs + "_cpu_us_per_io"].get<double>(),
                    row[fio + "_cpu_us_per_io"].get<double>());
      } else {
        std::printf(" %12s %7s\n", "-", "-");
      }
    };
    line("randread (mapped)", "dbs_randread", "fio_randread", "read_ratio");
    line("randwrite (mapped, in place)", "dbs_randwrite", "fio_randwrite", "write_ratio");
    line("randwrite (allocating, thin)", "dbs_alloc_write", "", nullptr);
    line("randwrite (first after snapshot)", "dbs_write_after_snapshot", "", nullptr);
    line("  the same, FUA data: allocating", "dbs_alloc_write_fua", "", nullptr);
    line("  the same, FUA data: after snapshot", "dbs_write_after_snapshot_fua", "", nullptr);
  }
  if (result.contains("metadata")) {
    const auto& m = result["metadata"];
    std::printf("\nmetadata (%s, %llu extents of 1 MiB mapped)\n",
                m["dir"].get<std::string>().c_str(),
                static_cast<unsigned long long>(m["mapped_extents"].get<uint64_t>()));
    std::printf("  in-memory metadata (store accounting) %10.1f MB per TB\n",
                m["metadata_mb_per_tb"].get<double>());
    std::printf("  process RSS growth                    %10.1f MB per TB\n",
                m["rss_mb_per_tb"].get<double>());
    std::printf("  mapping them (one 4 KiB write each)   %10.3f s\n",
                m["map_extents_s"].get<double>());
    std::printf("  FLUSH after that (mappings journaled) %10.3f s\n",
                m["commit_after_mapping_s"].get<double>());
    std::printf("  open time with %llu snapshots          %10.3f s\n",
                static_cast<unsigned long long>(m["snapshots"].get<uint64_t>()),
                m["open_time_s"].get<double>());
    std::printf("  snapshot create, 1 TiB volume         %10.3f ms (median of 10)\n",
                m["snapshot_create_1tib_ms"].get<double>());
    std::printf("  snapshot create, 1 GiB volume         %10.3f ms (median of 10)\n",
                m["snapshot_create_1gib_ms"].get<double>());
  }
  return fio_failed(result) ? 1 : 0;
} catch (const std::exception& e) {
  // Nothing should throw this far; if something does, say what instead of
  // letting std::terminate abort without a word.
  (void)std::fprintf(stderr, "dbs_bench: error: %s\n", e.what());
  return 1;
}
