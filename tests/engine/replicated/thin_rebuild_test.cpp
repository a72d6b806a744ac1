// Thin rebuild (issue 12 item 4): a rebuild copies only what is mapped on
// the source, so a new replica takes about the data's space, not the
// volume's; a target store that cannot hold the mapped data is refused
// before anything is written. DBS stores on real files.
#include <cerrno>
#include <cstring>
#include <gtest/gtest.h>
#include <string>
#include <vector>

#include "ublkvol/engine/replicated_volume.h"

#include "dbs_file_cluster.h"
#include "replica_test_util.h"

namespace ublkvol::engine {
namespace {

using testing::DbsFileCluster;

constexpr uint64_t kMiB = 1U << 20U;
constexpr uint64_t kSize = 128 * kMiB;  // larger than the small stores below

void expect_equal(DbsFileCluster& cluster, unsigned r, const std::vector<std::byte>& model) {
  std::vector<std::byte> c = cluster.content(r);
  uint64_t first_bad = kSize;
  for (uint64_t b = 0; b < kSize; b += 4096) {
    if (std::memcmp(c.data() + b, model.data() + b, 4096) != 0) {
      first_bad = b;
      break;
    }
  }
  EXPECT_EQ(first_bad, kSize) << "replica " << r << " differs at byte " << first_bad;
}

TEST(ThinRebuild, CopiesOnlyMappedDataAndRefusesATooSmallStore) {
  DbsFileCluster cluster(kSize);
  cluster.add(160 * kMiB);
  cluster.add(160 * kMiB);
  const unsigned small = cluster.add(48 * kMiB);  // holds the data, not the volume
  const unsigned tiny = cluster.add(24 * kMiB);
  ReplicatedVolumeOptions o;
  o.name = "thin";
  auto v = ReplicatedVolume::open(o, cluster.bindings(2));
  ASSERT_TRUE(v.ok()) << v.error().to_string();
  auto& volume = *v;
  auto q = volume->open_queue(0);
  ASSERT_TRUE(q.ok());
  std::vector<std::byte> model(kSize);
  // 16 MiB of data spread over the volume (1 MiB every 8 MiB), one block
  // written and then zeroed (mapped on neither after write-zeroes).
  for (uint64_t at = 0; at < kSize; at += 8 * kMiB) {
    ASSERT_NO_FATAL_FAILURE(testing::write_pattern(**q, at, kMiB, 1, &model));
  }
  auto zero = testing::make_buffer(4096);
  std::memset(zero.get(), 0, 4096);
  ASSERT_EQ(testing::run_io(**q, VolumeOp::kWriteZeroes, 3 * kMiB, 4096, zero.get()), 0);
  const uint64_t mapped = 16 * kMiB;

  // 1. The new replica on a store smaller than the volume: the rebuild
  //    fits and takes about the mapped data.
  const uint64_t free_before = cluster.free_bytes(small);
  auto added = volume->add_replica(cluster.binding(small));
  ASSERT_TRUE(added.ok()) << added.error().to_string();
  Status rb = volume->wait_rebuild();
  ASSERT_TRUE(rb.ok()) << rb.error().to_string();
  ASSERT_EQ(volume->status().in_sync, 3U);
  EXPECT_LE(volume->status().rebuild.total_bytes, mapped) << "copied more than the mapped data";
  testing::drain(**q);
  const uint64_t used = free_before - cluster.free_bytes(small);
  EXPECT_LE(used, mapped + 2 * kMiB)
      << "the rebuild took " << used << " bytes for " << mapped << " bytes of data";
  EXPECT_GE(used, mapped) << "the data must be there";
  for (unsigned r = 0; r < 3; ++r) {
    expect_equal(cluster, r, model);
  }

  // 2. More data than the tiny store holds: refused up front, naming both
  //    numbers; nothing written there, the volume unchanged.
  for (uint64_t at = 4 * kMiB; at < kSize; at += 8 * kMiB) {
    ASSERT_NO_FATAL_FAILURE(testing::write_pattern(**q, at, kMiB, 2, &model));
  }
  testing::drain(**q);
  const uint64_t tiny_free = cluster.free_bytes(tiny);
  auto refused = volume->add_replica(cluster.binding(tiny));
  ASSERT_FALSE(refused.ok()) << "a store with " << tiny_free << " bytes free was accepted";
  EXPECT_EQ(refused.error().errno_value(), ENOSPC) << refused.error().to_string();
  EXPECT_NE(refused.error().message().find("has " + std::to_string(tiny_free) + " bytes free"),
            std::string::npos)
      << refused.error().message();
  EXPECT_NE(refused.error().message().find("the copy needs " + std::to_string(32 * kMiB)),
            std::string::npos)
      << refused.error().message();
  EXPECT_EQ(cluster.free_bytes(tiny), tiny_free);
  EXPECT_EQ(volume->status().replicas.size(), 3U);
  EXPECT_EQ(volume->status().in_sync, 3U);

  auto report = volume->verify();
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->mismatches.empty());
  q->reset();
  EXPECT_TRUE(volume->close().ok());
}

}  // namespace
}  // namespace ublkvol::engine
