// Replicated volume under faults: replica I/O errors, hangs past the
// deadline, store thread death, read errors (repair), min-replicas, online
// rebuild under concurrent writes, rebuild resumption after a restart,
// generation choice after a whole-process crash, split refusal, snapshots.
#include <cstring>
#include <gtest/gtest.h>
#include <set>

#include "ublkvol/common/crc32c.h"
#include "ublkvol/engine/generation.h"
#include "ublkvol/engine/replicated_volume.h"

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

// Opens a volume over all replicas but the last (which then joins as a new
// disk), writes every block of kSize with writer `id`'s pattern, closes it.
void fill_without_last_replica(Cluster& cluster, uint64_t id) {
  auto b = cluster.bindings();
  b.pop_back();
  auto v = ReplicatedVolume::open(ReplicatedVolumeOptions{}, b);
  ASSERT_TRUE(v.ok());
  auto q = (*v)->open_queue(0);
  auto buf = make_buffer(1 << 20);
  for (uint64_t off = 0; off < kSize; off += 1 << 20) {
    for (uint32_t i = 0; i < 256; ++i) {
      testing::fill_block(buf.get() + i * kBlock, id, off / 4096 + i);
    }
    ASSERT_EQ(run_io(**q, VolumeOp::kWrite, off, 1 << 20, buf.get()), 0);
  }
  q->reset();
  ASSERT_TRUE((*v)->close().ok());
}

bool has_event(const VolumeStatus& st, const std::string& needle) {
  for (const VolumeEvent& e : st.events) {
    if (e.message.find(needle) != std::string::npos) {
      return true;
    }
  }
  return false;
}

testing::WorkloadOptions small_workload(unsigned threads = 2) {
  testing::WorkloadOptions wo;
  wo.threads = threads;
  wo.ops_per_thread = 800;
  wo.hot_bytes = 512 << 10;
  return wo;
}

// The fixture option (store_owner.h) puts the stores where it says: a
// StoreThread each (a reactor of its own, named after the store), or store i
// on reactor i mod N; control calls run on that reactor.
TEST(ReplicatedFaults, StoresRunWhereTheFixtureOptionSays) {
  testing::Cluster cluster;
  cluster.create(3, 1 << 20);
  const unsigned n = testing::store_reactors_from_env();
  ASSERT_EQ(cluster.reactors != nullptr, n > 0);
  for (unsigned i = 0; i < 3; ++i) {
    std::string where;
    ASSERT_TRUE(cluster.replicas[i]
                    .thread
                    ->call([&]() -> Status {
                      if (reactor::Reactor::current() != nullptr) {
                        where = std::string(reactor::Reactor::current()->name());
                      }
                      return ok_status();
                    })
                    .ok());
    EXPECT_EQ(where, n == 0 ? "store" + std::to_string(i) : "test-reactor" + std::to_string(i % n));
  }
}

// ---- a replica fails its writes mid-workload ----
TEST(ReplicatedFaults, WriteErrorDropsReplicaThenResyncOnlyDirtyRegions) {
  Cluster cluster;
  cluster.create(3, kSize);
  ReplicatedVolumeOptions o;
  o.queues = 2;
  auto volume = open_volume(cluster, o);
  ASSERT_TRUE(volume);
  uint64_t gen_before = volume->status().generation;
  dbs::FaultDevice::RuleId rule = 0;
  auto wo = small_workload();
  wo.limit_bytes = 2 << 20;  // so that the resync has less than everything to copy
  wo.trigger_after = 200;
  wo.trigger = [&] {
    cluster.fault(1, [&](dbs::FaultDevice& f) {
      dbs::FaultRule r;
      r.ops = dbs::kDataWriteOps;
      rule = f.add_rule(r);
    });
  };
  testing::Workload w(*volume, wo);
  w.run();
  EXPECT_EQ(w.errors.load(), 0U) << "the volume must stay online";
  VolumeStatus st = volume->status();
  EXPECT_EQ(st.replicas[1].state, ReplicaState::kFailed);
  EXPECT_NE(st.replicas[1].last_error.find("I/O error"), std::string::npos);
  EXPECT_EQ(st.in_sync, 2U);
  EXPECT_TRUE(st.online);
  EXPECT_NE(st.generation, gen_before);
  EXPECT_TRUE(has_event(st, "dropped from the write set"));
  testing::expect_replicas_match_model(cluster, 0b101, kSize, w);

  // The replica comes back: only dirty regions are copied.
  cluster.fault(1, [&](dbs::FaultDevice& f) { f.remove_rule(rule); });
  ASSERT_TRUE(volume->start_rebuild(1).ok());
  ASSERT_TRUE(volume->wait_rebuild().ok());
  st = volume->status();
  EXPECT_EQ(st.in_sync, 3U);
  EXPECT_EQ(st.rebuild.full_from, kSize) << "expected a dirty-region resync";
  EXPECT_LE(st.rebuild.total_bytes, 2U << 20);
  EXPECT_GT(st.rebuild.total_bytes, 0U);
  EXPECT_TRUE(volume->close().ok());
  testing::expect_replicas_match_model(cluster, 0b111, kSize, w);
}

// ---- a replica hangs past the deadline ----
TEST(ReplicatedFaults, HangPastDeadlineDropsReplicaAndIoContinues) {
  Cluster cluster;
  cluster.create(3, kSize);
  ReplicatedVolumeOptions o;
  o.queues = 2;
  o.io_deadline = std::chrono::milliseconds(500);
  auto volume = open_volume(cluster, o);
  ASSERT_TRUE(volume);
  auto wo = small_workload();
  wo.trigger_after = 200;
  wo.trigger = [&] {
    cluster.fault(2, [&](dbs::FaultDevice& f) {
      dbs::FaultRule r;
      r.action = dbs::FaultAction::kHang;
      f.add_rule(r);
    });
  };
  testing::Workload w(*volume, wo);
  w.run();
  EXPECT_EQ(w.errors.load(), 0U);
  VolumeStatus st = volume->status();
  EXPECT_EQ(st.replicas[2].state, ReplicaState::kFailed);
  EXPECT_NE(st.replicas[2].last_error.find("deadline"), std::string::npos);
  testing::expect_replicas_match_model(cluster, 0b011, kSize, w);
  // A rebuild must wait for the hung requests to finish.
  EXPECT_EQ(volume->start_rebuild(2).error().errno_value(), EBUSY);
  // The stuck commands are aborted (releasing them would let them read the
  // workload's buffers, which are gone by now - a hung device holding a
  // caller's buffer is a known limit, docs/engine.md).
  cluster.fault(2, [](dbs::FaultDevice& f) {
    f.clear_rules();
    f.fail_hung(EIO);
  });
  while (cluster.store_in_flight(2) != 0) {
  }
  ASSERT_TRUE(volume->start_rebuild(2).ok());
  ASSERT_TRUE(volume->wait_rebuild().ok());
  EXPECT_EQ(volume->status().in_sync, 3U);
  EXPECT_TRUE(volume->close().ok());
  testing::expect_replicas_match_model(cluster, 0b111, kSize, w);
}

// ---- a store thread dies; after a restart the replica resyncs ----
TEST(ReplicatedFaults, StoreThreadDeathThenRestartResyncs) {
  Cluster cluster;
  cluster.create(3, kSize);
  ReplicatedVolumeOptions o;
  o.queues = 2;
  o.io_deadline = std::chrono::milliseconds(500);
  auto volume = open_volume(cluster, o);
  ASSERT_TRUE(volume);
  auto wo = small_workload();
  wo.trigger_after = 200;
  wo.trigger = [&] { cluster.replicas[0].thread->kill_for_testing(); };
  testing::Workload w(*volume, wo);
  w.run();
  EXPECT_EQ(w.errors.load(), 0U);
  VolumeStatus st = volume->status();
  EXPECT_EQ(st.replicas[0].state, ReplicaState::kFailed);
  EXPECT_TRUE(st.online);
  testing::expect_replicas_match_model(cluster, 0b110, kSize, w);
  // Whole process goes down (no clean close), comes back: replica 0 is
  // older by generation and gets the dirty regions - even though it is
  // index 0, the source is chosen by generation.
  volume.reset();
  cluster.stop();
  cluster.start();
  volume = open_volume(cluster, o);
  ASSERT_TRUE(volume);
  ASSERT_TRUE(volume->wait_rebuild().ok());
  st = volume->status();
  EXPECT_EQ(st.in_sync, 3U);
  EXPECT_TRUE(volume->close().ok());
  testing::expect_replicas_match_model(cluster, 0b111, kSize, w);
}

// ---- read errors are retried elsewhere and repaired ----
TEST(ReplicatedFaults, ReadErrorIsRetriedAndRepaired) {
  Cluster cluster;
  cluster.create(2, kSize);
  auto volume = open_volume(cluster, ReplicatedVolumeOptions{});
  ASSERT_TRUE(volume);
  auto q = volume->open_queue(0);
  ASSERT_TRUE(q.ok());
  auto buf = make_buffer(16384);
  for (uint32_t b = 0; b < 4; ++b) {
    testing::fill_block(buf.get() + b * kBlock, 99, 40 + b);
  }
  ASSERT_EQ(run_io(**q, VolumeOp::kWrite, 40 * kBlock, 16384, buf.get()), 0);
  // Corrupt replica 0's copy behind the engine's back and make its reads of
  // that range fail once (a media error).
  std::memset(cluster.replicas[0].memory->bytes().data() + cluster.data_offset + 41 * kBlock, 0,
              4096);
  dbs::FaultDevice::RuleId rule = 0;
  cluster.fault(0, [&](dbs::FaultDevice& f) {
    dbs::FaultRule r;
    r.ops = dbs::op_bit(dbs::IoOp::kRead);
    r.offset = cluster.data_offset + 40 * kBlock;
    r.length = 16384;
    r.max_hits = 1;
    rule = f.add_rule(r);
  });
  auto rd = make_buffer(16384);
  ASSERT_EQ(run_io(**q, VolumeOp::kRead, 40 * kBlock, 16384, rd.get()), 0);
  EXPECT_EQ(std::memcmp(rd.get(), buf.get(), 16384), 0);
  uint64_t hits = 0;
  cluster.fault(0, [&](dbs::FaultDevice& f) { hits = f.rule_hits(rule); });
  EXPECT_EQ(hits, 1U) << "the read must have gone to replica 0 first";
  // Replica 0 was rewritten from replica 1 and stays in sync.
  EXPECT_EQ(std::memcmp(cluster.data(0, 40 * kBlock), buf.get(), 16384), 0);
  EXPECT_EQ(volume->status().in_sync, 2U);
  q->reset();
  EXPECT_TRUE(volume->close().ok());
}

// ---- below min-replicas I/O fails with EIO ----
TEST(ReplicatedFaults, BelowMinReplicasFailsIo) {
  Cluster cluster;
  cluster.create(2, kSize);
  ReplicatedVolumeOptions o;
  o.min_replicas = 2;
  auto volume = open_volume(cluster, o);
  ASSERT_TRUE(volume);
  auto q = volume->open_queue(0);
  ASSERT_TRUE(q.ok());
  auto buf = make_buffer(4096);
  testing::fill_block(buf.get(), 5, 0);
  EXPECT_EQ(run_io(**q, VolumeOp::kWrite, 0, 4096, buf.get()), 0);
  // An operator's fail that would take the volume offline is refused, like
  // remove_replica (issue 12 item 9), and names the numbers...
  Status refused = volume->fail_replica(1, "test");
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().errno_value(), EBUSY);
  EXPECT_NE(refused.error().message().find("below min_replicas 2"), std::string::npos)
      << refused.error().message();
  EXPECT_NE(refused.error().message().find("leave 1 of 2 in-sync"), std::string::npos)
      << refused.error().message();
  EXPECT_EQ(volume->status().in_sync, 2U);
  EXPECT_EQ(run_io(**q, VolumeOp::kWrite, 0, 4096, buf.get()), 0);
  // ...unless forced.
  ASSERT_TRUE(volume->fail_replica(1, "test", true).ok());
  EXPECT_EQ(run_io(**q, VolumeOp::kWrite, 0, 4096, buf.get()), -EIO);
  EXPECT_EQ(run_io(**q, VolumeOp::kRead, 0, 4096, buf.get()), -EIO);
  VolumeStatus st = volume->status();
  EXPECT_FALSE(st.online);
  EXPECT_EQ(st.in_sync, 1U);
  // The last in-sync replica is never dropped.
  EXPECT_FALSE(volume->fail_replica(0, "test").ok());
  EXPECT_FALSE(volume->fail_replica(0, "test", true).ok());
  q->reset();
}

// ---- online rebuild of a new replica while writes hit the copied range ----
TEST(ReplicatedFaults, FullRebuildUnderConcurrentOverlappingWrites) {
  Cluster cluster;
  cluster.create(3, kSize);
  // Replicas 0 and 1 form the volume first; replica 2 is a new disk.
  ASSERT_NO_FATAL_FAILURE(fill_without_last_replica(cluster, 1));
  ReplicatedVolumeOptions o;
  o.queues = 2;
  o.rebuild_chunk_bytes = 128 << 10;
  o.rebuild_bytes_per_second = 8 << 20;  // ~1 s: the workload runs inside it
  auto volume = open_volume(cluster, o);
  ASSERT_TRUE(volume);
  ASSERT_TRUE(volume->wait_rebuild_progress(128 << 10));
  EXPECT_EQ(volume->status().replicas[2].state, ReplicaState::kRebuilding);
  auto wo = small_workload();
  wo.hot_bytes = kSize;  // writes everywhere, including the range being copied
  wo.zeroing = true;
  testing::Workload w(*volume, wo);
  w.run();
  ASSERT_TRUE(volume->wait_rebuild().ok());
  EXPECT_EQ(w.errors.load(), 0U);
  VolumeStatus st = volume->status();
  EXPECT_EQ(st.in_sync, 3U);
  EXPECT_EQ(st.rebuild.full_from, 0U);
  EXPECT_EQ(st.rebuild.total_bytes, kSize);
  EXPECT_GE(st.rebuild.completed, 1U);
  auto report = volume->verify();
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->mismatches.empty());
  EXPECT_TRUE(volume->close().ok());
  // Blocks never written by the workload hold the first generation of data.
  auto model = w.per_block();
  for (uint64_t b = 0; b < kSize / 4096; ++b) {
    for (unsigned r = 1; r < 3; ++r) {
      ASSERT_EQ(std::memcmp(cluster.data(0, b * 4096), cluster.data(r, b * 4096), 4096), 0)
          << "replica " << r << " block " << b << " holds writer "
          << testing::block_id(cluster.data(r, b * 4096), b) << ", replica 0 holds "
          << testing::block_id(cluster.data(0, b * 4096), b);
    }
    if (model.find(b) == model.end()) {
      ASSERT_EQ(testing::block_id(cluster.data(2, b * 4096), b), 1U) << b;
    }
  }
}

// ---- a rebuild interrupted by a crash resumes from its watermark ----
TEST(ReplicatedFaults, RebuildResumesAfterRestart) {
  Cluster cluster;
  cluster.create(2, kSize);
  ASSERT_NO_FATAL_FAILURE(fill_without_last_replica(cluster, 3));
  ReplicatedVolumeOptions o;
  o.rebuild_chunk_bytes = 256 << 10;
  o.rebuild_persist_bytes = 1 << 20;
  o.rebuild_bytes_per_second = 8 << 20;
  auto volume = open_volume(cluster, o);
  ASSERT_TRUE(volume);
  ASSERT_TRUE(volume->wait_rebuild_progress(3 << 20));
  // Crash: no close, threads stop, stores are dropped.
  volume.reset();
  cluster.stop();
  cluster.start();
  o.rebuild_bytes_per_second = 0;
  volume = open_volume(cluster, o);
  ASSERT_TRUE(volume);
  ASSERT_TRUE(volume->wait_rebuild().ok());
  VolumeStatus st = volume->status();
  EXPECT_EQ(st.in_sync, 2U);
  EXPECT_GE(st.rebuild.full_from, 2U << 20) << "the rebuild restarted from scratch";
  EXPECT_LT(st.rebuild.total_bytes, kSize);
  EXPECT_TRUE(volume->close().ok());
  EXPECT_EQ(std::memcmp(cluster.data(0, 0), cluster.data(1, 0), kSize), 0);
}

// ---- generation choice after a whole-process crash ----
TEST(ReplicatedFaults, NewestReplicaChosenByGenerationAfterCrash) {
  Cluster cluster;
  cluster.create(3, kSize);
  auto buf = make_buffer(4096);
  {
    auto volume = open_volume(cluster, ReplicatedVolumeOptions{});
    ASSERT_TRUE(volume);
    auto q = volume->open_queue(0);
    testing::fill_block(buf.get(), 10, 7);
    ASSERT_EQ(run_io(**q, VolumeOp::kWrite, 7 * kBlock, 4096, buf.get()), 0);
    ASSERT_TRUE(volume->fail_replica(0, "test").ok());
    testing::fill_block(buf.get(), 11, 7);
    ASSERT_EQ(run_io(**q, VolumeOp::kWrite, 7 * kBlock, 4096, buf.get(), true), 0);
    ASSERT_TRUE(volume->fail_replica(1, "test").ok());
    testing::fill_block(buf.get(), 12, 7);
    ASSERT_EQ(run_io(**q, VolumeOp::kWrite, 7 * kBlock, 4096, buf.get(), true), 0);
    q->reset();
    // crash: no close
  }
  cluster.stop();
  cluster.start();
  ReplicatedVolumeOptions o;
  o.auto_rebuild = false;
  auto volume = open_volume(cluster, o);
  ASSERT_TRUE(volume);
  VolumeStatus st = volume->status();
  EXPECT_EQ(st.replicas[0].state, ReplicaState::kStale);
  EXPECT_EQ(st.replicas[1].state, ReplicaState::kStale);
  EXPECT_EQ(st.replicas[2].state, ReplicaState::kInSync);
  auto q = volume->open_queue(0);
  auto rd = make_buffer(4096);
  ASSERT_EQ(run_io(**q, VolumeOp::kRead, 7 * kBlock, 4096, rd.get()), 0);
  EXPECT_EQ(testing::block_id(rd.get(), 7), 12U);
  q->reset();
  ASSERT_TRUE(volume->start_rebuild(0).ok());
  ASSERT_TRUE(volume->wait_rebuild().ok());
  ASSERT_TRUE(volume->start_rebuild(1).ok());
  ASSERT_TRUE(volume->wait_rebuild().ok());
  EXPECT_EQ(volume->status().in_sync, 3U);
  EXPECT_TRUE(volume->close().ok());
  for (unsigned r = 0; r < 3; ++r) {
    EXPECT_EQ(testing::block_id(cluster.data(r, 7 * kBlock), 7), 12U) << r;
  }
}

// ---- a split is refused ----
TEST(ReplicatedFaults, SplitIsRefused) {
  Cluster cluster;
  cluster.create(2, kSize);
  {
    auto volume = open_volume(cluster, ReplicatedVolumeOptions{});
    ASSERT_TRUE(volume);
    ASSERT_TRUE(volume->close().ok());
  }
  // Each replica moves on to its own generation from the common one, as if
  // each had been used alone.
  for (unsigned r = 0; r < 2; ++r) {
    ReplicaStore* s = cluster.replicas[r].store.get();
    ASSERT_TRUE(cluster.replicas[r]
                    .thread
                    ->call([&]() -> Status {
                      ReplicaMeta m = s->meta();
                      m.history[0] = m.generation;
                      m.generation = 1000 + r;
                      return s->write_meta(m);
                    })
                    .ok());
  }
  auto v = ReplicatedVolume::open(ReplicatedVolumeOptions{}, cluster.bindings());
  ASSERT_FALSE(v.ok());
  EXPECT_NE(v.error().message().find("split"), std::string::npos) << v.error().to_string();
}

TEST(Generation, CompareAndBitmapCoverage) {
  ReplicaMeta a;
  a.fresh = false;
  a.generation = 3;
  a.history = {2, 1};
  ReplicaMeta b;
  b.fresh = false;
  b.generation = 2;
  b.history = {1};
  ReplicaMeta c;
  c.fresh = false;
  c.generation = 4;
  c.history = {2, 1};
  EXPECT_EQ(compare_generations(a, b), GenerationOrder::kNewer);
  EXPECT_EQ(compare_generations(b, a), GenerationOrder::kOlder);
  EXPECT_EQ(compare_generations(a, a), GenerationOrder::kEqual);
  EXPECT_EQ(compare_generations(a, c), GenerationOrder::kUnrelated);
  a.bitmap_base = 2;
  EXPECT_TRUE(bitmap_covers(a, 2));
  EXPECT_TRUE(bitmap_covers(a, 3));
  EXPECT_FALSE(bitmap_covers(a, 1)) << "bitmap cleared after generation 1";
  a.bitmap_base = 0;
  EXPECT_TRUE(bitmap_covers(a, 1));
  EXPECT_FALSE(bitmap_covers(a, 99));
  auto choice = choose_generation({a, b, c}, {"a", "b", "c"});
  ASSERT_FALSE(choice.ok());
  EXPECT_NE(choice.error().message().find("split"), std::string::npos);
  auto ok = choose_generation({b, a}, {"b", "a"});
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(ok->source, 1U);
  EXPECT_EQ(ok->plans[0], ReplicaPlan::kResync);
  EXPECT_EQ(ok->plans[1], ReplicaPlan::kUpToDate);
}

// ---- snapshots: every replica at the same point ----
// The raw-device store has no snapshots; this store wraps it and "snapshots"
// by checksumming the replica's content at that moment, which is exactly
// what a crash-consistent snapshot must agree on across replicas.
class ChecksumSnapshotStore final : public ReplicaStore {
 public:
  ChecksumSnapshotStore(ReplicaStore& inner, const dbs::MemoryDevice& memory, uint64_t data_offset)
      : inner_(inner), memory_(memory), data_offset_(data_offset) {}
  std::string_view name() const override { return inner_.name(); }
  uint64_t size_bytes() const override { return inner_.size_bytes(); }
  void submit(ReplicaIo& io) override { inner_.submit(io); }
  void kick() override { inner_.kick(); }
  unsigned poll(bool wait) override { return inner_.poll(wait); }
  unsigned in_flight() const override { return inner_.in_flight(); }
  int completion_fd() const override { return inner_.completion_fd(); }
  const ReplicaMeta& meta() const override { return inner_.meta(); }
  Status write_meta(const ReplicaMeta& m) override { return inner_.write_meta(m); }
  uint64_t region_bytes() const override { return inner_.region_bytes(); }
  std::vector<uint8_t> dirty_regions() const override { return inner_.dirty_regions(); }
  Status clear_dirty() override { return inner_.clear_dirty(); }
  Status create_snapshot(std::string_view snapshot) override {
    // Nothing of this replica may be in flight at a crash-consistent point.
    if (inner_.in_flight() != 0) {
      return Error(EBUSY, "requests in flight at snapshot time");
    }
    auto bytes = memory_.bytes().subspan(data_offset_, inner_.size_bytes());
    snapshots.emplace_back(std::string(snapshot), crc32c(bytes));
    return ok_status();
  }
  Status delete_snapshot(std::string_view snapshot) override {
    std::erase_if(snapshots, [&](const auto& s) { return s.first == snapshot; });
    return ok_status();
  }
  std::vector<std::pair<std::string, uint32_t>> snapshots;

 private:
  ReplicaStore& inner_;
  const dbs::MemoryDevice& memory_;
  uint64_t data_offset_;
};

TEST(ReplicatedFaults, SnapshotsAreTakenAtTheSamePointOnEveryReplica) {
  Cluster cluster;
  cluster.create(3, kSize);
  std::vector<std::unique_ptr<ChecksumSnapshotStore>> wrapped;
  std::vector<ReplicaBinding> bindings;
  for (unsigned r = 0; r < 3; ++r) {
    auto& rep = cluster.replicas[r];
    ASSERT_TRUE(rep.thread->detach(*rep.store).ok());
    wrapped.push_back(
        std::make_unique<ChecksumSnapshotStore>(*rep.store, *rep.memory, cluster.data_offset));
    ASSERT_TRUE(rep.thread->attach(*wrapped.back()).ok());
    bindings.push_back({wrapped.back().get(), rep.thread.get()});
  }
  ReplicatedVolumeOptions o;
  o.queues = 2;
  auto v = ReplicatedVolume::open(o, bindings);
  ASSERT_TRUE(v.ok());
  auto& volume = *v;
  auto wo = small_workload();
  std::atomic<int> taken{0};
  std::thread snapshotter;
  wo.trigger_after = 300;
  wo.trigger = [&] {
    // Snapshots while all queues keep submitting; each drains in-flight
    // writes (the queues keep reaping, so they complete).
    snapshotter = std::thread([&] {
      for (int i = 0; i < 3; ++i) {
        Status st = volume->create_snapshot("s" + std::to_string(i));
        EXPECT_TRUE(st.ok()) << st.error().to_string();
        taken += st.ok() ? 1 : 0;
      }
    });
  };
  testing::Workload w(*volume, wo);
  w.run();
  snapshotter.join();
  EXPECT_EQ(taken, 3);
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(wrapped[0]->snapshots.size(), 3U);
    for (unsigned r = 1; r < 3; ++r) {
      ASSERT_EQ(wrapped[r]->snapshots.size(), 3U);
      EXPECT_EQ(wrapped[r]->snapshots[i].second, wrapped[0]->snapshots[i].second)
          << "snapshot " << i << " differs between replica 0 and " << r;
    }
  }
  EXPECT_TRUE(volume->close().ok());
  volume.reset();
  for (unsigned r = 0; r < 3; ++r) {
    (void)cluster.replicas[r].thread->detach(*wrapped[r]);
  }
}

TEST(ReplicatedFaults, RawStoreSnapshotsAreNotSupported) {
  Cluster cluster;
  cluster.create(2, kSize);
  auto volume = open_volume(cluster, ReplicatedVolumeOptions{});
  ASSERT_TRUE(volume);
  Status st = volume->create_snapshot("s");
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().errno_value(), ENOTSUP);
  EXPECT_TRUE(volume->close().ok());
}

}  // namespace
}  // namespace ublkvol::engine
