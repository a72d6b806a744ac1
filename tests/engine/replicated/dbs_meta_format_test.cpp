// The DBS replica metadata block's formats (docs/on-disk-format.md, "Engine
// metadata volume"): format 2 round-trips the replica id and the in-sync set;
// a format 1 block (before them) still opens, as "no id, set unknown".
#include <cstdlib>
#include <cstring>
#include <gtest/gtest.h>
#include <memory>
#include <span>

#include "ublkvol/common/crc32c.h"
#include "ublkvol/dbs/memory_device.h"
#include "ublkvol/dbs/store.h"
#include "ublkvol/engine/dbs_replica_store.h"

namespace ublkvol::engine {
namespace {

constexpr uint64_t kVolumeBytes = 4U << 20U;

struct StoreOnMemory {
  dbs::MemoryDevice device{64U << 20U};
  std::unique_ptr<dbs::Store> store;
  StoreOnMemory() {
    EXPECT_TRUE(dbs::Store::format(device).ok());
    auto s = dbs::Store::open(device);
    EXPECT_TRUE(s.ok()) << s.error().to_string();
    store = std::move(s.value());
    Status made = create_dbs_replica(*store, "vol", kVolumeBytes);
    EXPECT_TRUE(made.ok()) << made.error().to_string();
  }
  ReplicaMeta reopened_meta() const {
    auto replica = open_dbs_replica(*store, "vol");
    EXPECT_TRUE(replica.ok()) << replica.error().to_string();
    return replica.ok() ? (*replica)->meta() : ReplicaMeta{};
  }
};

TEST(DbsReplicaMetaFormat, ReplicaIdAndInSyncSetRoundTrip) {
  StoreOnMemory s;
  ReplicaMeta m;
  m.fresh = false;
  m.volume_uuid = 0x1111;
  m.generation = 0x2222;
  m.history[0] = 0x3333;
  m.bitmap_base = 0x2222;
  m.replica_id = 0x4444;
  m.in_sync = {0x4444, 0x5555, 0, 0};
  {
    auto replica = open_dbs_replica(*s.store, "vol");
    ASSERT_TRUE(replica.ok()) << replica.error().to_string();
    ASSERT_TRUE((*replica)->write_meta(m).ok());
  }
  const ReplicaMeta back = s.reopened_meta();
  EXPECT_EQ(back.generation, 0x2222U);
  EXPECT_EQ(back.history[0], 0x3333U);
  EXPECT_EQ(back.replica_id, 0x4444U);
  EXPECT_EQ(back.in_sync, m.in_sync);
}

TEST(DbsReplicaMetaFormat, Format1BlockOpensWithUnknownSet) {
  StoreOnMemory s;
  // Format 1: magic "UBVDBSM1", crc over the first 120 bytes (magic, crc,
  // flags, volume_uuid, generation, history[8], bitmap_base,
  // rebuild_generation, rebuild_watermark) with crc = 0.
  auto* raw = static_cast<std::byte*>(std::aligned_alloc(4096, 4096));  // DBS I/O alignment
  std::unique_ptr<std::byte, decltype(&std::free)> owner(raw, &std::free);
  std::span<std::byte> block(raw, 4096);
  std::memset(block.data(), 0, block.size());
  auto put64 = [&](size_t at, uint64_t v) { std::memcpy(block.data() + at, &v, sizeof(v)); };
  std::memcpy(block.data(), "UBVDBSM1", 8);
  put64(16, 0xAAAA);  // volume_uuid (flags 0: not fresh, not rebuilding)
  put64(24, 0xBBBB);  // generation
  put64(32, 0xCCCC);  // history[0]
  put64(96, 0xBBBB);  // bitmap_base
  const uint32_t crc = crc32c(block.data(), 120);
  std::memcpy(block.data() + 8, &crc, sizeof(crc));
  auto meta_volume = s.store->find_volume("vol.engine-meta");
  ASSERT_TRUE(meta_volume.ok());
  Status written = s.store->write(*meta_volume, 0, block);
  ASSERT_TRUE(written.ok()) << written.error().to_string();
  ASSERT_TRUE(s.store->commit().ok());

  const ReplicaMeta old = s.reopened_meta();
  EXPECT_FALSE(old.fresh);
  EXPECT_EQ(old.volume_uuid, 0xAAAAU);
  EXPECT_EQ(old.generation, 0xBBBBU);
  EXPECT_EQ(old.history[0], 0xCCCCU);
  EXPECT_EQ(old.bitmap_base, 0xBBBBU);
  EXPECT_EQ(old.replica_id, 0U);
  EXPECT_EQ(old.in_sync[0], 0U);
}

}  // namespace
}  // namespace ublkvol::engine
