// Replica membership changes on a running volume: add a fresh replica under
// a concurrent workload (online full rebuild, progress visible), replace a
// replica whose store thread died, remove replicas down to min-replicas.
// After each: the replicas are byte-identical and equal to the model.
#include <condition_variable>
#include <gtest/gtest.h>
#include <mutex>
#include <thread>

#include "ublkvol/engine/replicated_volume.h"

#include "replica_test_util.h"
#include "workload.h"

namespace ublkvol::engine {
namespace {

using testing::Cluster;

constexpr uint64_t kSize = 8U << 20U;

// Lets the test thread act while the workload is running: the workload's
// thread 0 opens the gate after N completions and goes on submitting.
struct Gate {
  std::mutex m;
  std::condition_variable cv;
  bool open = false;
  void release() {
    std::lock_guard lock(m);
    open = true;
    cv.notify_all();
  }
  void wait() {
    std::unique_lock lock(m);
    cv.wait(lock, [&] { return open; });
  }
};

std::vector<ReplicaBinding> first(Cluster& cluster, unsigned n) {
  auto b = cluster.bindings();
  b.resize(n);
  return b;
}

testing::WorkloadOptions workload_options(Gate& gate) {
  testing::WorkloadOptions wo;
  wo.threads = 2;
  wo.ops_per_thread = 1500;
  wo.hot_bytes = kSize;  // writes everywhere, including the range being copied
  wo.trigger_after = 100;
  wo.trigger = [&gate] { gate.release(); };
  return wo;
}

ReplicaState wait_state(ReplicatedVolume& v, unsigned r, ReplicaState want) {
  // Polls a condition the monitor sets within a tick (no timed sleep).
  for (;;) {
    ReplicaState s = v.status().replicas[r].state;
    if (s == want) {
      return s;
    }
    std::this_thread::yield();
  }
}

TEST(ReplicatedMembership, AddReplicaUnderWritesRebuildsOnline) {
  Cluster cluster;
  cluster.create(4, kSize);
  ReplicatedVolumeOptions o;
  o.queues = 2;
  o.rebuild_chunk_bytes = 128 << 10;
  o.rebuild_bytes_per_second = 16 << 20;  // ~0.5 s: overlaps the workload
  auto opened = ReplicatedVolume::open(o, first(cluster, 3));
  ASSERT_TRUE(opened.ok()) << opened.error().to_string();
  auto& volume = *opened;
  Gate gate;
  testing::Workload w(*volume, workload_options(gate));
  std::thread runner([&] { w.run(); });
  gate.wait();
  Result<unsigned> added = volume->add_replica(cluster.bindings()[3]);
  ASSERT_TRUE(added.ok()) << added.error().to_string();
  EXPECT_EQ(*added, 3U);
  // Progress is visible while the copy runs.
  ASSERT_TRUE(volume->wait_rebuild_progress(256 << 10));
  VolumeStatus mid = volume->status();
  EXPECT_TRUE(mid.rebuild.active);
  EXPECT_EQ(mid.rebuild.targets, 1U << 3U);
  EXPECT_EQ(mid.rebuild.total_bytes, kSize);
  EXPECT_GT(mid.rebuild.percent, 0.0);
  EXPECT_LT(mid.rebuild.percent, 100.0);
  EXPECT_GT(mid.rebuild.bytes_per_second, 0.0);
  EXPECT_GT(mid.rebuild.eta_seconds, 0.0);
  EXPECT_EQ(mid.replicas.size(), 4U);
  EXPECT_EQ(mid.replicas[3].state, ReplicaState::kRebuilding);
  runner.join();
  volume->set_rebuild_rate(0);
  ASSERT_TRUE(volume->wait_rebuild().ok());
  EXPECT_EQ(w.errors.load(), 0U);
  VolumeStatus st = volume->status();
  EXPECT_EQ(st.in_sync, 4U);
  auto report = volume->verify();
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->replicas_compared, 0b1111U);
  EXPECT_TRUE(report->mismatches.empty());
  EXPECT_TRUE(volume->close().ok());
  testing::expect_replicas_match_model(cluster, 0b1111, kSize, w);
}

TEST(ReplicatedMembership, ReplaceDeadReplicaOnline) {
  Cluster cluster;
  cluster.create(4, kSize);
  ReplicatedVolumeOptions o;
  o.queues = 2;
  o.io_deadline = std::chrono::milliseconds(500);
  auto opened = ReplicatedVolume::open(o, first(cluster, 3));
  ASSERT_TRUE(opened.ok());
  auto& volume = *opened;
  Gate gate;
  auto wo = workload_options(gate);
  wo.trigger = [&] {
    cluster.replicas[0].thread->kill_for_testing();
    gate.release();
  };
  testing::Workload w(*volume, wo);
  std::thread runner([&] { w.run(); });
  gate.wait();
  wait_state(*volume, 0, ReplicaState::kFailed);
  // A live replica is not replaced; the new store must not be a member.
  EXPECT_EQ(volume->replace_replica(1, cluster.bindings()[3]).error().errno_value(), EBUSY);
  EXPECT_EQ(volume->replace_replica(0, cluster.bindings()[1]).error().errno_value(), EINVAL);
  // Index 0 gets the fresh store on cluster replica 3, while I/O runs.
  Status st = volume->replace_replica(0, cluster.bindings()[3]);
  ASSERT_TRUE(st.ok()) << st.error().to_string();
  runner.join();
  ASSERT_TRUE(volume->wait_rebuild().ok());
  EXPECT_EQ(w.errors.load(), 0U);
  VolumeStatus vs = volume->status();
  EXPECT_EQ(vs.in_sync, 3U);
  EXPECT_EQ(vs.replicas[0].name, std::string(cluster.replicas[3].store->name()));
  EXPECT_TRUE(volume->verify()->mismatches.empty());
  EXPECT_TRUE(volume->close().ok());
  // The dead replica's store is no longer used; the others match the model.
  testing::expect_replicas_match_model(cluster, 0b1110, kSize, w);
}

TEST(ReplicatedMembership, RemoveRespectsMinReplicas) {
  Cluster cluster;
  cluster.create(3, kSize);
  ReplicatedVolumeOptions o;
  o.queues = 2;
  o.min_replicas = 2;
  auto opened = ReplicatedVolume::open(o, cluster.bindings());
  ASSERT_TRUE(opened.ok());
  auto& volume = *opened;
  uint64_t gen_before = volume->status().generation;
  Gate gate;
  testing::Workload w(*volume, workload_options(gate));
  std::thread runner([&] { w.run(); });
  gate.wait();
  Status st = volume->remove_replica(2);
  ASSERT_TRUE(st.ok()) << st.error().to_string();
  // 2 in sync = min-replicas: no further removal.
  Status refused = volume->remove_replica(1);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().errno_value(), EBUSY);
  EXPECT_NE(refused.error().to_string().find("min-replicas"), std::string::npos);
  EXPECT_EQ(volume->remove_replica(2).error().errno_value(), EINVAL);
  // The removed store is no longer touched: its thread can go.
  cluster.replicas[2].thread->stop();
  runner.join();
  EXPECT_EQ(w.errors.load(), 0U);
  VolumeStatus vs = volume->status();
  EXPECT_EQ(vs.replicas[2].state, ReplicaState::kRemoved);
  EXPECT_EQ(vs.in_sync, 2U);
  EXPECT_TRUE(vs.online);
  EXPECT_NE(vs.generation, gen_before);  // survivors moved on without it
  EXPECT_TRUE(volume->verify()->mismatches.empty());
  EXPECT_TRUE(volume->close().ok());  // checkpoints: every present replica in sync
  testing::expect_replicas_match_model(cluster, 0b011, kSize, w);
}

}  // namespace
}  // namespace ublkvol::engine
