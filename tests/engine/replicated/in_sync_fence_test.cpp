// The open-time fence on in-sync sets (docs/engine.md "In-sync sets",
// DESIGN.md guarantee 4): a volume never opens on stale replicas while a
// replica that was in sync at their generation - and so may have moved on
// with acknowledged writes - is missing. Raw replicas on real files
// (io_uring, O_DIRECT), closed and reopened as a daemon restart does.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <gtest/gtest.h>
#include <memory>
#include <string>
#include <vector>

#include "ublkvol/common/crc32c.h"
#include "ublkvol/dbs/file_device.h"
#include "ublkvol/engine/generation.h"
#include "ublkvol/engine/raw_replica_store.h"
#include "ublkvol/engine/replicated_volume.h"
#include "ublkvol/engine/store_thread.h"

#include "replica_test_util.h"

namespace ublkvol::engine {
namespace {

using testing::block_id;
using testing::fill_block;
using testing::make_buffer;
using testing::run_io;

constexpr uint64_t kSize = 4U << 20U;
constexpr uint64_t kBlock = 4096;

// Replica files that are opened (device + store + thread) and closed one by
// one, as a daemon restart with a missing store does.
class Replicas {
 public:
  explicit Replicas(unsigned n) {
    std::string templ = ::testing::TempDir() + "ublkvol-fence-XXXXXX";
    std::vector<char> buf(templ.begin(), templ.end());
    buf.push_back('\0');
    EXPECT_NE(::mkdtemp(buf.data()), nullptr);
    dir_ = buf.data();
    for (unsigned i = 0; i < n; ++i) {
      paths_.push_back(dir_ + "/replica" + std::to_string(i));
      dbs::FileDeviceOptions fo;
      fo.create_size = kSize + (2U << 20U);
      auto dev = dbs::FileDevice::open(paths_.back(), fo);
      EXPECT_TRUE(dev.ok()) << dev.error().to_string();
      RawReplicaFormatOptions ro;
      ro.size_bytes = kSize;
      EXPECT_TRUE(format_raw_replica(**dev, ro).ok());
    }
    open_.resize(n);
  }
  Replicas(const Replicas&) = delete;
  Replicas& operator=(const Replicas&) = delete;
  ~Replicas() {
    for (unsigned i = 0; i < open_.size(); ++i) {
      close(i);
    }
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  // Opens replicas `which` and returns their bindings, in that order.
  std::vector<ReplicaBinding> open(const std::vector<unsigned>& which) {
    std::vector<ReplicaBinding> b;
    for (unsigned i : which) {
      Open& o = open_[i];
      dbs::FileDeviceOptions fo;
      fo.single_issuer = false;  // opened here, used on the store thread
      auto dev = dbs::FileDevice::open(paths_[i], fo);
      EXPECT_TRUE(dev.ok()) << dev.error().to_string();
      o.device = std::move(dev.value());
      auto store = open_raw_replica(*o.device);
      EXPECT_TRUE(store.ok()) << store.error().to_string();
      o.store = std::move(store.value());
      auto thread = StoreThread::start({"fence" + std::to_string(i)});
      EXPECT_TRUE(thread.ok());
      o.thread = std::move(thread.value());
      EXPECT_TRUE(o.thread->attach(*o.store).ok());
      b.push_back({o.store.get(), o.thread.get()});
    }
    return b;
  }
  void close(unsigned i) {
    Open& o = open_[i];
    if (o.thread) {
      o.thread->stop();
    }
    o.thread.reset();
    o.store.reset();
    o.device.reset();
  }
  void close_all() {
    for (unsigned i = 0; i < open_.size(); ++i) {
      close(i);
    }
  }
  // The persisted metadata of replica i (opened and closed for it).
  ReplicaMeta meta(unsigned i) {
    (void)open({i});
    ReplicaMeta m = open_[i].store->meta();
    close(i);
    return m;
  }
  [[nodiscard]] const std::string& path(unsigned i) const { return paths_[i]; }

 private:
  struct Open {
    std::unique_ptr<dbs::FileDevice> device;
    std::unique_ptr<RawReplicaStore> store;
    std::unique_ptr<StoreThread> thread;
  };
  std::string dir_;
  std::vector<std::string> paths_;
  std::vector<Open> open_;
};

ReplicatedVolumeOptions options(bool accept_missing = false) {
  ReplicatedVolumeOptions o;
  o.name = "fenced";
  o.dirty_clear_interval = std::chrono::milliseconds(0);
  o.accept_missing_in_sync = accept_missing;
  return o;
}

// Writes block `block` with pattern `id`, FUA.
void write_block(ReplicatedVolume& v, uint64_t block, uint64_t id) {
  auto q = v.open_queue(0);
  ASSERT_TRUE(q.ok()) << q.error().to_string();
  auto buf = make_buffer(kBlock);
  fill_block(buf.get(), id, block);
  ASSERT_EQ(run_io(**q, VolumeOp::kWrite, block * kBlock, kBlock, buf.get(), true), 0);
}

// The pattern id block `block` reads as.
uint64_t read_block(ReplicatedVolume& v, uint64_t block) {
  auto q = v.open_queue(0);
  EXPECT_TRUE(q.ok()) << q.error().to_string();
  auto buf = make_buffer(kBlock);
  EXPECT_EQ(run_io(**q, VolumeOp::kRead, block * kBlock, kBlock, buf.get()), 0);
  return block_id(buf.get(), block);
}

constexpr uint64_t kOld = 11;  // written while both replicas were in sync
constexpr uint64_t kNew = 22;  // acknowledged by replica 1 alone

// Both replicas get kOld at block 7; replica 0 is failed out; replica 1
// alone acknowledges kNew at block 7; the volume closes.
void fail_first_then_write(Replicas& reps) {
  auto v = ReplicatedVolume::open(options(), reps.open({0, 1}));
  ASSERT_TRUE(v.ok()) << v.error().to_string();
  write_block(**v, 7, kOld);
  ASSERT_TRUE((*v)->fail_replica(0, "test").ok());
  write_block(**v, 7, kNew);
  ASSERT_TRUE((*v)->close().ok());
  v->reset();
  reps.close_all();
}

TEST(InSyncFence, RefusesToOpenWhenTheNewerReplicaIsMissingAndOpensWhenItIsBack) {
  Replicas reps(2);
  fail_first_then_write(reps);
  const uint64_t newer_id = reps.meta(1).replica_id;
  ASSERT_NE(newer_id, 0U);

  auto refused = ReplicatedVolume::open(options(), reps.open({0}));
  ASSERT_FALSE(refused.ok()) << "opened on the stale replica alone (would serve block 7 as it was "
                                "before the acknowledged write)";
  EXPECT_EQ(refused.error().errno_value(), ENOLINK);
  EXPECT_NE(refused.error().message().find(id_string(newer_id)), std::string::npos)
      << refused.error().message();
  EXPECT_NE(refused.error().message().find("1 of the 2 replicas in sync"), std::string::npos)
      << refused.error().message();
  reps.close_all();

  // With the newer replica back the volume opens, replica 0 resyncs from it.
  auto v = ReplicatedVolume::open(options(), reps.open({0, 1}));
  ASSERT_TRUE(v.ok()) << v.error().to_string();
  ASSERT_TRUE((*v)->wait_rebuild().ok());
  EXPECT_EQ((*v)->status().replicas[0].state, ReplicaState::kInSync);
  EXPECT_EQ(read_block(**v, 7), kNew);
  auto report = (*v)->verify();
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->mismatches.empty());
  EXPECT_TRUE((*v)->close().ok());
}

TEST(InSyncFence, OpensWithoutAReplicaKnownToBeOut) {
  Replicas reps(2);
  fail_first_then_write(reps);
  {
    // Replica 0 was failed out before the newest generation: not in its set.
    auto v = ReplicatedVolume::open(options(), reps.open({1}));
    ASSERT_TRUE(v.ok()) << v.error().to_string();
    EXPECT_EQ(read_block(**v, 7), kNew);
    EXPECT_TRUE((*v)->close().ok());
  }
  reps.close_all();
  auto v = ReplicatedVolume::open(options(), reps.open({0, 1}));
  ASSERT_TRUE(v.ok()) << v.error().to_string();
  ASSERT_TRUE((*v)->wait_rebuild().ok());
  EXPECT_EQ(read_block(**v, 7), kNew);
  EXPECT_TRUE((*v)->close().ok());
}

TEST(InSyncFence, AReplicaRebuiltIntoTheSetIsWaitedForToo) {
  Replicas reps(2);
  fail_first_then_write(reps);
  {
    // Replica 0 resyncs and is in sync again at replica 1's generation:
    // either one may now move on alone, so neither opens without the other.
    auto v = ReplicatedVolume::open(options(), reps.open({0, 1}));
    ASSERT_TRUE(v.ok()) << v.error().to_string();
    ASSERT_TRUE((*v)->wait_rebuild().ok());
    EXPECT_TRUE((*v)->close().ok());
  }
  reps.close_all();
  const uint64_t id0 = reps.meta(0).replica_id;
  const uint64_t id1 = reps.meta(1).replica_id;
  for (unsigned present : {0U, 1U}) {
    auto refused = ReplicatedVolume::open(options(), reps.open({present}));
    ASSERT_FALSE(refused.ok()) << "opened on replica " << present << " alone";
    EXPECT_EQ(refused.error().errno_value(), ENOLINK);
    EXPECT_NE(refused.error().message().find(id_string(present == 0 ? id1 : id0)),
              std::string::npos)
        << refused.error().message();
    reps.close_all();
  }
}

TEST(InSyncFence, AcceptedMissingReplicaReturningNewerIsASplitNotOverwritten) {
  Replicas reps(2);
  fail_first_then_write(reps);
  {
    auto v = ReplicatedVolume::open(options(/*accept_missing=*/true), reps.open({0}));
    ASSERT_TRUE(v.ok()) << v.error().to_string();
    EXPECT_EQ(read_block(**v, 7), kOld);  // the loss the caller accepted
    write_block(**v, 8, 33);
    EXPECT_TRUE((*v)->close().ok());
  }
  reps.close_all();
  // Both hold acknowledged writes the other lacks: nothing automatic picks.
  auto split = ReplicatedVolume::open(options(), reps.open({0, 1}));
  ASSERT_FALSE(split.ok());
  EXPECT_EQ(split.error().errno_value(), EUCLEAN);
  EXPECT_NE(split.error().message().find("split"), std::string::npos) << split.error().message();
}

// Rewrites both header copies of a raw replica file as format version 1
// (no replica id, no in-sync set), as a replica written before them.
void downgrade_to_version_1(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  constexpr size_t kVersionAt = 8;
  constexpr size_t kCrcAt = 12;
  constexpr size_t kReplicaIdAt = 176;  // replica_id, then in_sync[4]
  constexpr size_t kNewFieldsEnd = kReplicaIdAt + 8 + 8 * kInSyncSetSize;
  for (off_t at : {off_t{0}, off_t{4096}}) {
    std::vector<std::byte> block(kBlock);
    ASSERT_EQ(::pread(fd, block.data(), kBlock, at), static_cast<ssize_t>(kBlock));
    uint32_t version = 0;
    std::memcpy(&version, block.data() + kVersionAt, sizeof(version));
    ASSERT_EQ(version, 2U);
    version = 1;
    std::memcpy(block.data() + kVersionAt, &version, sizeof(version));
    std::memset(block.data() + kReplicaIdAt, 0, kNewFieldsEnd - kReplicaIdAt);
    std::memset(block.data() + kCrcAt, 0, 4);
    uint32_t crc = crc32c(block.data(), kBlock);
    std::memcpy(block.data() + kCrcAt, &crc, sizeof(crc));
    ASSERT_EQ(::pwrite(fd, block.data(), kBlock, at), static_cast<ssize_t>(kBlock));
  }
  ASSERT_EQ(::fsync(fd), 0);
  ::close(fd);
}

TEST(InSyncFence, OldFormatReplicasKeepTheOldBehaviour) {
  Replicas reps(2);
  fail_first_then_write(reps);
  downgrade_to_version_1(reps.path(0));
  downgrade_to_version_1(reps.path(1));
  const ReplicaMeta old = reps.meta(0);
  EXPECT_EQ(old.replica_id, 0U);
  EXPECT_EQ(old.in_sync[0], 0U);
  EXPECT_NE(old.generation, 0U);
  // Nothing recorded, nothing to check: the stale replica opens alone, as
  // before in-sync sets existed (logged), and gets its identity.
  auto v = ReplicatedVolume::open(options(), reps.open({0}));
  ASSERT_TRUE(v.ok()) << v.error().to_string();
  EXPECT_EQ(read_block(**v, 7), kOld);
  EXPECT_TRUE((*v)->close().ok());
  v->reset();
  reps.close_all();
  EXPECT_NE(reps.meta(0).replica_id, 0U);
}

}  // namespace
}  // namespace ublkvol::engine
