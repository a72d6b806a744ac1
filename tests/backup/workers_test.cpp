// Backup workers (BackupOptions::workers): chunks hashed and compressed on a
// pool of threads give the same backup as one thread - the same manifest
// bytes and the same chunk objects - for a snapshot mixing compressible,
// incompressible, duplicate and all-zero chunks, with checkpoints on the way.
#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <gtest/gtest.h>
#include <map>
#include <random>
#include <sstream>

#include "ublkvol/backup/backup_job.h"

#include "temp_dir.h"

namespace ublkvol::backup {
namespace {

using testing::TempDir;
constexpr uint64_t kChunks = 24;
constexpr uint64_t kBytes = kChunks * kChunkBytes;

class MemoryReader final : public SnapshotReader {
 public:
  explicit MemoryReader(const std::vector<std::byte>& bytes) : bytes_(bytes) {}
  Status read(uint64_t offset, std::span<std::byte> buffer) override {
    std::memcpy(buffer.data(), bytes_.data() + offset, buffer.size());
    return ok_status();
  }

 private:
  const std::vector<std::byte>& bytes_;
};

// Every file under `root`, relative name -> content.
std::map<std::string, std::string> files_of(const std::string& root) {
  std::map<std::string, std::string> out;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(root)) {
    if (!entry.is_regular_file() || entry.path().filename() == "lock") {
      continue;
    }
    std::ifstream in(entry.path(), std::ios::binary);
    std::stringstream content;
    content << in.rdbuf();
    out[std::filesystem::relative(entry.path(), root).string()] = content.str();
  }
  return out;
}

TEST(BackupWorkers, SameBackupForOneAndManyWorkers) {
  std::vector<std::byte> volume(kBytes);
  std::mt19937_64 random(17);
  BackupSource source;
  source.volume = "vol";
  source.snapshot = "s1";
  source.store_uuid = "uuid";
  source.snapshot_id = 3;
  source.size_bytes = kBytes;
  for (uint64_t c = 0; c < kChunks; ++c) {
    std::byte* chunk = volume.data() + c * kChunkBytes;
    const uint64_t mapped = (c % 4 + 1) * 256 * 1024;  // 256 KiB .. 1 MiB mapped
    for (uint64_t i = 0; i < mapped; ++i) {
      switch (c % 4) {
        case 0:  // incompressible: stored raw
          chunk[i] = static_cast<std::byte>(random());
          break;
        case 1:  // compressible
          chunk[i] = static_cast<std::byte>(i / 64 + c);
          break;
        case 2:  // the same in every such chunk: stored once
          chunk[i] = static_cast<std::byte>(i % 251);
          break;
        default:  // mapped but all zeros: holes, no entry
          break;
      }
    }
    source.mapped.emplace_back(c * kChunkBytes, mapped);
  }
  TempDir one;
  TempDir many;
  std::vector<BackupProgress> done;
  for (const auto& [dir, workers] : {std::pair<const TempDir*, unsigned>{&one, 1},
                                     std::pair<const TempDir*, unsigned>{&many, 4}}) {
    auto target = open_directory_target(dir->path());
    ASSERT_TRUE(target.ok()) << target.error().to_string();
    Repository repo(**target);
    MemoryReader reader(volume);
    BackupOptions options;
    options.name = "b";
    options.workers = workers;
    options.create_time = 1700000000;
    options.checkpoint_chunks = 5;
    std::vector<uint64_t> seen;
    BackupProgress last;
    options.on_progress = [&](const BackupProgress& p) {
      seen.push_back(p.chunks_done);
      last = p;
    };
    auto made = run_backup(repo, reader, source, options);
    ASSERT_TRUE(made.ok()) << made.error().to_string();
    EXPECT_EQ(made->entries.size(), kChunks / 4 * 3);
    // Progress in order, one step per chunk.
    ASSERT_EQ(seen.size(), kChunks);
    for (size_t i = 0; i < seen.size(); ++i) {
      EXPECT_EQ(seen[i], i + 1);
    }
    done.push_back(last);
  }
  EXPECT_EQ(done[0].chunks_written, done[1].chunks_written);
  EXPECT_EQ(done[0].chunks_reused, done[1].chunks_reused);
  EXPECT_EQ(done[1].chunks_reused, kChunks / 4 - 1);
  const auto a = files_of(one.path());
  const auto b = files_of(many.path());
  ASSERT_EQ(a.size(), b.size());
  EXPECT_TRUE(a.count("backups/b.manifest") == 1);
  for (const auto& [name, content] : a) {
    ASSERT_TRUE(b.count(name) == 1) << name << " only with one worker";
    EXPECT_TRUE(b.at(name) == content) << name << " differs";
  }
}

// ChunkEncoder (reused context and buffer) writes what encode_chunk writes.
TEST(BackupWorkers, EncoderMatchesEncodeChunk) {
  ChunkEncoder encoder;
  std::vector<std::byte> buffer;
  for (const uint32_t blocks : {512U, 3U, 100U}) {
    ChunkContent chunk;
    for (uint32_t b = 0; b < blocks; ++b) {
      chunk.set_block(b);
    }
    chunk.data.resize(uint64_t{blocks} * kBlockBytes);
    for (size_t i = 0; i < chunk.data.size(); ++i) {
      chunk.data[i] = static_cast<std::byte>(i * 7 / 300 + blocks);
    }
    const std::vector<std::byte> expected = encode_chunk(chunk);
    const size_t n = encoder.encode(chunk, buffer);
    ASSERT_EQ(n, expected.size()) << blocks;
    EXPECT_TRUE(std::equal(expected.begin(), expected.end(), buffer.begin())) << blocks;
  }
}

}  // namespace
}  // namespace ublkvol::backup
