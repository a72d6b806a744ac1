// Snapshot create / revert / delete / clone while a replica rebuilds, and on
// replicas that lack a snapshot (issue 12 item 3): every operation reaches
// every replica the volume writes to or none, and afterwards the replicas
// are byte-identical (DBS stores on real files).
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
constexpr uint64_t kSize = 32 * kMiB;
constexpr uint64_t kStore = 128 * kMiB;

using Names = std::vector<std::string>;

void expect_all_equal(DbsFileCluster& cluster, unsigned n, const std::vector<std::byte>& model,
                      const std::string& when) {
  for (unsigned r = 0; r < n; ++r) {
    std::vector<std::byte> c = cluster.content(r);
    uint64_t first_bad = kSize;
    for (uint64_t b = 0; b < kSize; b += 4096) {
      if (std::memcmp(c.data() + b, model.data() + b, 4096) != 0) {
        first_bad = b;
        break;
      }
    }
    EXPECT_EQ(first_bad, kSize) << when << ": replica " << r << " differs at byte " << first_bad;
  }
}

void expect_busy_naming(const Status& st, const std::string& part) {
  ASSERT_FALSE(st.ok()) << "accepted while replica 3 rebuilds";
  EXPECT_EQ(st.error().errno_value(), EBUSY) << st.error().to_string();
  EXPECT_NE(st.error().message().find(part), std::string::npos) << st.error().message();
  EXPECT_NE(st.error().message().find("is rebuilding ("), std::string::npos)
      << st.error().message();
}

TEST(SnapshotsAndRebuild, AllOrNothingOnEveryReplicaAndNoDivergence) {
  DbsFileCluster cluster(kSize);
  for (int i = 0; i < 4; ++i) {
    cluster.add(kStore);
  }
  ReplicatedVolumeOptions o;
  o.name = "snapvol";
  o.dirty_clear_interval = std::chrono::milliseconds(0);  // checkpoints only when asked
  auto v = ReplicatedVolume::open(o, cluster.bindings(3));
  ASSERT_TRUE(v.ok()) << v.error().to_string();
  auto& volume = *v;
  auto q = volume->open_queue(0);
  ASSERT_TRUE(q.ok());
  std::vector<std::byte> model(kSize);
  ASSERT_NO_FATAL_FAILURE(testing::write_pattern(**q, 0, kSize, 1, &model));
  ASSERT_TRUE(volume->create_snapshot("s0").ok());
  const std::vector<std::byte> at_s0 = model;
  ASSERT_NO_FATAL_FAILURE(testing::write_pattern(**q, 0, 8 * kMiB, 2, &model));

  // 1. A fourth replica rebuilds, throttled so it is still copying.
  volume->set_rebuild_rate(kMiB);
  auto added = volume->add_replica(cluster.binding(3));
  ASSERT_TRUE(added.ok()) << added.error().to_string();
  ASSERT_EQ(*added, 3U);
  ASSERT_TRUE(volume->wait_rebuild_progress(kMiB));
  ASSERT_EQ(volume->status().replicas[3].state, ReplicaState::kRebuilding);
  expect_busy_naming(volume->create_snapshot("s1"), "replica 3");
  expect_busy_naming(volume->revert_snapshot("s0"), "replica 3");
  expect_busy_naming(volume->delete_snapshot("s0"), "replica 3");
  auto clone = volume->clone_snapshot("s0", "c");
  ASSERT_FALSE(clone.ok());
  EXPECT_EQ(clone.error().errno_value(), EBUSY) << clone.error().to_string();
  for (unsigned r = 0; r < 3; ++r) {
    EXPECT_EQ(cluster.snapshots(r), Names{"s0"}) << "replica " << r;
    EXPECT_FALSE(cluster.has_volume(r, "c"));
  }
  EXPECT_EQ(cluster.snapshots(3), Names{});
  volume->set_rebuild_rate(0);
  Status rb = volume->wait_rebuild();
  ASSERT_TRUE(rb.ok()) << rb.error().to_string();
  ASSERT_EQ(volume->status().in_sync, 4U);
  testing::drain(**q);
  expect_all_equal(cluster, 4, model, "after the rebuild");

  // 2. Replica 3 was rebuilt after s0 (rebuilds copy the head, not
  //    snapshots): revert and clone to s0 are refused up front, naming it,
  //    and change nothing.
  Status revert = volume->revert_snapshot("s0");
  ASSERT_FALSE(revert.ok());
  EXPECT_NE(revert.error().message().find("replica 3"), std::string::npos)
      << revert.error().message();
  EXPECT_NE(revert.error().message().find("nothing changed"), std::string::npos)
      << revert.error().message();
  expect_all_equal(cluster, 4, model, "after the refused revert");
  clone = volume->clone_snapshot("s0", "c");
  ASSERT_FALSE(clone.ok());
  EXPECT_NE(clone.error().message().find("replica 3"), std::string::npos)
      << clone.error().message();
  for (unsigned r = 0; r < 4; ++r) {
    EXPECT_FALSE(cluster.has_volume(r, "c")) << "replica " << r;
  }
  EXPECT_EQ(volume->status().in_sync, 4U);
  // Delete reaches every replica that has it.
  Status del = volume->delete_snapshot("s0");
  ASSERT_TRUE(del.ok()) << del.error().to_string();
  for (unsigned r = 0; r < 4; ++r) {
    EXPECT_EQ(cluster.snapshots(r), Names{}) << "replica " << r;
  }
  (void)at_s0;

  // 3. A create that fails on one replica is undone on the others.
  ASSERT_TRUE(cluster
                  .on(1,
                      [](dbs::Store& s) -> Status {
                        auto id = s.find_volume("vol");
                        if (!id.ok()) {
                          return id.error();
                        }
                        auto snap = s.create_snapshot(*id, "taken");
                        return snap.ok() ? ok_status() : Status(snap.error());
                      })
                  .ok());
  Status dup = volume->create_snapshot("taken");
  ASSERT_FALSE(dup.ok());
  EXPECT_NE(dup.error().message().find("replica 1"), std::string::npos) << dup.error().message();
  EXPECT_EQ(cluster.snapshots(0), Names{});
  EXPECT_EQ(cluster.snapshots(2), Names{});
  EXPECT_EQ(cluster.snapshots(3), Names{});

  // 4. Snapshot, clone and revert with every replica in sync reach all four;
  //    a clone that fails on one replica is deleted on the others.
  ASSERT_TRUE(volume->create_snapshot("s2").ok());
  const std::vector<std::byte> at_s2 = model;
  for (unsigned r = 0; r < 4; ++r) {
    Names want = r == 1 ? Names{"taken", "s2"} : Names{"s2"};
    EXPECT_EQ(cluster.snapshots(r), want) << "replica " << r;
  }
  ASSERT_TRUE(cluster
                  .on(2,
                      [](dbs::Store& s) -> Status {
                        auto id = s.create_volume("c", 4096);
                        return id.ok() ? ok_status() : Status(id.error());
                      })
                  .ok());
  clone = volume->clone_snapshot("s2", "c");
  ASSERT_FALSE(clone.ok());
  EXPECT_NE(clone.error().message().find("replica 2"), std::string::npos)
      << clone.error().message();
  for (unsigned r : {0U, 1U, 3U}) {
    EXPECT_FALSE(cluster.has_volume(r, "c")) << "replica " << r;
    EXPECT_FALSE(cluster.has_volume(r, "c.engine-meta")) << "replica " << r;
  }
  clone = volume->clone_snapshot("s2", "d");
  ASSERT_TRUE(clone.ok()) << clone.error().to_string();
  EXPECT_EQ(*clone, 0xFU);

  // 5. Replica 2 is out while the volume is written and reverted: the
  //    revert is not in the dirty bitmaps, so it must rebuild fully.
  ASSERT_NO_FATAL_FAILURE(testing::write_pattern(**q, 8 * kMiB, 4 * kMiB, 3, &model));
  ASSERT_TRUE(volume->checkpoint().ok());  // bitmaps empty from here
  ASSERT_TRUE(volume->fail_replica(2, "test").ok());
  ASSERT_NO_FATAL_FAILURE(testing::write_pattern(**q, 16 * kMiB, 4 * kMiB, 4, &model));
  testing::drain(**q);
  revert = volume->revert_snapshot("s2");
  ASSERT_TRUE(revert.ok()) << revert.error().to_string();
  model = at_s2;
  ASSERT_TRUE(volume->start_rebuild(2).ok());
  rb = volume->wait_rebuild();
  ASSERT_TRUE(rb.ok()) << rb.error().to_string();
  ASSERT_EQ(volume->status().in_sync, 4U);
  testing::drain(**q);
  expect_all_equal(cluster, 4, model, "after revert + rebuild of the replica that was out");
  auto report = volume->verify();
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->mismatches.empty());
  q->reset();
  EXPECT_TRUE(volume->close().ok());
}

}  // namespace
}  // namespace ublkvol::engine
