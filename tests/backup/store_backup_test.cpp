// Backups of DBS snapshots on real files (an O_DIRECT store file) to each
// kind of target - a directory, and S3 (a real s3rver on loopback): the
// layer-map queries, full + incremental round trips (byte-identical, chunk
// counts from the changed blocks), corruption found by verify and restore,
// an interrupted backup resuming, delete + GC. The suite is parameterised by
// the target; everything but the target is the same.
#include "ublkvol/backup/store_backup.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <functional>
#include <gtest/gtest.h>

#include "ublkvol/backup/gc.h"
#include "ublkvol/dbs/file_device.h"

#include "s3_server.h"
#include "temp_dir.h"

namespace ublkvol::backup {
namespace {

using testing::S3Server;
using testing::TempDir;
constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kVolumeBytes = 64 * kMiB;

// 4 KiB-aligned bytes for O_DIRECT.
struct Aligned {
  explicit Aligned(size_t n)
      : bytes(static_cast<std::byte*>(std::aligned_alloc(4096, n)), &std::free), size(n) {}
  std::span<std::byte> span() { return {bytes.get(), size}; }
  std::unique_ptr<std::byte, decltype(&std::free)> bytes;
  size_t size;
};

enum class TargetKind { kDirectory, kS3 };

std::string kind_name(const ::testing::TestParamInfo<TargetKind>& info) {
  return info.param == TargetKind::kDirectory ? "Directory" : "S3";
}

// A put that fails (as a crash would) when the hook says so, before the
// object reaches the wrapped target: the same on every kind of target.
class FaultyTarget final : public Target {
 public:
  using Hook = std::function<Status(const std::string& key)>;
  FaultyTarget(std::unique_ptr<Target> inner, Hook hook)
      : inner_(std::move(inner)), hook_(std::move(hook)) {}
  [[nodiscard]] std::string describe() const override { return inner_->describe(); }
  [[nodiscard]] Result<bool> exists(const std::string& key) override { return inner_->exists(key); }
  Status put(const std::string& key, std::span<const std::byte> data) override {
    if (hook_) {
      UBLKVOL_TRY(hook_(key));
    }
    return inner_->put(key, data);
  }
  [[nodiscard]] Result<std::vector<std::byte>> get(const std::string& key) override {
    return inner_->get(key);
  }
  [[nodiscard]] Result<std::vector<std::string>> list(const std::string& prefix) override {
    return inner_->list(prefix);
  }
  Status remove(const std::string& key) override { return inner_->remove(key); }
  [[nodiscard]] Result<std::unique_ptr<TargetLock>> lock(bool exclusive) override {
    return inner_->lock(exclusive);
  }
  Status remove_temporaries() override { return inner_->remove_temporaries(); }

 private:
  std::unique_ptr<Target> inner_;
  Hook hook_;
};

class StoreBackupTest : public ::testing::TestWithParam<TargetKind> {
 protected:
  static void SetUpTestSuite() {
    server_ = std::make_unique<S3Server>();
    server_error_ = server_->start();
  }
  static void TearDownTestSuite() { server_.reset(); }

  void SetUp() override {
    if (GetParam() == TargetKind::kS3) {
      ASSERT_EQ(server_error_, "") << "the S3 test server did not start";
    }
    dbs::FileDeviceOptions options;
    options.create_size = 256 * kMiB;
    auto device = dbs::FileDevice::open(store_dir_.path() + "/store", options);
    ASSERT_TRUE(device.ok()) << device.error().to_string();
    device_ = std::move(*device);
    ASSERT_TRUE(dbs::Store::format(*device_).ok());
    auto store = dbs::Store::open(*device_);
    ASSERT_TRUE(store.ok()) << store.error().to_string();
    store_ = std::move(*store);
    auto volume = store_->create_volume("vol", kVolumeBytes);
    ASSERT_TRUE(volume.ok());
    volume_ = *volume;
    open_repo();
  }
  void TearDown() override {
    if (store_) {
      EXPECT_TRUE(store_->close().ok());
    }
  }

  void open_repo(FaultyTarget::Hook hook = {}) {
    repo_.reset();
    Result<std::unique_ptr<Target>> target = Error(EINVAL, "no target");
    if (GetParam() == TargetKind::kDirectory) {
      target = open_target(target_dir_.path() + "/backups");
    } else {
      // A prefix per test: the tests share one server and bucket.
      S3Options s3;
      s3.endpoint = server_->endpoint();
      s3.credentials_file = server_->credentials_file();
      s3.lock_dir = target_dir_.path();
      const auto* test = ::testing::UnitTest::GetInstance()->current_test_info();
      std::string prefix = std::string(test->test_suite_name()) + "-" + test->name();
      std::replace(prefix.begin(), prefix.end(), '/', '-');
      target = open_target(std::string("s3://") + S3Server::kBucket + "/" + prefix, s3);
    }
    ASSERT_TRUE(target.ok()) << target.error().to_string();
    target_ = std::make_unique<FaultyTarget>(std::move(*target), std::move(hook));
    repo_ = std::make_unique<Repository>(*target_);
  }

  // Flips the bits of one byte of a stored object (through the target, so
  // the same on every kind).
  bool flip_object(const std::string& key, size_t at) {
    auto data = target_->get(key);
    if (!data || data->size() <= at) {
      return false;
    }
    (*data)[at] = ~(*data)[at];
    return target_->put(key, *data).ok();
  }

  // Writes `blocks` blocks at `offset`, each filled from (offset, seed).
  void write(uint64_t offset, uint64_t blocks, uint8_t seed) {
    Aligned buffer(blocks * kBlockBytes);
    for (uint64_t i = 0; i < buffer.size; ++i) {
      buffer.span()[i] = static_cast<std::byte>(((offset + i) / 512 * 31 + seed) | 1U);
    }
    ASSERT_TRUE(store_->write(volume_, offset, buffer.span()).ok());
  }

  dbs::SnapshotId snapshot(const std::string& name) {
    EXPECT_TRUE(store_->commit().ok());
    auto id = store_->create_snapshot(volume_, name);
    EXPECT_TRUE(id.ok()) << id.error().to_string();
    return *id;
  }

  std::vector<std::byte> read_snapshot(dbs::SnapshotId id) {
    Aligned buffer(kVolumeBytes);
    EXPECT_TRUE(store_->read_snapshot(id, 0, buffer.span()).ok());
    return {buffer.span().begin(), buffer.span().end()};
  }
  std::vector<std::byte> read_volume(dbs::VolumeId id) {
    Aligned buffer(kVolumeBytes);
    EXPECT_TRUE(store_->read(id, 0, buffer.span()).ok());
    return {buffer.span().begin(), buffer.span().end()};
  }

  Result<Manifest> backup(const std::string& name, const std::string& snap,
                          const std::string& parent = "", BackupProgress* last = nullptr,
                          uint32_t checkpoint_chunks = 64, std::stop_token stop = {}) {
    BackupOptions options;
    options.name = name;
    options.parent = parent;
    options.checkpoint_chunks = checkpoint_chunks;
    options.stop = std::move(stop);
    options.on_progress = [last](const BackupProgress& p) {
      if (last != nullptr) {
        *last = p;
      }
    };
    return backup_snapshot(*store_, *repo_, "vol", snap, options);
  }

  // The first-stage content: data in 10 chunks (and a zero block, a hole).
  void write_first_stage() {
    for (uint64_t c = 0; c < 10; ++c) {
      write(c * 3 * kChunkBytes + c * 5 * kBlockBytes, 1 + c * 7, static_cast<uint8_t>(c));
    }
    Aligned zero(kBlockBytes);
    std::memset(zero.span().data(), 0, kBlockBytes);
    ASSERT_TRUE(store_->write(volume_, 31 * kChunkBytes, zero.span()).ok());
  }

  void expect_restores_to(const std::string& backup, const std::vector<std::byte>& expected,
                          const std::string& volume_name) {
    auto restored = restore_to_new_volume(*store_, *repo_, backup, volume_name, {});
    ASSERT_TRUE(restored.ok()) << restored.error().to_string();
    EXPECT_TRUE(read_volume(*restored) == expected) << backup << " restored different bytes";
  }

  static inline std::unique_ptr<S3Server> server_;
  static inline std::string server_error_;
  TempDir store_dir_;
  TempDir target_dir_;
  std::unique_ptr<dbs::FileDevice> device_;
  std::unique_ptr<dbs::Store> store_;
  dbs::VolumeId volume_ = 0;
  std::unique_ptr<Target> target_;
  std::unique_ptr<Repository> repo_;
};

TEST_P(StoreBackupTest, LayerMapQueries) {
  write(0, 2, 1);
  write(5 * kMiB, 1, 2);
  const auto s1 = snapshot("s1");
  write(kBlockBytes, 2, 3);  // overlaps block 1, adds block 2
  ASSERT_TRUE(store_->discard(volume_, 5 * kMiB, kBlockBytes).ok());  // a parent's block
  write(9 * kMiB, 1, 4);
  const auto s2 = snapshot("s2");
  using R = ByteRanges;
  EXPECT_EQ(*store_->snapshot_mapped_ranges(s1), (R{{0, 8192}, {5 * kMiB, 4096}}));
  // Zeros written over the parent's block by the discard count as changed.
  EXPECT_EQ(*store_->changed_ranges(s1, s2), (R{{4096, 8192}, {5 * kMiB, 4096}, {9 * kMiB, 4096}}));
  EXPECT_EQ(*store_->snapshot_mapped_ranges(s2),
            (R{{0, 12288}, {5 * kMiB, 4096}, {9 * kMiB, 4096}}));
  EXPECT_TRUE(store_->changed_ranges(s2, s2)->empty());
  auto wrong = store_->changed_ranges(s2, s1);
  ASSERT_FALSE(wrong.ok());
  EXPECT_EQ(wrong.error().kind(), ErrorKind::kInvalidArgument);
}

TEST_P(StoreBackupTest, FullAndIncrementalRoundTrip) {
  write_first_stage();
  const auto s1 = snapshot("s1");
  BackupProgress p1;
  auto b1 = backup("b1", "s1", "", &p1);
  ASSERT_TRUE(b1.ok()) << b1.error().to_string();
  // 11 chunks hold mapped blocks; the one holding only a zero block is a hole.
  EXPECT_EQ(p1.chunks_total, 11U);
  EXPECT_EQ(p1.chunks_written, 10U);
  EXPECT_EQ(b1->entries.size(), 10U);
  EXPECT_EQ(b1->parent, "");

  // Change 3 blocks in 2 chunks, discard 1 block of a third.
  write(0, 1, 50);
  write(6 * kChunkBytes + 100 * kBlockBytes, 2, 51);
  ASSERT_TRUE(store_->discard(volume_, 27 * kChunkBytes + 9 * 5 * kBlockBytes, kBlockBytes).ok());
  const auto s2 = snapshot("s2");
  BackupProgress p2;
  auto b2 = backup("b2", "s2", "b1", &p2);
  ASSERT_TRUE(b2.ok()) << b2.error().to_string();
  // Only the 3 chunks with changed blocks were read and stored.
  EXPECT_EQ(p2.chunks_total, 3U);
  EXPECT_EQ(p2.chunks_done, 3U);
  EXPECT_EQ(p2.chunks_written, 3U);
  EXPECT_LE(p2.bytes_read, 3 * kChunkBytes);
  EXPECT_EQ(b2->entries.size(), 10U);
  EXPECT_EQ(b2->parent, "b1");
  EXPECT_EQ(target_->list("chunks/")->size(), 13U);

  EXPECT_TRUE(repo_->verify("b1")->empty());
  EXPECT_TRUE(repo_->verify("b2")->empty());
  expect_restores_to("b1", read_snapshot(s1), "r1");
  expect_restores_to("b2", read_snapshot(s2), "r2");
  EXPECT_EQ(backup("b2", "s2", "b1").error().kind(), ErrorKind::kAlreadyExists);
}

TEST_P(StoreBackupTest, CorruptionIsReportedAndNothingIsRestored) {
  write_first_stage();
  snapshot("s1");
  auto b1 = backup("b1", "s1");
  ASSERT_TRUE(b1.ok());
  const ManifestEntry& victim = b1->entries[4];
  ASSERT_TRUE(flip_object(Repository::chunk_key(victim.hash), 120));
  const std::string where = "backup 'b1': volume offset " + std::to_string(victim.offset) + ": ";
  auto problems = repo_->verify("b1");
  ASSERT_TRUE(problems.ok());
  ASSERT_EQ(problems->size(), 1U);
  EXPECT_NE(problems->front().find(where), std::string::npos) << problems->front();
  auto restored = restore_to_new_volume(*store_, *repo_, "b1", "r1", {});
  ASSERT_FALSE(restored.ok());
  EXPECT_EQ(restored.error().kind(), ErrorKind::kCorruption);
  EXPECT_NE(restored.error().message().find(where), std::string::npos)
      << restored.error().message();
  EXPECT_FALSE(store_->find_volume("r1").ok()) << "a half-restored volume was left behind";

  // A damaged manifest: entry 2 is named, nothing is restored.
  ASSERT_TRUE(flip_object("backups/b1.manifest", 1024 + 2 * 48 + 3));
  restored = restore_to_new_volume(*store_, *repo_, "b1", "r1", {});
  ASSERT_FALSE(restored.ok());
  EXPECT_NE(restored.error().message().find(
                "backup 'b1': backups/b1.manifest: manifest entry 2 (the entry after volume "
                "offset " +
                std::to_string(b1->entries[1].offset) + ") checksum mismatch"),
            std::string::npos)
      << restored.error().message();
  EXPECT_FALSE(store_->find_volume("r1").ok());
}

TEST_P(StoreBackupTest, InterruptedBackupResumes) {
  write_first_stage();
  const auto s1 = snapshot("s1");
  // "Crash" at the 6th chunk put, after its temporary file was written.
  int chunk_puts = 0;
  ASSERT_NO_FATAL_FAILURE(open_repo([&](const std::string& key) -> Status {
    if (key.starts_with("chunks/") && ++chunk_puts == 6) {
      return Error(EIO, "injected crash");
    }
    return ok_status();
  }));
  auto crashed = backup("b1", "s1", "", nullptr, /*checkpoint_chunks=*/2);
  ASSERT_FALSE(crashed.ok());
  EXPECT_EQ(crashed.error().message(), "injected crash");
  EXPECT_TRUE(repo_->list_backups()->empty());
  auto partial = repo_->get_partial("b1");
  ASSERT_TRUE(partial.ok()) << partial.error().to_string();
  EXPECT_EQ(partial->entries.size(), 4U);  // the last checkpoint: 4 chunks
  for (const auto& entry : partial->entries) {
    EXPECT_TRUE(repo_->get_chunk(entry.hash).ok()) << "partial names a missing chunk";
  }

  // A stop request on the resumed run: checkpointed, ECANCELED.
  ASSERT_NO_FATAL_FAILURE(open_repo());
  std::stop_source stop;
  BackupProgress seen;
  BackupOptions options;
  options.name = "b1";
  options.stop = stop.get_token();
  options.on_progress = [&](const BackupProgress& p) {
    seen = p;
    if (p.chunks_done == 7) {
      stop.request_stop();
    }
  };
  auto stopped = backup_snapshot(*store_, *repo_, "vol", "s1", options);
  ASSERT_FALSE(stopped.ok());
  EXPECT_EQ(stopped.error().errno_value(), ECANCELED);
  EXPECT_EQ(seen.chunks_done, 7U);
  EXPECT_EQ(seen.chunks_written, 2U);  // only chunks 5 and 6 were new
  EXPECT_EQ(repo_->get_partial("b1")->entries.size(), 7U);

  BackupProgress last;
  auto resumed = backup("b1", "s1", "", &last);
  ASSERT_TRUE(resumed.ok()) << resumed.error().to_string();
  EXPECT_EQ(last.chunks_total, 11U);
  EXPECT_EQ(last.chunks_done, 11U);
  // Only what was left: the mapped blocks of chunks c = 7, 8, 9 (1 + 7c
  // blocks each) and the zero block.
  EXPECT_EQ(last.bytes_read, (50 + 57 + 64 + 1) * kBlockBytes)
      << "the resume read more than what was left";
  EXPECT_FALSE(repo_->get_partial("b1").ok());
  EXPECT_TRUE(repo_->verify("b1")->empty());
  expect_restores_to("b1", read_snapshot(s1), "r1");
}

TEST_P(StoreBackupTest, DeleteCollectsOnlyUnneededChunks) {
  write_first_stage();
  const auto s1 = snapshot("s1");
  ASSERT_TRUE(backup("b1", "s1").ok());
  write(0, 1, 60);
  write(12 * kChunkBytes, 1, 61);  // chunk 12 changes too
  const auto s2 = snapshot("s2");
  ASSERT_TRUE(backup("b2", "s2", "b1").ok());
  ASSERT_EQ(target_->list("chunks/")->size(), 12U);

  // A damaged manifest stops collection before anything is removed.
  const std::string b2_file = "backups/b2.manifest";
  ASSERT_TRUE(flip_object(b2_file, 5));
  auto refused = delete_backup(*repo_, "b1");
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.error().message().find("garbage collection stopped before removing anything"),
            std::string::npos)
      << refused.error().message();
  EXPECT_EQ(target_->list("chunks/")->size(), 12U);
  ASSERT_TRUE(flip_object(b2_file, 5));  // repaired

  // b1 is gone already (its manifest was removed first); collecting now
  // frees only b1's versions of chunks 0 and 12, which b2 does not name.
  EXPECT_FALSE(repo_->get_manifest("b1").ok());
  auto gc = collect_garbage(*repo_);
  ASSERT_TRUE(gc.ok()) << gc.error().to_string();
  EXPECT_EQ(gc->chunks_removed, 2U);
  EXPECT_EQ(gc->chunks_live, 10U);
  EXPECT_TRUE(repo_->verify("b2")->empty());
  expect_restores_to("b2", read_snapshot(s2), "r2");
  (void)s1;

  auto deleted = delete_backup(*repo_, "b2");
  ASSERT_TRUE(deleted.ok());
  EXPECT_EQ(deleted->chunks_removed, 10U);
  EXPECT_TRUE(target_->list("chunks/")->empty());
  EXPECT_EQ(delete_backup(*repo_, "b2").error().kind(), ErrorKind::kNotFound);
}

INSTANTIATE_TEST_SUITE_P(Targets, StoreBackupTest,
                         ::testing::Values(TargetKind::kDirectory, TargetKind::kS3), kind_name);

}  // namespace
}  // namespace ublkvol::backup
