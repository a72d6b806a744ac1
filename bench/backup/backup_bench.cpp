// backup_bench: backup and restore throughput of one DBS volume on a
// directory target (bench/backup_bench.sh runs it on tmpfs and on the disk
// beside dd/cp of the same bytes, docs/backup-format.md).
//
// In <dir>: a store file with volume "vol" of --size bytes filled with data
// (half of each 4 KiB block random, half a repeated byte: zstd shrinks it
// about 2:1, as real data often does), snapshot s1, a full backup to
// <dir>/target; then --changed-percent of the chunks rewritten, snapshot s2,
// an incremental backup; then a restore of the incremental into a new
// volume. Each phase: wall seconds, bytes of volume data, MiB/s, and CPU
// seconds per GiB (this process, all threads). Prints one JSON object.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>
#include <stdexcept>

#include "ublkvol/backup/store_backup.h"
#include "ublkvol/dbs/file_device.h"

#include "../common/process_usage.h"

namespace {

using namespace ublkvol;
using Json = nlohmann::json;
constexpr uint64_t kMiB = 1 << 20;

struct Phase {
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
  double cpu = bench::process_usage().cpu_s;

  Json finish(uint64_t bytes) const {
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const double cpu_s = bench::process_usage().cpu_s - cpu;
    const double gib = static_cast<double>(bytes) / static_cast<double>(1ULL << 30U);
    return {{"seconds", seconds},
            {"bytes", bytes},
            {"mib_per_s", seconds > 0 ? static_cast<double>(bytes) / kMiB / seconds : 0},
            {"cpu_s", cpu_s},
            {"cpu_s_per_gib", gib > 0 ? cpu_s / gib : 0}};
  }
};

// Any failure ends the run (main reports it).
[[noreturn]] void die(const std::string& what, const Error& e) {
  throw std::runtime_error(what + ": " + e.to_string());
}

template <typename T>
T check(Result<T> r, const std::string& what) {
  if (!r) {
    die(what, r.error());
  }
  return std::move(*r);
}

void check(const Status& s, const std::string& what) {
  if (!s) {
    die(what, s.error());
  }
}

// Fills [offset, offset + buffer.size()) with half-random, half-constant blocks.
void fill(std::span<std::byte> buffer, std::mt19937_64& rng) {
  for (size_t block = 0; block < buffer.size(); block += backup::kBlockBytes) {
    auto* words = reinterpret_cast<uint64_t*>(buffer.data() + block);
    for (size_t i = 0; i < backup::kBlockBytes / 16; ++i) {
      words[i] = rng();
    }
    std::memset(buffer.data() + block + backup::kBlockBytes / 2, static_cast<int>(rng() | 1U),
                backup::kBlockBytes / 2);
  }
}

}  // namespace

int main(int argc, char** argv) try {
  CLI::App app{"Backup/restore throughput of a DBS volume on a directory target"};
  std::string dir;
  uint64_t size_mib = 4096;
  unsigned changed_percent = 10;
  unsigned workers = 0;
  app.add_option("--dir", dir, "Scratch directory (store file and target; emptied after)")
      ->required();
  app.add_option("--size-mib", size_mib, "Volume size in MiB (default 4096)");
  app.add_option("--changed-percent", changed_percent,
                 "Chunks rewritten before the incremental backup (default 10)");
  app.add_option("--workers", workers,
                 "Threads hashing and compressing chunks (default 0 = one per CPU, at most 16)");
  CLI11_PARSE(app, argc, argv);
  const uint64_t size = size_mib * kMiB;
  const uint64_t chunks = size / backup::kChunkBytes;
  std::filesystem::create_directories(dir);

  dbs::FileDeviceOptions device_options;
  // Data twice (the full volume, then the copy the restore writes) + slack.
  device_options.create_size = 2 * size + size / 4 + 256 * kMiB;
  auto device = check(dbs::FileDevice::open(dir + "/store", device_options), "store file");
  check(dbs::Store::format(*device), "format");
  auto store = check(dbs::Store::open(*device), "open store");
  const auto volume = check(store->create_volume("vol", size), "create volume");

  auto* raw = static_cast<std::byte*>(std::aligned_alloc(4096, backup::kChunkBytes));
  const std::span<std::byte> buffer(raw, backup::kChunkBytes);
  std::mt19937_64 rng(17);
  for (uint64_t c = 0; c < chunks; ++c) {
    fill(buffer, rng);
    check(store->write(volume, c * backup::kChunkBytes, buffer), "write");
  }
  check(store->commit(), "commit");
  check(store->create_snapshot(volume, "s1"), "snapshot s1");

  auto target = check(backup::open_target(dir + "/target"), "target");
  backup::Repository repo(*target);
  Json out{{"size_bytes", size},
           {"changed_percent", changed_percent},
           {"dir", dir},
           {"workers", workers}};

  backup::BackupOptions options;
  options.name = "full";
  options.workers = workers;
  Phase full;
  check(backup::backup_snapshot(*store, repo, "vol", "s1", options), "full backup");
  out["full_backup"] = full.finish(size);

  const uint64_t every = changed_percent == 0 ? 0 : std::max<uint64_t>(1, 100 / changed_percent);
  uint64_t changed = 0;
  for (uint64_t c = 0; every != 0 && c < chunks; c += every) {
    fill(buffer, rng);
    check(store->write(volume, c * backup::kChunkBytes, buffer), "rewrite");
    ++changed;
  }
  check(store->commit(), "commit");
  check(store->create_snapshot(volume, "s2"), "snapshot s2");
  options.name = "incremental";
  options.parent = "full";
  Phase incremental;
  check(backup::backup_snapshot(*store, repo, "vol", "s2", options), "incremental backup");
  out["incremental_backup"] = incremental.finish(changed * backup::kChunkBytes);

  Phase restore;
  check(backup::restore_to_new_volume(*store, repo, "incremental", "restored", {}), "restore");
  out["restore"] = restore.finish(size);

  uint64_t target_bytes = 0;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(dir + "/target")) {
    if (entry.is_regular_file()) {
      target_bytes += entry.file_size();
    }
  }
  out["target_bytes"] = target_bytes;
  std::free(raw);
  check(store->close(), "close");
  (void)std::printf("%s\n", out.dump().c_str());
  return 0;
} catch (const std::exception& e) {
  (void)std::fprintf(stderr, "backup_bench: %s\n", e.what());
  return 1;
}
