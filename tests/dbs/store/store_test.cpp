// Unit tests of the Direct Block Store on a MemoryDevice: volumes, thin
// provisioning, snapshots/clones, persistence across reopen, the async path.
#include "ublkvol/dbs/store.h"

#include <gtest/gtest.h>
#include <map>
#include <vector>

#include "ublkvol/dbs/memory_device.h"

#include "store_test_util.h"

namespace ublkvol::dbs {
namespace {

using testing::BlockTag;
using testing::Buffer;
using testing::decode_block;
using testing::fill_block;
using testing::kBlock;

constexpr uint64_t kMiB = 1 << 20;

class StoreTest : public ::testing::Test {
 protected:
  void SetUp() override { format_and_open(); }

  void format_and_open(uint64_t device_bytes = 64 * kMiB, FormatOptions options = small()) {
    store_.reset();
    device_ = std::make_unique<MemoryDevice>(device_bytes);
    ASSERT_TRUE(Store::format(*device_, options).ok());
    reopen();
  }

  static FormatOptions small() {
    FormatOptions options;
    options.extent_blocks = 16;  // 64 KiB extents: many extents on a small device
    return options;
  }

  void reopen(OpenOptions options = {}) {
    store_.reset();
    auto opened = Store::open(*device_, options);
    ASSERT_TRUE(opened.ok()) << opened.error().to_string();
    store_ = std::move(*opened);
  }

  VolumeId create(const std::string& name, uint64_t size = 16 * kMiB) {
    auto id = store_->create_volume(name, size);
    EXPECT_TRUE(id.ok()) << id.error().to_string();
    return id.ok() ? *id : 0;
  }

  void write_tag(VolumeId volume, uint64_t block, uint64_t seq, uint64_t count = 1) {
    Buffer buffer(count * kBlock);
    for (uint64_t i = 0; i < count; ++i) {
      fill_block(buffer.block(i), BlockTag{volume, block + i, seq});
    }
    auto status = store_->write(volume, block * kBlock, buffer.span());
    ASSERT_TRUE(status.ok()) << status.error().to_string();
  }

  // seq 0: expect zeros. `tag_volume` is the volume id written into the data
  // (a clone reads its origin's tags).
  void expect_tag(VolumeId volume, uint64_t block, uint64_t seq, uint64_t tag_volume = 0,
                  SnapshotId snapshot = 0) {
    Buffer buffer(kBlock);
    auto status = snapshot ? store_->read_snapshot(snapshot, block * kBlock, buffer.span())
                           : store_->read(volume, block * kBlock, buffer.span());
    ASSERT_TRUE(status.ok()) << status.error().to_string();
    BlockTag tag;
    ASSERT_TRUE(decode_block(buffer.span(), tag)) << "garbage in block " << block;
    const BlockTag want =
        seq == 0 ? BlockTag{} : BlockTag{tag_volume ? tag_volume : volume, block, seq};
    EXPECT_EQ(tag, want) << "block " << block << ": got " << testing::describe(tag) << " want "
                         << testing::describe(want);
  }

  void expect_clean() {
    auto problems = store_->check();
    for (const auto& p : problems) {
      ADD_FAILURE() << "check: " << p;
    }
  }

  std::unique_ptr<MemoryDevice> device_;
  std::unique_ptr<Store> store_;
};

TEST_F(StoreTest, EmptyStoreOpensAndChecksClean) {
  EXPECT_TRUE(store_->list_volumes().empty());
  const StoreStats stats = store_->stats();
  EXPECT_GT(stats.total_extents, 900u);
  EXPECT_EQ(stats.free_extents, stats.total_extents);
  expect_clean();
}

TEST_F(StoreTest, FormatRejectsBadExtentSizeAndTinyDevice) {
  MemoryDevice device(64 * kMiB);
  FormatOptions options;
  options.extent_blocks = 12;
  auto status = Store::format(device, options);
  ASSERT_FALSE(status.ok());
  EXPECT_NE(status.error().message().find("power of two"), std::string::npos);
  MemoryDevice tiny(uint64_t{64} * 1024);
  status = Store::format(tiny, FormatOptions{});
  ASSERT_FALSE(status.ok());
  EXPECT_NE(status.error().message().find("too small"), std::string::npos);
}

TEST_F(StoreTest, NeverWrittenBlocksReadAsZeros) {
  VolumeId v = create("a");
  expect_tag(v, 0, 0);
  expect_tag(v, 4095, 0);
  EXPECT_EQ(store_->volume_info(v)->allocated_bytes, 0u);
}

TEST_F(StoreTest, WriteReadAndPersistAcrossReopen) {
  VolumeId v = create("a");
  write_tag(v, 0, 1);
  write_tag(v, 17, 1, 40);  // spans three 16-block extents
  expect_tag(v, 0, 1);
  for (uint64_t b = 17; b < 57; ++b) {
    expect_tag(v, b, 1);
  }
  expect_tag(v, 16, 0);
  ASSERT_TRUE(store_->commit().ok());
  reopen();
  expect_tag(v, 0, 1);
  for (uint64_t b = 17; b < 57; ++b) {
    expect_tag(v, b, 1);
  }
  expect_tag(v, 57, 0);
  EXPECT_EQ(store_->volume_info(v)->mapped_bytes, 41 * kBlock);
  expect_clean();
}

TEST_F(StoreTest, CompletedAllocatingWritesSurviveReopenWithoutFlush) {
  // Reopening a MemoryDevice without a flush is what a killed process
  // leaves: every completed write is on the device, none is durable.
  VolumeId v = create("a");
  write_tag(v, 3, 1);
  ASSERT_GE(store_->stats().mapping_commits, 1u);
  reopen();  // no flush: the allocation was journaled before completing
  expect_tag(v, 3, 1);
  expect_clean();
}

TEST_F(StoreTest, WithoutMappingJournalUncommittedMappingsAreNotPersisted) {
  OpenOptions options;
  options.journal_mappings = false;
  reopen(options);
  VolumeId v = create("a");
  write_tag(v, 3, 1);
  EXPECT_EQ(store_->stats().mapping_commits, 0u);
  reopen(options);  // no flush: the allocation never reached the journal
  expect_tag(v, 3, 0);
  expect_clean();
}

TEST_F(StoreTest, OverwriteOfMappedBlockCostsNoMetadataIo) {
  VolumeId v = create("a");
  write_tag(v, 5, 1);
  ASSERT_TRUE(store_->commit().ok());
  const auto before = device_->counters();
  write_tag(v, 5, 2);
  const auto after = device_->counters();
  EXPECT_EQ(after.writes - before.writes, 1u);
  const uint64_t commits = store_->stats().commits;
  ASSERT_TRUE(store_->commit().ok());
  EXPECT_EQ(store_->stats().commits, commits);  // nothing to journal
  reopen();
  expect_tag(v, 5, 2);
}

TEST_F(StoreTest, VolumeCreateDeleteRenameGrowList) {
  VolumeId a = create("a", 8 * kMiB);
  VolumeId b = create("b", 4 * kMiB);
  EXPECT_NE(a, b);
  EXPECT_FALSE(store_->create_volume("a", kMiB).ok());
  EXPECT_FALSE(store_->create_volume("", kMiB).ok());
  EXPECT_FALSE(store_->create_volume("x", 1000).ok());
  ASSERT_TRUE(store_->rename_volume(a, "alpha").ok());
  EXPECT_EQ(*store_->find_volume("alpha"), a);
  EXPECT_FALSE(store_->rename_volume(b, "alpha").ok());
  write_tag(a, 2047, 1);  // last block
  Buffer past(kBlock);
  EXPECT_FALSE(store_->write(a, 8 * kMiB, past.span()).ok());
  ASSERT_TRUE(store_->grow_volume(a, 12 * kMiB).ok());
  EXPECT_FALSE(store_->grow_volume(a, 4 * kMiB).ok());
  write_tag(a, 3000, 1);
  ASSERT_TRUE(store_->delete_volume(b).ok());
  EXPECT_FALSE(store_->volume_info(b).ok());
  ASSERT_TRUE(store_->commit().ok());
  reopen();
  auto volumes = store_->list_volumes();
  ASSERT_EQ(volumes.size(), 1u);
  EXPECT_EQ(volumes[0].name, "alpha");
  EXPECT_EQ(volumes[0].size_bytes, 12 * kMiB);
  expect_tag(a, 2047, 1);
  expect_tag(a, 3000, 1);
  expect_tag(a, 3001, 0);
  // Ids are never reused.
  VolumeId c = create("c");
  EXPECT_GT(c, b);
  expect_clean();
}

TEST_F(StoreTest, SnapshotKeepsOldContentAndWritesRedirectPerBlock) {
  VolumeId v = create("v");
  write_tag(v, 0, 1, 16);  // one full extent
  auto snap = store_->create_snapshot(v, "s1");
  ASSERT_TRUE(snap.ok()) << snap.error().to_string();
  const uint64_t free_before = store_->stats().free_extents;
  const auto writes_before = device_->counters().bytes_written;
  write_tag(v, 3, 2);
  // One 4 KiB data write plus the one-block journal commit of its mapping:
  // no extent copy.
  EXPECT_EQ(device_->counters().bytes_written - writes_before, 2 * kBlock);
  EXPECT_EQ(store_->stats().free_extents, free_before - 1);
  for (uint64_t b = 0; b < 16; ++b) {
    expect_tag(v, b, b == 3 ? 2 : 1);
    expect_tag(v, b, 1, v, *snap);
  }
  ASSERT_TRUE(store_->commit().ok());
  reopen();
  for (uint64_t b = 0; b < 16; ++b) {
    expect_tag(v, b, b == 3 ? 2 : 1);
    expect_tag(v, b, 1, v, *snap);
  }
  auto snaps = store_->list_snapshots(v);
  ASSERT_EQ(snaps.size(), 1u);
  EXPECT_EQ(snaps[0].name, "s1");
  EXPECT_EQ(snaps[0].mapped_bytes, 16 * kBlock);
  EXPECT_EQ(store_->volume_info(v)->mapped_bytes, kBlock);
  EXPECT_FALSE(store_->create_snapshot(v, "s1").ok());  // duplicate name
  EXPECT_FALSE(store_->write(0, 0, Buffer(kBlock).span()).ok());
  StoreIo io;
  io.op = StoreOp::kWrite;
  expect_clean();
}

TEST_F(StoreTest, DeepSnapshotChainReadsFallThrough) {
  VolumeId v = create("v");
  std::vector<SnapshotId> snaps;
  constexpr uint64_t kDepth = 24;
  for (uint64_t i = 0; i < kDepth; ++i) {
    write_tag(v, i, i + 1);
    write_tag(v, 100, i + 1);  // rewritten in every layer
    auto s = store_->create_snapshot(v, "s" + std::to_string(i));
    ASSERT_TRUE(s.ok());
    snaps.push_back(*s);
  }
  reopen();
  for (uint64_t i = 0; i < kDepth; ++i) {
    expect_tag(v, i, i + 1);
  }
  expect_tag(v, 100, kDepth);
  for (uint64_t s = 0; s < kDepth; ++s) {
    for (uint64_t i = 0; i < kDepth; ++i) {
      expect_tag(v, i, i <= s ? i + 1 : 0, v, snaps[s]);
    }
    expect_tag(v, 100, s + 1, v, snaps[s]);
  }
  // A multi-block read crossing layers in one request.
  Buffer buffer(kDepth * kBlock);
  ASSERT_TRUE(store_->read(v, 0, buffer.span()).ok());
  for (uint64_t i = 0; i < kDepth; ++i) {
    BlockTag tag;
    ASSERT_TRUE(decode_block(buffer.block(i), tag));
    EXPECT_EQ(tag, (BlockTag{v, i, i + 1}));
  }
  expect_clean();
}

TEST_F(StoreTest, ClonesAndClonesOfClonesShareAndDiverge) {
  VolumeId v = create("v");
  write_tag(v, 0, 1, 4);
  auto s = store_->create_snapshot(v, "base");
  ASSERT_TRUE(s.ok());
  auto c1 = store_->clone_snapshot(*s, "clone1");
  ASSERT_TRUE(c1.ok());
  write_tag(*c1, 1, 2);
  auto s2 = store_->create_snapshot(*c1, "c1snap");
  ASSERT_TRUE(s2.ok());
  auto c2 = store_->clone_snapshot(*s2, "clone2");
  ASSERT_TRUE(c2.ok());
  write_tag(*c2, 2, 3);
  write_tag(v, 3, 4);
  ASSERT_TRUE(store_->commit().ok());
  reopen();
  // origin volume
  expect_tag(v, 0, 1);
  expect_tag(v, 1, 1);
  expect_tag(v, 3, 4);
  // clone1: origin data + own block 1
  expect_tag(*c1, 0, 1, v);
  expect_tag(*c1, 1, 2);
  expect_tag(*c1, 3, 1, v);
  // clone2: origin + clone1's block 1 + own block 2
  expect_tag(*c2, 0, 1, v);
  expect_tag(*c2, 1, 2, *c1);
  expect_tag(*c2, 2, 3);
  expect_tag(*c2, 3, 1, v);
  EXPECT_EQ(store_->volume_info(*c2)->parent_snapshot, *s2);
  expect_clean();
}

TEST_F(StoreTest, DeleteSnapshotMergesIntoChild) {
  VolumeId v = create("v");
  write_tag(v, 0, 1, 32);  // extents 0 and 1
  auto s1 = store_->create_snapshot(v, "s1");
  write_tag(v, 16, 2, 2);  // extent 1 in the head: overlap case
  write_tag(v, 40, 2);     // extent 2: only the head
  auto s2 = store_->create_snapshot(v, "s2");
  write_tag(v, 0, 3);
  ASSERT_TRUE(s1.ok() && s2.ok());
  const uint64_t used_before = store_->stats().total_extents - store_->stats().free_extents;
  ASSERT_TRUE(store_->delete_snapshot(*s2).ok());  // merge s2 into the head
  ASSERT_TRUE(store_->delete_snapshot(*s1).ok());  // merge s1 into the head
  EXPECT_TRUE(store_->list_snapshots(v).empty());
  for (uint64_t b = 0; b < 32; ++b) {
    expect_tag(v, b, b == 0 ? 3 : (b == 16 || b == 17) ? 2 : 1);
  }
  expect_tag(v, 40, 2);
  const uint64_t used_after = store_->stats().total_extents - store_->stats().free_extents;
  EXPECT_LT(used_after, used_before);
  EXPECT_EQ(store_->volume_info(v)->allocated_bytes, uint64_t{3} * 16 * kBlock);
  reopen();
  for (uint64_t b = 0; b < 32; ++b) {
    expect_tag(v, b, b == 0 ? 3 : (b == 16 || b == 17) ? 2 : 1);
  }
  expect_tag(v, 40, 2);
  expect_clean();
}

TEST_F(StoreTest, DeleteSnapshotWithCloneHidesItUntilOneChildRemains) {
  VolumeId v = create("v");
  write_tag(v, 0, 1, 8);
  auto s = store_->create_snapshot(v, "s");
  ASSERT_TRUE(s.ok());
  auto c = store_->clone_snapshot(*s, "c");
  ASSERT_TRUE(c.ok());
  write_tag(v, 1, 2);
  write_tag(*c, 2, 3);
  ASSERT_TRUE(store_->delete_snapshot(*s).ok());
  EXPECT_TRUE(store_->list_snapshots(v).empty());
  auto all = store_->list_all_snapshots();
  ASSERT_EQ(all.size(), 1u);
  EXPECT_TRUE(all[0].hidden);
  EXPECT_EQ(all[0].children, 2u);
  EXPECT_FALSE(store_->delete_snapshot(*s).ok());  // already deleted
  expect_tag(v, 0, 1);
  expect_tag(v, 1, 2);
  expect_tag(*c, 0, 1, v);
  expect_tag(*c, 1, 1, v);
  expect_tag(*c, 2, 3);
  expect_clean();
  // Deleting the origin volume leaves the clone alone on the hidden snapshot,
  // which is then merged into the clone.
  ASSERT_TRUE(store_->delete_volume(v).ok());
  EXPECT_TRUE(store_->list_all_snapshots().empty());
  expect_tag(*c, 0, 1, v);
  expect_tag(*c, 1, 1, v);
  expect_tag(*c, 2, 3);
  EXPECT_EQ(store_->volume_info(*c)->parent_snapshot, 0u);
  reopen();
  expect_tag(*c, 0, 1, v);
  expect_tag(*c, 2, 3);
  expect_clean();
}

TEST_F(StoreTest, RevertDropsWritesSinceSnapshot) {
  VolumeId v = create("v");
  write_tag(v, 0, 1, 4);
  auto s = store_->create_snapshot(v, "s");
  ASSERT_TRUE(s.ok());
  write_tag(v, 0, 2, 2);
  write_tag(v, 100, 2);
  const uint64_t free_before = store_->stats().free_extents;
  ASSERT_TRUE(store_->revert_volume(v, *s).ok());
  EXPECT_EQ(store_->stats().free_extents, free_before + 2);  // reverted writes freed
  for (uint64_t b = 0; b < 4; ++b) {
    expect_tag(v, b, 1);
  }
  expect_tag(v, 100, 0);
  write_tag(v, 1, 3);
  reopen();
  expect_tag(v, 0, 1);
  expect_tag(v, 1, 3);  // completed (journaled) though never flushed
  expect_tag(v, 100, 0);
  // Revert to a snapshot of another volume is refused.
  VolumeId other = create("other");
  EXPECT_FALSE(store_->revert_volume(other, *s).ok());
  expect_clean();
}

TEST_F(StoreTest, DiscardOfSharedBlocksLeavesSnapshotIntact) {
  VolumeId v = create("v");
  write_tag(v, 0, 1, 32);
  auto s = store_->create_snapshot(v, "s");
  ASSERT_TRUE(s.ok());
  write_tag(v, 20, 2, 4);  // head-only blocks in extent 1
  ASSERT_TRUE(store_->discard(v, 0, 32 * kBlock).ok());
  for (uint64_t b = 0; b < 32; ++b) {
    expect_tag(v, b, 0);
    expect_tag(v, b, 1, v, *s);
  }
  ASSERT_TRUE(store_->write_zeroes(v, 0, kBlock).ok());
  ASSERT_TRUE(store_->commit().ok());
  reopen();
  for (uint64_t b = 0; b < 32; ++b) {
    expect_tag(v, b, 0);
    expect_tag(v, b, 1, v, *s);
  }
  expect_clean();
}

TEST_F(StoreTest, DiscardFreesSpaceWhichIsReusedAfterCommit) {
  VolumeId v = create("v", 64 * kMiB);
  const uint64_t total = store_->stats().free_extents;
  const uint64_t extent = store_->stats().extent_bytes;
  // Fill the whole store.
  Buffer buffer(extent);
  uint64_t written = 0;
  for (uint64_t i = 0; i < total; ++i) {
    ASSERT_TRUE(store_->write(v, i * extent, buffer.span()).ok());
    ++written;
  }
  EXPECT_EQ(store_->stats().free_extents, 0u);
  auto full = store_->write(v, total * extent, buffer.span());
  ASSERT_FALSE(full.ok());
  EXPECT_EQ(full.error().errno_value(), ENOSPC);
  // Start from an almost empty journal (the first commit after open is a
  // checkpoint), so the discard's mapping commit below fits in the journal;
  // had it become a checkpoint - a durable commit - the frees would be
  // released at once.
  reopen();
  ASSERT_TRUE(store_->commit().ok());
  // Discard half: pending until committed.
  ASSERT_TRUE(store_->discard(v, 0, (total / 2) * extent).ok());
  EXPECT_EQ(store_->stats().free_extents, 0u);
  EXPECT_EQ(store_->stats().pending_free_extents, total / 2);
  ASSERT_TRUE(store_->commit().ok());
  EXPECT_EQ(store_->stats().free_extents, total / 2);
  // Reuse: another volume fills the freed space.
  VolumeId w = create("w", 64 * kMiB);
  for (uint64_t i = 0; i < total / 2; ++i) {
    ASSERT_TRUE(store_->write(w, i * extent, buffer.span()).ok());
  }
  EXPECT_EQ(store_->stats().free_extents, 0u);
  expect_tag(v, 0, 0);
  expect_clean();
  // Device discards went down for the freed extents.
  EXPECT_GE(device_->counters().discards, total / 2);
}

TEST_F(StoreTest, DeleteVolumeFreesItsSpace) {
  VolumeId v = create("v");
  write_tag(v, 0, 1, 64);
  auto s = store_->create_snapshot(v, "s");
  ASSERT_TRUE(s.ok());
  write_tag(v, 0, 2, 64);
  const uint64_t total = store_->stats().total_extents;
  EXPECT_EQ(store_->stats().free_extents, total - 8);
  const uint64_t discards = device_->counters().discards;
  ASSERT_TRUE(store_->delete_volume(v).ok());
  EXPECT_EQ(store_->stats().free_extents, total);
  EXPECT_GT(device_->counters().discards, discards);  // passed down after the commit
  EXPECT_TRUE(store_->list_all_snapshots().empty());
  // New volume in the same space reads zeros, not the deleted data.
  VolumeId w = create("w");
  for (uint64_t b = 0; b < 64; ++b) {
    expect_tag(w, b, 0);
  }
  reopen();
  EXPECT_EQ(store_->stats().free_extents, total);
  expect_clean();
}

TEST_F(StoreTest, SpaceAccountingPerVolumeAndSnapshot) {
  VolumeId v = create("v");
  write_tag(v, 0, 1, 20);  // 2 extents, 20 blocks
  auto info = store_->volume_info(v);
  EXPECT_EQ(info->allocated_bytes, uint64_t{2} * 16 * kBlock);
  EXPECT_EQ(info->mapped_bytes, 20 * kBlock);
  auto s = store_->create_snapshot(v, "s");
  info = store_->volume_info(v);
  EXPECT_EQ(info->allocated_bytes, 0u);
  EXPECT_EQ(info->snapshot_count, 1u);
  EXPECT_EQ(store_->snapshot_info(*s)->mapped_bytes, 20 * kBlock);
  write_tag(v, 0, 2);
  EXPECT_EQ(store_->volume_info(v)->mapped_bytes, kBlock);
  const StoreStats stats = store_->stats();
  EXPECT_EQ(stats.total_extents - stats.free_extents, 3u);
  EXPECT_EQ(stats.mapped_extents, 3u);
}

TEST_F(StoreTest, GenerationAndDirtyBitmapPersist) {
  VolumeId v = create("v", 64 * kMiB);
  EXPECT_EQ(*store_->dirty_region_bytes(v), 4 * kMiB);
  ASSERT_TRUE(store_->set_generation(v, 0xABCDEF0123ULL).ok());
  ASSERT_TRUE(store_->mark_dirty(v, 5 * kMiB, 4 * kMiB).ok());  // regions 1 and 2
  ASSERT_TRUE(store_->mark_dirty(v, 63 * kMiB, kMiB).ok());     // region 15
  ASSERT_TRUE(store_->clear_dirty(v, 8 * kMiB, kBlock).ok());   // region 2
  EXPECT_FALSE(store_->mark_dirty(v, 64 * kMiB, kBlock).ok());
  ASSERT_TRUE(store_->commit().ok());
  reopen();
  EXPECT_EQ(store_->volume_info(v)->generation, 0xABCDEF0123ULL);
  auto bits = store_->dirty_bitmap(v);
  ASSERT_TRUE(bits.ok());
  ASSERT_EQ(bits->size(), 1u);
  EXPECT_EQ((*bits)[0], (uint64_t{1} << 1) | (uint64_t{1} << 15));
  // A huge volume gets coarser regions (at most 32768 bits).
  VolumeId big = create("big", uint64_t{1} << 40);
  EXPECT_EQ(*store_->dirty_region_bytes(big), (uint64_t{1} << 40) / 32768);
  ASSERT_TRUE(store_->mark_dirty(big, (uint64_t{1} << 40) - kBlock, kBlock).ok());
  // Grow coarsens: the dirty region stays dirty.
  ASSERT_TRUE(store_->grow_volume(big, uint64_t{1} << 41).ok());
  reopen();
  auto big_bits = store_->dirty_bitmap(big);
  ASSERT_TRUE(big_bits.ok());
  const uint64_t region = *store_->dirty_region_bytes(big);
  EXPECT_EQ(region, (uint64_t{1} << 41) / 32768);
  const uint64_t r = ((uint64_t{1} << 40) - kBlock) / region;
  EXPECT_TRUE(((*big_bits)[r / 64] >> (r % 64)) & 1);
  expect_clean();
}

TEST_F(StoreTest, ThousandsOfVolumes) {
  FormatOptions options = small();
  options.max_volumes = 3000;
  options.max_layers = 3100;
  format_and_open(192 * kMiB, options);
  constexpr int kVolumes = 2500;
  std::vector<VolumeId> ids;
  for (int i = 0; i < kVolumes; ++i) {
    auto id = store_->create_volume("vol-" + std::to_string(i), kMiB);
    ASSERT_TRUE(id.ok()) << i << ": " << id.error().to_string();
    ids.push_back(*id);
  }
  for (int i = 0; i < kVolumes; i += 97) {
    write_tag(ids[static_cast<size_t>(i)], 7, static_cast<uint64_t>(i) + 1);
  }
  ASSERT_TRUE(store_->commit().ok());
  EXPECT_GT(store_->stats().checkpoints, 0u);  // 2500 volume records outgrow the journal
  reopen();
  EXPECT_EQ(store_->list_volumes().size(), static_cast<size_t>(kVolumes));
  for (int i = 0; i < kVolumes; i += 97) {
    expect_tag(ids[static_cast<size_t>(i)], 7, static_cast<uint64_t>(i) + 1);
  }
  EXPECT_EQ(*store_->find_volume("vol-1234"), ids[1234]);
  expect_clean();
}

TEST_F(StoreTest, JournalWrapsIntoCheckpoints) {
  FormatOptions options = small();
  options.journal_blocks = 8;
  format_and_open(64 * kMiB, options);
  VolumeId v = create("v");
  for (uint64_t round = 1; round <= 60; ++round) {
    write_tag(v, (round * 37) % 4096, round);
    ASSERT_TRUE(store_->commit().ok());
  }
  EXPECT_GT(store_->stats().checkpoints, 3u);
  reopen();
  for (uint64_t round = 1; round <= 60; ++round) {
    // later rounds may overwrite earlier blocks; only check the last writer
    bool overwritten = false;
    for (uint64_t later = round + 1; later <= 60; ++later) {
      overwritten |= (later * 37) % 4096 == (round * 37) % 4096;
    }
    if (!overwritten) {
      expect_tag(v, (round * 37) % 4096, round);
    }
  }
  expect_clean();
}

TEST_F(StoreTest, AsyncManyInFlightWithSmallRequestPool) {
  OpenOptions options;
  options.max_device_requests = 16;
  reopen(options);
  VolumeId v = create("v");
  auto s = store_->create_snapshot(v, "empty");
  ASSERT_TRUE(s.ok());
  constexpr int kIos = 200;
  struct Op {
    StoreIo io;
    int result = 1;
  };
  std::vector<Op> ops(kIos);
  Buffer data(size_t{kIos} * 4 * kBlock);
  for (int i = 0; i < kIos; ++i) {
    for (int b = 0; b < 4; ++b) {
      const uint64_t block = static_cast<uint64_t>(i) * 5 + static_cast<uint64_t>(b);
      fill_block(data.block(static_cast<size_t>(i) * 4 + static_cast<size_t>(b)),
                 BlockTag{v, block, 9});
    }
    StoreIo& io = ops[static_cast<size_t>(i)].io;
    io.op = StoreOp::kWrite;
    io.volume = v;
    io.offset = static_cast<uint64_t>(i) * 5 * kBlock;
    io.length = 4 * kBlock;
    io.buffer = data.data() + static_cast<size_t>(i) * 4 * kBlock;
    io.user_data = &ops[static_cast<size_t>(i)];
    io.on_complete = [](StoreIo& done, int result) {
      static_cast<Op*>(done.user_data)->result = result;
    };
    store_->submit(io);
  }
  EXPECT_EQ(store_->in_flight(), static_cast<unsigned>(kIos));
  StoreIo flush;
  int flush_result = 1;
  flush.op = StoreOp::kFlush;
  flush.user_data = &flush_result;
  flush.on_complete = [](StoreIo& done, int result) {
    *static_cast<int*>(done.user_data) = result;
  };
  while (store_->in_flight() > 0) {
    store_->poll(true);
  }
  store_->submit(flush);
  while (store_->in_flight() > 0) {
    store_->poll(true);
  }
  EXPECT_EQ(flush_result, 0);
  for (auto& op : ops) {
    EXPECT_EQ(op.result, 0);
  }
  reopen();
  for (int i = 0; i < kIos; i += 7) {
    for (uint64_t b = 0; b < 5; ++b) {
      expect_tag(v, static_cast<uint64_t>(i) * 5 + b, b < 4 ? 9 : 0);
    }
  }
  expect_clean();
}

TEST_F(StoreTest, FuaWriteIsDurableOnCompletion) {
  VolumeId v = create("v");
  Buffer buffer(kBlock);
  fill_block(buffer.span(), BlockTag{v, 11, 5});
  StoreIo io;
  int result = 1;
  io.op = StoreOp::kWrite;
  io.fua = true;
  io.volume = v;
  io.offset = 11 * kBlock;
  io.length = kBlock;
  io.buffer = buffer.data();
  io.user_data = &result;
  io.on_complete = [](StoreIo& done, int r) { *static_cast<int*>(done.user_data) = r; };
  store_->submit(io);
  while (store_->in_flight() > 0) {
    store_->poll(true);
  }
  EXPECT_EQ(result, 0);
  reopen();  // no explicit flush
  expect_tag(v, 11, 5);
}

TEST_F(StoreTest, BadRequestsGetErrors) {
  VolumeId v = create("v", kMiB);
  Buffer buffer(kBlock);
  EXPECT_EQ(store_->write(v, 100, buffer.span()).error().errno_value(), EINVAL);
  EXPECT_EQ(store_->write(v, kMiB, buffer.span()).error().errno_value(), EINVAL);
  EXPECT_EQ(store_->read(v + 100, 0, buffer.span()).error().errno_value(), ENOENT);
  auto s = store_->create_snapshot(v, "s");
  ASSERT_TRUE(s.ok());
  StoreIo io;
  io.op = StoreOp::kWrite;
  io.snapshot = *s;
  io.length = kBlock;
  io.buffer = buffer.data();
  int result = 0;
  io.user_data = &result;
  io.on_complete = [](StoreIo& done, int r) { *static_cast<int*>(done.user_data) = r; };
  store_->submit(io);
  store_->poll(true);
  EXPECT_EQ(result, -EROFS);
}

}  // namespace
}  // namespace ublkvol::dbs
