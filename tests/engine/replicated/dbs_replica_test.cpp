// The replicated volume on DBS replicas (DbsReplicaStore): the concurrency
// workload, snapshots on every replica, a replica failing and resyncing.
#include <algorithm>
#include <chrono>
#include <cstring>
#include <gtest/gtest.h>

#include "ublkvol/dbs/memory_device.h"
#include "ublkvol/dbs/store.h"
#include "ublkvol/engine/dbs_replica_store.h"
#include "ublkvol/engine/replicated_volume.h"

#include "replica_test_util.h"
#include "workload.h"

namespace ublkvol::engine {
namespace {

constexpr uint64_t kSize = 16U << 20U;

struct DbsCluster {
  struct Replica {
    std::unique_ptr<dbs::MemoryDevice> memory;
    std::unique_ptr<dbs::FaultDevice> fault;
    std::unique_ptr<dbs::Store> store;
    std::unique_ptr<DbsReplicaStore> replica;
    std::unique_ptr<StoreThread> thread;
  };
  std::vector<Replica> replicas;

  void create(unsigned n) {
    for (unsigned i = 0; i < n; ++i) {
      Replica r;
      r.memory = std::make_unique<dbs::MemoryDevice>(64U << 20U);
      r.fault = std::make_unique<dbs::FaultDevice>(*r.memory);
      ASSERT_TRUE(dbs::Store::format(*r.fault).ok());
      auto store = dbs::Store::open(*r.fault);
      ASSERT_TRUE(store.ok()) << store.error().to_string();
      r.store = std::move(store.value());
      ASSERT_TRUE(create_dbs_replica(*r.store, "vol", kSize).ok());
      auto rep = open_dbs_replica(*r.store, "vol");
      ASSERT_TRUE(rep.ok()) << rep.error().to_string();
      r.replica = std::move(rep.value());
      auto thread = StoreThread::start({"dbs" + std::to_string(i)});
      r.thread = std::move(thread.value());
      ASSERT_TRUE(r.thread->attach(*r.replica).ok());
      replicas.push_back(std::move(r));
    }
  }
  std::vector<ReplicaBinding> bindings() {
    std::vector<ReplicaBinding> b;
    for (auto& r : replicas) {
      b.push_back({r.replica.get(), r.thread.get()});
    }
    return b;
  }
  ~DbsCluster() {
    for (auto& r : replicas) {
      r.thread->stop();
    }
  }
  // The replica's volume content (read on its thread).
  std::vector<std::byte> content(unsigned i, const std::string& name = "vol") {
    std::vector<std::byte> out(kSize);
    auto buf = testing::make_buffer(kSize);
    dbs::Store* s = replicas[i].store.get();
    EXPECT_TRUE(replicas[i]
                    .thread
                    ->call([&]() -> Status {
                      auto v = s->find_volume(name);
                      if (!v.ok()) {
                        return v.error();
                      }
                      return s->read(*v, 0, {buf.get(), kSize});
                    })
                    .ok());
    std::memcpy(out.data(), buf.get(), kSize);
    return out;
  }
  // The replica's snapshot names (listed on its thread) into `names`.
  Status list_snapshots(unsigned i, std::vector<std::string>& names) {
    DbsReplicaStore* rep = replicas[i].replica.get();
    return replicas[i].thread->call([&]() -> Status {
      names = rep->list_snapshots();
      return ok_status();
    });
  }
};

// verify() finds no mismatch, the volume closes, and every replica holds
// exactly what replica 0 holds; `c0` gets that content for further checks.
void expect_verified_and_identical(ReplicatedVolume& volume, DbsCluster& cluster,
                                   std::vector<std::byte>& c0) {
  auto report = volume.verify();
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->mismatches.empty());
  EXPECT_TRUE(volume.close().ok());
  c0 = cluster.content(0);
  for (unsigned r = 1; r < 3; ++r) {
    EXPECT_EQ(std::memcmp(c0.data(), cluster.content(r).data(), kSize), 0) << "replica " << r;
  }
}

TEST(DbsReplicas, ConcurrentWorkloadSnapshotsAndResync) {
  DbsCluster cluster;
  cluster.create(3);
  ReplicatedVolumeOptions o;
  o.queues = 2;
  auto v = ReplicatedVolume::open(o, cluster.bindings());
  ASSERT_TRUE(v.ok()) << v.error().to_string();
  auto& volume = *v;
  testing::WorkloadOptions wo;
  wo.threads = 2;
  wo.ops_per_thread = 1000;
  wo.hot_bytes = 512 << 10;
  wo.limit_bytes = 4 << 20;  // so the resync has less than everything to copy
  wo.trigger_after = 300;
  // The replica is taken out mid-workload (a device fault would also fail a
  // DBS metadata commit, after which DBS refuses writes until the store is
  // reopened - a daemon-level step; the raw-store fault tests cover faults).
  wo.trigger = [&] { EXPECT_TRUE(volume->fail_replica(2, "test").ok()); };
  testing::Workload w(*volume, wo);
  w.run();
  EXPECT_EQ(w.errors.load(), 0U);
  EXPECT_EQ(volume->status().replicas[2].state, ReplicaState::kFailed);
  // Snapshot on the two in-sync replicas.
  Status snap = volume->create_snapshot("s1");
  ASSERT_TRUE(snap.ok()) << snap.error().to_string();
  for (unsigned r = 0; r < 2; ++r) {
    std::vector<std::string> names;
    ASSERT_TRUE(cluster.list_snapshots(r, names).ok());
    ASSERT_EQ(names.size(), 1U);
    EXPECT_EQ(names[0], "s1");
  }
  // Replica 2 comes back and resyncs.
  ASSERT_TRUE(volume->start_rebuild(2).ok());
  Status rb = volume->wait_rebuild();
  ASSERT_TRUE(rb.ok()) << rb.error().to_string();
  EXPECT_EQ(volume->status().in_sync, 3U);
  EXPECT_LT(volume->status().rebuild.total_bytes, kSize) << "expected a dirty-region resync";
  std::vector<std::byte> c0;
  ASSERT_NO_FATAL_FAILURE(expect_verified_and_identical(*volume, cluster, c0));
  auto model = w.per_block();
  unsigned bad = 0;
  for (uint64_t b = 0; b < kSize / 4096; ++b) {
    auto it = model.find(b);
    std::string err = testing::Workload::check_block(it == model.end() ? nullptr : &it->second, b,
                                                     c0.data() + b * 4096);
    if (!err.empty() && ++bad < 5) {
      ADD_FAILURE() << err;
    }
  }
  EXPECT_EQ(bad, 0U);
  volume.reset();
}

// True if every replica's dirty bitmap (the store's copy of what it has
// committed to DBS) is empty, read on the replica's thread.
bool all_bitmaps_clear(DbsCluster& cluster) {
  for (auto& r : cluster.replicas) {
    std::vector<uint8_t> bits;
    DbsReplicaStore* rep = r.replica.get();
    EXPECT_TRUE(r.thread
                    ->call([&]() -> Status {
                      bits = rep->dirty_regions();
                      return ok_status();
                    })
                    .ok());
    if (std::any_of(bits.begin(), bits.end(), [](uint8_t b) { return b != 0; })) {
      return false;
    }
  }
  return true;
}

// The periodic clear (dirty_clear_interval) empties the bitmaps of a volume
// that stays open, so a replica that fails afterwards resyncs only what was
// written while it was out - not everything written since open().
TEST(DbsReplicas, PeriodicDirtyClearLimitsResyncToRegionsWrittenWhileOut) {
  DbsCluster cluster;
  cluster.create(3);
  ReplicatedVolumeOptions o;
  o.dirty_clear_interval = std::chrono::milliseconds(20);
  auto v = ReplicatedVolume::open(o, cluster.bindings());
  ASSERT_TRUE(v.ok()) << v.error().to_string();
  auto& volume = *v;
  uint64_t region = 0;
  {
    DbsReplicaStore* rep = cluster.replicas[0].replica.get();
    ASSERT_TRUE(cluster.replicas[0]
                    .thread
                    ->call([&]() -> Status {
                      region = rep->region_bytes();
                      return ok_status();
                    })
                    .ok());
  }
  ASSERT_GE(region, 4096U);
  ASSERT_GE(kSize / region, 4U) << "the test needs several regions";
  // 1. Write the whole volume: every region dirty on every replica.
  {
    auto q = volume->open_queue(0);
    ASSERT_TRUE(q.ok());
    constexpr uint32_t kChunk = 1U << 20U;
    auto buf = testing::make_buffer(kChunk);
    for (uint64_t off = 0; off < kSize; off += kChunk) {
      for (size_t b = 0; b < kChunk / 4096; ++b) {
        testing::fill_block(buf.get() + b * 4096, 1, off / 4096 + b);
      }
      ASSERT_EQ(testing::run_io(**q, VolumeOp::kWrite, off, kChunk, buf.get()), 0);
    }
  }
  // 2. Wait until a periodic clear emptied every bitmap. The count is read
  //    before the bitmaps: a clear completing in between ends the wait at
  //    once, and bits still set after it mean a write ordered after its
  //    barrier, so another clear follows.
  for (;;) {
    uint64_t seen = volume->status().checkpoints;
    if (all_bitmaps_clear(cluster)) {
      break;
    }
    ASSERT_TRUE(volume->wait_checkpoints(seen + 1, std::chrono::seconds(60)))
        << "no periodic checkpoint within 60 s";
  }
  EXPECT_GE(volume->status().checkpoints, 1U);
  // 3. Replica 2 leaves; two of the regions are written while it is out.
  ASSERT_TRUE(volume->fail_replica(2, "test").ok());
  const std::vector<uint64_t> written = {1, kSize / region - 1};
  {
    auto q = volume->open_queue(0);
    ASSERT_TRUE(q.ok());
    auto buf = testing::make_buffer(4096);
    for (uint64_t r : written) {
      uint64_t off = r * region + 4096;
      testing::fill_block(buf.get(), 2, off / 4096);
      ASSERT_EQ(testing::run_io(**q, VolumeOp::kWrite, off, 4096, buf.get()), 0);
    }
  }
  // 4. The resync copies exactly those regions (a periodic clear must not
  //    have run while replica 2 was out: its bits would be gone).
  ASSERT_TRUE(volume->start_rebuild(2).ok());
  Status rb = volume->wait_rebuild();
  ASSERT_TRUE(rb.ok()) << rb.error().to_string();
  VolumeStatus st = volume->status();
  EXPECT_EQ(st.in_sync, 3U);
  EXPECT_EQ(st.rebuild.total_bytes, written.size() * region);
  EXPECT_EQ(st.rebuild.done_bytes, written.size() * region);
  std::vector<std::byte> c0;
  ASSERT_NO_FATAL_FAILURE(expect_verified_and_identical(*volume, cluster, c0));
  for (uint64_t b = 0; b < kSize / 4096; ++b) {
    bool rewritten = std::any_of(written.begin(), written.end(),
                                 [&](uint64_t r) { return b == (r * region + 4096) / 4096; });
    ASSERT_EQ(testing::block_id(c0.data() + b * 4096, b), rewritten ? 2U : 1U) << "block " << b;
  }
  volume.reset();
}

// Writes `blocks` blocks of writer `id` from offset 0 through the volume.
void write_pattern(ReplicatedVolume& volume, uint64_t id, uint32_t blocks) {
  auto q = volume.open_queue(0);
  ASSERT_TRUE(q.ok());
  auto buf = testing::make_buffer(size_t{blocks} * 4096);
  for (size_t b = 0; b < blocks; ++b) {
    testing::fill_block(buf.get() + b * 4096, id, b);
  }
  ASSERT_EQ(testing::run_io(**q, VolumeOp::kWrite, 0, blocks * 4096, buf.get()), 0);
}

// Every block of [0, blocks) in `content` holds writer `id`.
void expect_pattern(const std::vector<std::byte>& content, uint64_t id, uint32_t blocks,
                    const std::string& what) {
  for (size_t b = 0; b < blocks; ++b) {
    ASSERT_EQ(testing::block_id(content.data() + b * 4096, b), id) << what << " block " << b;
  }
}

// Snapshot clone, revert and delete reach every replica; the clone opens as
// its own replicated volume, in sync at once, and diverges independently.
TEST(DbsReplicas, SnapshotCloneRevertDeleteOnEveryReplica) {
  constexpr uint32_t kBlocks = 256;
  DbsCluster cluster;
  cluster.create(3);
  ReplicatedVolumeOptions o;
  auto v = ReplicatedVolume::open(o, cluster.bindings());
  ASSERT_TRUE(v.ok()) << v.error().to_string();
  auto& volume = *v;
  write_pattern(*volume, 1, kBlocks);
  ASSERT_TRUE(volume->create_snapshot("s").ok());
  write_pattern(*volume, 2, kBlocks);

  Result<uint32_t> cloned = volume->clone_snapshot("s", "c");
  ASSERT_TRUE(cloned.ok()) << cloned.error().to_string();
  EXPECT_EQ(*cloned, 0b111U);
  EXPECT_FALSE(volume->clone_snapshot("nope", "c2").ok());
  for (unsigned r = 0; r < 3; ++r) {
    expect_pattern(cluster.content(r, "c"), 1, kBlocks, "clone on replica " + std::to_string(r));
  }
  // Open the clone's replicas as a volume: in sync without any copy.
  std::vector<std::unique_ptr<DbsReplicaStore>> clone_stores;
  std::vector<ReplicaBinding> clone_bindings;
  for (unsigned r = 0; r < 3; ++r) {
    dbs::Store* store = cluster.replicas[r].store.get();
    std::unique_ptr<DbsReplicaStore> rep;
    ASSERT_TRUE(cluster.replicas[r]
                    .thread
                    ->call([&]() -> Status {
                      auto opened = open_dbs_replica(*store, "c");
                      if (!opened.ok()) {
                        return opened.error();
                      }
                      rep = std::move(opened.value());
                      return ok_status();
                    })
                    .ok());
    ASSERT_TRUE(cluster.replicas[r].thread->attach(*rep).ok());
    clone_bindings.push_back({rep.get(), cluster.replicas[r].thread.get()});
    clone_stores.push_back(std::move(rep));
  }
  ReplicatedVolumeOptions co;
  co.name = "clone";
  auto c = ReplicatedVolume::open(co, clone_bindings);
  ASSERT_TRUE(c.ok()) << c.error().to_string();
  auto& clone = *c;
  VolumeStatus cs = clone->status();
  EXPECT_EQ(cs.in_sync, 3U);
  EXPECT_FALSE(cs.rebuild.active);
  EXPECT_EQ(cs.rebuild.completed, 0U);
  // Diverge: the clone gets writer 3, the origin keeps writer 2.
  write_pattern(*clone, 3, kBlocks);
  ASSERT_TRUE(clone->close().ok());
  clone.reset();
  for (unsigned r = 0; r < 3; ++r) {
    ASSERT_TRUE(cluster.replicas[r].thread->detach(*clone_stores[r]).ok());
    expect_pattern(cluster.content(r, "c"), 3, kBlocks, "clone on replica " + std::to_string(r));
    expect_pattern(cluster.content(r), 2, kBlocks, "origin on replica " + std::to_string(r));
  }

  // Revert the origin to the snapshot on every replica.
  ASSERT_TRUE(volume->revert_snapshot("s").ok());
  for (unsigned r = 0; r < 3; ++r) {
    expect_pattern(cluster.content(r), 1, kBlocks, "reverted origin on " + std::to_string(r));
  }
  // Delete it on every replica; the clone stays readable.
  ASSERT_TRUE(volume->delete_snapshot("s").ok());
  for (unsigned r = 0; r < 3; ++r) {
    std::vector<std::string> names;
    ASSERT_TRUE(cluster.list_snapshots(r, names).ok());
    EXPECT_TRUE(names.empty()) << r;
    expect_pattern(cluster.content(r, "c"), 3, kBlocks,
                   "clone after delete on " + std::to_string(r));
  }
  auto report = volume->verify();
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->mismatches.empty());
  EXPECT_TRUE(volume->close().ok());
  volume.reset();
}

}  // namespace
}  // namespace ublkvol::engine
