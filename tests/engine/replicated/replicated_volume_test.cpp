// Replicated volume: data path basics and the concurrency test (several
// queue threads, overlapping requests, all replicas identical to the model).
#include "ublkvol/engine/replicated_volume.h"

#include <unistd.h>

#include <cstring>
#include <gtest/gtest.h>

#include "ublkvol/dbs/file_device.h"

#include "replica_test_util.h"
#include "workload.h"

namespace ublkvol::engine {
namespace {

using testing::Cluster;
using testing::make_buffer;
using testing::open_volume;
using testing::run_io;

constexpr uint64_t kSize = 8U << 20U;
// Offsets and lengths in blocks are multiplied in 64 bits, never in int.
constexpr uint64_t kBlock = 4096;

TEST(ReplicatedVolume, WriteReadFlushDiscardReachEveryReplica) {
  Cluster cluster;
  cluster.create(3, kSize);
  ReplicatedVolumeOptions options;
  auto volume = open_volume(cluster, options);
  ASSERT_TRUE(volume);
  EXPECT_EQ(volume->info().size_bytes, kSize);
  auto q = volume->open_queue(0);
  ASSERT_TRUE(q.ok());
  auto buf = make_buffer(64 << 10);
  for (uint32_t b = 0; b < 16; ++b) {
    testing::fill_block(buf.get() + b * kBlock, 7, 100 + b);
  }
  EXPECT_EQ(run_io(**q, VolumeOp::kWrite, 100 * kBlock, 64 << 10, buf.get()), 0);
  EXPECT_EQ(run_io(**q, VolumeOp::kWrite, 100 * kBlock, 4096, buf.get(), /*fua=*/true), 0);
  EXPECT_EQ(run_io(**q, VolumeOp::kFlush, 0, 0, nullptr), 0);
  auto rd = make_buffer(64 << 10);
  std::memset(rd.get(), 0xAB, 64 << 10);
  EXPECT_EQ(run_io(**q, VolumeOp::kRead, 100 * kBlock, 64 << 10, rd.get()), 0);
  EXPECT_EQ(std::memcmp(rd.get(), buf.get(), 64 << 10), 0);
  for (unsigned r = 0; r < 3; ++r) {
    EXPECT_EQ(std::memcmp(cluster.data(r, 100 * kBlock), buf.get(), 64 << 10), 0) << r;
  }
  EXPECT_EQ(run_io(**q, VolumeOp::kWriteZeroes, 104 * kBlock, 8192, nullptr), 0);
  EXPECT_EQ(run_io(**q, VolumeOp::kDiscard, 108 * kBlock, 4096, nullptr), 0);
  for (unsigned r = 0; r < 3; ++r) {
    EXPECT_EQ(testing::block_id(cluster.data(r, 104 * kBlock), 104), 0U);
    EXPECT_EQ(testing::block_id(cluster.data(r, 105 * kBlock), 105), 0U);
    EXPECT_EQ(testing::block_id(cluster.data(r, 108 * kBlock), 108), 0U);
    EXPECT_EQ(testing::block_id(cluster.data(r, 106 * kBlock), 106), 7U);
  }
  // Every replica saw the flush and the FUA write.
  for (unsigned r = 0; r < 3; ++r) {
    EXPECT_GE(cluster.replicas[r].memory->counters().flushes, 1U);
    EXPECT_GE(cluster.replicas[r].memory->counters().fua_writes, 1U);
  }
  q->reset();
  EXPECT_TRUE(volume->close().ok());
}

TEST(ReplicatedVolume, RejectsBadRequestsAndOptions) {
  Cluster cluster;
  cluster.create(2, kSize);
  ReplicatedVolumeOptions bad;
  bad.min_replicas = 3;
  auto v = ReplicatedVolume::open(bad, cluster.bindings());
  ASSERT_FALSE(v.ok());
  EXPECT_NE(v.error().message().find("min-replicas"), std::string::npos);

  auto volume = open_volume(cluster, ReplicatedVolumeOptions{});
  ASSERT_TRUE(volume);
  auto q = volume->open_queue(0);
  ASSERT_TRUE(q.ok());
  EXPECT_FALSE(volume->open_queue(0).ok());  // already open
  EXPECT_FALSE(volume->open_queue(1).ok());  // no such queue
  auto buf = make_buffer(8192);
  EXPECT_EQ(run_io(**q, VolumeOp::kWrite, 1, 4096, buf.get()), -EINVAL);
  EXPECT_EQ(run_io(**q, VolumeOp::kWrite, kSize, 4096, buf.get()), -EINVAL);
  EXPECT_EQ(run_io(**q, VolumeOp::kRead, 0, 4096, nullptr), -EINVAL);
  EXPECT_EQ(run_io(**q, VolumeOp::kRead, 0, 4096, buf.get() + 1), -EINVAL);
  q->reset();
}

TEST(ReplicatedVolume, QueueDepthOverflowWaitsInsteadOfFailing) {
  Cluster cluster;
  cluster.create(2, kSize);
  ReplicatedVolumeOptions options;
  options.queue_depth = 4;
  auto volume = open_volume(cluster, options);
  ASSERT_TRUE(volume);
  testing::WorkloadOptions wo;
  wo.threads = 1;
  wo.queue_depth = 32;
  wo.ops_per_thread = 500;
  testing::Workload w(*volume, wo);
  w.run();
  EXPECT_EQ(w.errors.load(), 0U);
  EXPECT_TRUE(volume->close().ok());
  testing::expect_replicas_match_model(cluster, 3, kSize, w);
}

// The concurrency test: four queue threads, overlapping requests of every
// kind, three replicas; afterwards all replicas are byte-identical and every
// block holds what the model allows. Runs under TSan.
TEST(ReplicatedVolume, ConcurrentOverlappingQueuesKeepReplicasIdentical) {
  Cluster cluster;
  cluster.create(3, kSize);
  ReplicatedVolumeOptions options;
  options.queues = 4;
  options.queue_depth = 32;
  auto volume = open_volume(cluster, options);
  ASSERT_TRUE(volume);
  testing::WorkloadOptions wo;
  wo.threads = 4;
  wo.ops_per_thread = 1500;
  wo.hot_bytes = 256 << 10;  // heavy overlap
  testing::Workload w(*volume, wo);
  w.run();
  EXPECT_EQ(w.errors.load(), 0U);
  EXPECT_EQ(w.bad_reads.load(), 0U);
  auto report = volume->verify();
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->mismatches.size(), 0U);
  EXPECT_EQ(report->replicas_compared, 7U);
  EXPECT_TRUE(volume->close().ok());
  testing::expect_replicas_match_model(cluster, 7, kSize, w);
  auto st = volume->status();
  EXPECT_EQ(st.in_sync, 3U);
  EXPECT_TRUE(st.online);
}

}  // namespace
}  // namespace ublkvol::engine

namespace ublkvol::engine {
namespace {

// The same data path on real files (io_uring, O_DIRECT) in /dev/shm.
TEST(ReplicatedVolume, WorksOnIoUringFileDevices) {
  std::vector<std::string> paths;
  std::vector<std::unique_ptr<dbs::FileDevice>> devices;
  std::vector<std::unique_ptr<RawReplicaStore>> stores;
  std::vector<std::unique_ptr<StoreThread>> threads;
  std::vector<ReplicaBinding> bindings;
  for (int i = 0; i < 2; ++i) {
    paths.push_back("/dev/shm/ublkvol_engine_test_" + std::to_string(getpid()) + "_" +
                    std::to_string(i));
    dbs::FileDeviceOptions fo;
    fo.create_size = 16U << 20U;
    auto dev = dbs::FileDevice::open(paths.back(), fo);
    ASSERT_TRUE(dev.ok()) << dev.error().to_string();
    ASSERT_TRUE(format_raw_replica(**dev).ok());
    auto store = open_raw_replica(**dev);
    ASSERT_TRUE(store.ok());
    auto thread = StoreThread::start({"file" + std::to_string(i)});
    ASSERT_TRUE((*thread)->attach(**store).ok());
    bindings.push_back({store->get(), thread->get()});
    devices.push_back(std::move(dev.value()));
    stores.push_back(std::move(store.value()));
    threads.push_back(std::move(thread.value()));
  }
  {
    auto volume = ReplicatedVolume::open(ReplicatedVolumeOptions{}, bindings);
    ASSERT_TRUE(volume.ok()) << volume.error().to_string();
    testing::WorkloadOptions wo;
    wo.threads = 1;
    wo.ops_per_thread = 2000;
    testing::Workload w(**volume, wo);
    w.run();
    EXPECT_EQ(w.errors.load(), 0U);
    auto report = (*volume)->verify();
    ASSERT_TRUE(report.ok());
    EXPECT_TRUE(report->mismatches.empty());
    EXPECT_TRUE((*volume)->close().ok());
  }
  for (auto& t : threads) {
    t->stop();
  }
  for (auto& p : paths) {
    ::unlink(p.c_str());
  }
}

}  // namespace
}  // namespace ublkvol::engine
