// Store::adopt_as_snapshot (src/dbs/store/store_adopt.cpp): a volume filled
// through the data path becomes a parentless snapshot of another volume in
// one commit - its content, its refusals, and every power-cut image around
// it (CrashDevice).
#include <algorithm>
#include <cstdio>
#include <gtest/gtest.h>
#include <memory>
#include <string>
#include <vector>

#include "ublkvol/dbs/crash_device.h"
#include "ublkvol/dbs/memory_device.h"
#include "ublkvol/dbs/store.h"

#include "store_test_util.h"

namespace ublkvol::dbs {
namespace {

using testing::BlockTag;
using testing::Buffer;
using testing::decode_block;
using testing::fill_block;
using testing::kBlock;

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kVolumeBytes = 4 * kMiB;
// Tags written into the data: the live volume's, the restored content's.
constexpr uint64_t kLiveTag = 1;
constexpr uint64_t kRestoredTag = 2;

FormatOptions small() {
  FormatOptions options;
  options.extent_blocks = 16;  // 64 KiB extents
  return options;
}

void write_tag(Store& store, VolumeId volume, uint64_t tag_volume, uint64_t block, uint64_t seq,
               uint64_t count = 1) {
  Buffer buffer(count * kBlock);
  for (uint64_t i = 0; i < count; ++i) {
    fill_block(buffer.block(i), BlockTag{tag_volume, block + i, seq});
  }
  auto status = store.write(volume, block * kBlock, buffer.span());
  ASSERT_TRUE(status.ok()) << status.error().to_string();
}

// The tag of a block of a volume (snapshot = 0) or a snapshot; a block that
// is no tagged block at all fails the test.
BlockTag read_tag(Store& store, VolumeId volume, uint64_t block, SnapshotId snapshot = 0) {
  Buffer buffer(kBlock);
  auto status = snapshot != 0 ? store.read_snapshot(snapshot, block * kBlock, buffer.span())
                              : store.read(volume, block * kBlock, buffer.span());
  EXPECT_TRUE(status.ok()) << status.error().to_string();
  BlockTag tag;
  EXPECT_TRUE(decode_block(buffer.span(), tag)) << "garbage in block " << block;
  return tag;
}

void expect_clean(Store& store) {
  for (const auto& problem : store.check()) {
    ADD_FAILURE() << "check: " << problem;
  }
}

// The restored content: blocks 0..7 and 40..47 and the last block, seq 5.
const std::vector<uint64_t>& restored_blocks() {
  static const std::vector<uint64_t> blocks = [] {
    std::vector<uint64_t> b;
    for (uint64_t i = 0; i < 8; ++i) {
      b.push_back(i);
      b.push_back(40 + i);
    }
    b.push_back(kVolumeBytes / kBlock - 1);
    return b;
  }();
  return blocks;
}

void write_restored(Store& store, VolumeId staging) {
  write_tag(store, staging, kRestoredTag, 0, 5, 8);
  write_tag(store, staging, kRestoredTag, 40, 5, 8);
  write_tag(store, staging, kRestoredTag, kVolumeBytes / kBlock - 1, 5);
}

// Reads every block of the volume or snapshot: the restored content (seq 5
// at restored_blocks(), zeros elsewhere).
void expect_restored(Store& store, VolumeId volume, SnapshotId snapshot = 0) {
  const auto& blocks = restored_blocks();
  for (uint64_t b = 0; b < kVolumeBytes / kBlock; ++b) {
    const bool mapped = std::find(blocks.begin(), blocks.end(), b) != blocks.end();
    const BlockTag want = mapped ? BlockTag{kRestoredTag, b, 5} : BlockTag{};
    const BlockTag got = read_tag(store, volume, b, snapshot);
    ASSERT_EQ(got, want) << "block " << b << ": got " << testing::describe(got);
  }
}

class StoreAdoptTest : public ::testing::Test {
 protected:
  void SetUp() override {
    device_ = std::make_unique<MemoryDevice>(64 * kMiB);
    ASSERT_TRUE(Store::format(*device_, small()).ok());
    reopen();
  }
  void reopen() {
    store_.reset();
    auto opened = Store::open(*device_);
    ASSERT_TRUE(opened.ok()) << opened.error().to_string();
    store_ = std::move(*opened);
  }
  VolumeId create(const std::string& name, uint64_t size = kVolumeBytes) {
    auto id = store_->create_volume(name, size);
    EXPECT_TRUE(id.ok()) << id.error().to_string();
    return id.ok() ? *id : 0;
  }

  std::unique_ptr<MemoryDevice> device_;
  std::unique_ptr<Store> store_;
};

TEST_F(StoreAdoptTest, FilledVolumeBecomesAParentlessSnapshotOfAnotherVolume) {
  const VolumeId live = create("live");
  write_tag(*store_, live, kLiveTag, 0, 1, 16);
  auto a = store_->create_snapshot(live, "a");
  ASSERT_TRUE(a.ok());
  write_tag(*store_, live, kLiveTag, 0, 2, 4);  // the head moves on after a
  const VolumeId staging = create("live~restoring");
  write_restored(*store_, staging);
  // The live volume keeps being written while the restore fills the staging
  // volume; its data must not move.
  write_tag(*store_, live, kLiveTag, 100, 3);

  auto adopted = store_->adopt_as_snapshot(staging, live, "restored");
  ASSERT_TRUE(adopted.ok()) << adopted.error().to_string();
  EXPECT_FALSE(store_->find_volume("live~restoring").ok());  // the staging volume is gone
  auto found = store_->find_snapshot(live, "restored");
  ASSERT_TRUE(found.ok());
  EXPECT_EQ(*found, *adopted);
  auto info = store_->snapshot_info(*adopted);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->volume, live);
  EXPECT_EQ(info->parent, 0U);
  EXPECT_EQ(info->size_bytes, kVolumeBytes);
  EXPECT_EQ(store_->list_snapshots(live).size(), 2U);
  expect_restored(*store_, 0, *adopted);
  // The head is untouched: its own blocks and a's below them.
  for (uint64_t b = 0; b < 16; ++b) {
    EXPECT_EQ(read_tag(*store_, live, b), (BlockTag{kLiveTag, b, b < 4 ? 2U : 1U}));
  }
  EXPECT_EQ(read_tag(*store_, live, 100), (BlockTag{kLiveTag, 100, 3}));
  expect_clean(*store_);

  // Survives a reopen; clone and revert give the restored bytes.
  reopen();
  expect_restored(*store_, 0, *adopted);
  auto clone = store_->clone_snapshot(*adopted, "clone");
  ASSERT_TRUE(clone.ok()) << clone.error().to_string();
  expect_restored(*store_, *clone);
  auto reverted = store_->revert_volume(live, *adopted);
  ASSERT_TRUE(reverted.ok()) << reverted.error().to_string();
  expect_restored(*store_, live);
  // Snapshot a is off the head's chain now and still holds its data; the
  // volume can go back to it as well.
  EXPECT_EQ(read_tag(*store_, 0, 3, *a), (BlockTag{kLiveTag, 3, 1}));
  ASSERT_TRUE(store_->revert_volume(live, *a).ok());
  EXPECT_EQ(read_tag(*store_, live, 3), (BlockTag{kLiveTag, 3, 1}));
  expect_clean(*store_);
  // Deleting the volume, then the clone, frees everything.
  ASSERT_TRUE(store_->delete_volume(live).ok());
  ASSERT_TRUE(store_->delete_volume(*clone).ok());
  EXPECT_TRUE(store_->list_all_snapshots().empty());
  EXPECT_EQ(store_->stats().free_extents + store_->stats().pending_free_extents,
            store_->stats().total_extents);
  expect_clean(*store_);
}

TEST_F(StoreAdoptTest, RefusalsNameTheProblemAndChangeNothing) {
  const VolumeId live = create("live");
  write_tag(*store_, live, kLiveTag, 0, 1);
  ASSERT_TRUE(store_->create_snapshot(live, "taken").ok());
  const VolumeId bigger = create("bigger", 2 * kVolumeBytes);
  const VolumeId staging = create("staging");
  write_restored(*store_, staging);

  auto size = store_->adopt_as_snapshot(bigger, live, "s");
  ASSERT_FALSE(size.ok());
  EXPECT_EQ(size.error().errno_value(), EINVAL);
  EXPECT_NE(size.error().message().find(std::to_string(2 * kVolumeBytes)), std::string::npos)
      << size.error().message();
  EXPECT_NE(size.error().message().find(std::to_string(kVolumeBytes)), std::string::npos);

  auto name = store_->adopt_as_snapshot(staging, live, "taken");
  ASSERT_FALSE(name.ok());
  EXPECT_EQ(name.error().errno_value(), EEXIST);
  EXPECT_NE(name.error().message().find("'taken'"), std::string::npos) << name.error().message();

  auto itself = store_->adopt_as_snapshot(live, live, "s");
  ASSERT_FALSE(itself.ok());
  EXPECT_EQ(itself.error().errno_value(), EINVAL);

  // A source with snapshots (live) or with a parent (a clone) is refused.
  const VolumeId other = create("other");
  auto with_snapshots = store_->adopt_as_snapshot(live, other, "s");
  ASSERT_FALSE(with_snapshots.ok());
  EXPECT_EQ(with_snapshots.error().errno_value(), EINVAL);
  auto taken = store_->find_snapshot(live, "taken");
  ASSERT_TRUE(taken.ok());
  auto clone = store_->clone_snapshot(*taken, "clone");
  ASSERT_TRUE(clone.ok());
  auto with_parent = store_->adopt_as_snapshot(*clone, other, "s");
  ASSERT_FALSE(with_parent.ok());
  EXPECT_EQ(with_parent.error().errno_value(), EINVAL);
  EXPECT_NE(with_parent.error().message().find("parent"), std::string::npos);

  auto no_volume = store_->adopt_as_snapshot(staging, 999, "s");
  ASSERT_FALSE(no_volume.ok());
  EXPECT_EQ(no_volume.error().errno_value(), ENOENT);

  // Nothing changed: the staging volume is still there with its data.
  ASSERT_TRUE(store_->find_volume("staging").ok());
  expect_restored(*store_, staging);
  EXPECT_EQ(store_->list_snapshots(live).size(), 1U);
  EXPECT_TRUE(store_->list_snapshots(other).empty());
  expect_clean(*store_);
}

// Every power-cut image from the staging volume's creation through its
// adoption: each opens, checks clean, keeps the live volume's flushed data,
// and shows either the staging volume (no snapshot) or the snapshot with
// exactly the restored content (no staging volume) - never both, never a
// snapshot with part of the content.
TEST(StoreAdoptCrash, EveryPowerCutImageHoldsTheStagingVolumeOrTheWholeSnapshot) {
  MemoryDevice inner(16 * kMiB);
  ASSERT_TRUE(Store::format(inner, small()).ok());
  {
    auto opened = Store::open(inner);
    ASSERT_TRUE(opened.ok());
    auto live = (*opened)->create_volume("live", kVolumeBytes);
    ASSERT_TRUE(live.ok());
    write_tag(**opened, *live, kLiveTag, 0, 1, 32);
    ASSERT_TRUE((*opened)->create_snapshot(*live, "a").ok());
    ASSERT_TRUE((*opened)->close().ok());
  }
  CrashDevice crash(inner);
  size_t adopt_log_start = 0;
  {
    auto opened = Store::open(crash);
    ASSERT_TRUE(opened.ok());
    Store& store = **opened;
    auto live = store.find_volume("live");
    ASSERT_TRUE(live.ok());
    auto staging = store.create_volume("live~restoring", kVolumeBytes);
    ASSERT_TRUE(staging.ok());
    write_restored(store, *staging);
    write_tag(store, *live, kLiveTag, 0, 2, 2);  // the live volume goes on (never flushed)
    adopt_log_start = crash.log().size();
    auto adopted = store.adopt_as_snapshot(*staging, *live, "restored");
    ASSERT_TRUE(adopted.ok()) << adopted.error().to_string();
    ASSERT_TRUE(store.close().ok());
  }
  ASSERT_GT(crash.log().size(), adopt_log_start);  // the adoption wrote something

  size_t images = 0;
  size_t with_snapshot = 0;
  size_t with_staging = 0;
  std::vector<std::byte> image;
  auto verify = [&](const CrashDevice::CrashSpec& spec) {
    auto built = crash.build_image(spec, image);
    ASSERT_TRUE(built.ok()) << built.error().to_string();
    MemoryDevice device(image);
    auto opened = Store::open(device);
    ASSERT_TRUE(opened.ok()) << "epoch " << spec.epoch << ": " << opened.error().to_string();
    Store& store = **opened;
    ++images;
    expect_clean(store);
    auto live = store.find_volume("live");
    ASSERT_TRUE(live.ok());
    // Flushed before the crash window: always there (blocks 0-1 old or new).
    for (uint64_t b = 0; b < 32; ++b) {
      const BlockTag tag = read_tag(store, *live, b);
      EXPECT_TRUE(tag == (BlockTag{kLiveTag, b, 1}) || (b < 2 && tag == BlockTag{kLiveTag, b, 2}))
          << "live block " << b << ": " << testing::describe(tag);
    }
    auto snapshot = store.find_snapshot(*live, "restored");
    auto staging = store.find_volume("live~restoring");
    EXPECT_FALSE(snapshot.ok() && staging.ok()) << "epoch " << spec.epoch << ": both";
    if (snapshot.ok()) {
      ++with_snapshot;
      expect_restored(store, 0, *snapshot);
    } else if (staging.ok()) {
      ++with_staging;
      // A partial fill: each block old (zeros) or new.
      const auto& blocks = restored_blocks();
      for (uint64_t b : blocks) {
        const BlockTag tag = read_tag(store, *staging, b);
        EXPECT_TRUE(tag == BlockTag{} || tag == (BlockTag{kRestoredTag, b, 5}))
            << "staging block " << b << ": " << testing::describe(tag);
      }
    }
  };
  for (size_t epoch = 0; epoch < crash.epochs(); ++epoch) {
    const size_t dp = crash.durable_prefix(epoch);
    const size_t we = crash.window_end(epoch);
    const std::vector<size_t> pending = crash.pending_entries(epoch);
    verify({epoch, dp, {}});
    CrashDevice::CrashSpec all{epoch, we, {}};
    for (size_t index : pending) {
      all.applied.push_back({index, {}});
      // Each pending write alone, too (any subset may reach the medium).
      verify({epoch, we, {{index, {}}}});
    }
    verify(all);
    if (::testing::Test::HasFailure()) {
      return;
    }
  }
  // The walk saw both sides of the adoption's commit.
  EXPECT_GT(with_snapshot, 0U);
  EXPECT_GT(with_staging, 0U);
  std::printf("%zu crash images: %zu with the snapshot, %zu with the staging volume\n", images,
              with_snapshot, with_staging);
}

}  // namespace
}  // namespace ublkvol::dbs
