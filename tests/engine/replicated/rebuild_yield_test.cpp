// A rebuild yields to foreground I/O (issue 14, docs/engine.md "Rebuild
// pacing"): while user requests arrive it copies in pieces of at most
// rebuild_busy_io_bytes and, after each piece, waits long enough to take at
// most rebuild_busy_percent of the time; with no user I/O it copies whole
// chunks and never waits. Either way the replicas end byte-identical.
#include <atomic>
#include <condition_variable>
#include <gtest/gtest.h>
#include <mutex>
#include <thread>

#include "ublkvol/engine/replicated_volume.h"

#include "rebuild_pacing.h"
#include "replica_test_util.h"

namespace ublkvol::engine {
namespace {

using testing::Cluster;

constexpr uint64_t kSize = 32U << 20U;
constexpr uint64_t kChunk = 1U << 20U;
constexpr uint64_t kPiece = 128U << 10U;

ReplicatedVolumeOptions yield_options() {
  ReplicatedVolumeOptions o;
  o.queues = 1;
  o.rebuild_chunk_bytes = static_cast<uint32_t>(kChunk);
  o.rebuild_busy_io_bytes = static_cast<uint32_t>(kPiece);
  o.rebuild_busy_percent = 50;
  return o;
}

// Opens the volume on replica 0 alone (replica 1 joins later); nullptr and a
// test failure naming the error if that fails.
std::unique_ptr<ReplicatedVolume> open_first_replica(Cluster& cluster) {
  auto only0 = cluster.bindings();
  only0.resize(1);
  auto v = ReplicatedVolume::open(yield_options(), only0);
  EXPECT_TRUE(v.ok()) << v.error().to_string();
  return v.ok() ? std::move(*v) : nullptr;
}

// Fills the whole volume through replica 0 alone, so the copy has data.
void fill_through_first_replica(Cluster& cluster) {
  auto v = open_first_replica(cluster);
  ASSERT_NE(v, nullptr);
  auto q = v->open_queue(0);
  ASSERT_TRUE(q.ok());
  auto buf = testing::make_buffer(kChunk);
  for (uint64_t off = 0; off < kSize; off += kChunk) {
    for (uint64_t b = 0; b < kChunk / 4096; ++b) {
      testing::fill_block(buf.get() + b * 4096, 1, off / 4096 + b);
    }
    ASSERT_EQ(testing::run_io(**q, VolumeOp::kWrite, off, static_cast<uint32_t>(kChunk), buf.get()),
              0);
  }
  q->reset();
  ASSERT_TRUE(v->close().ok());
}

void expect_replicas_identical(Cluster& cluster) {
  for (uint64_t off = 0; off < kSize; off += 4096) {
    ASSERT_EQ(std::memcmp(cluster.data(0, off), cluster.data(1, off), 4096), 0)
        << "replicas differ at byte " << off;
  }
}

TEST(RebuildPacer, PiecesAndWaitsOnlyWhileUserRequestsArrive) {
  detail::RebuildPacer pacer(kChunk, kPiece, 20, /*user_requests=*/5);
  EXPECT_EQ(pacer.next_length(0, kSize), kChunk);
  // No user request during the step: no wait, whole chunks.
  EXPECT_EQ(pacer.after_step(1000, 5), 0U);
  EXPECT_EQ(pacer.next_length(kChunk, kSize), kChunk);
  // User requests: a piece next, and a wait of 4x the step (20 %).
  EXPECT_EQ(pacer.after_step(1000, 9), 4000U);
  EXPECT_TRUE(pacer.busy());
  EXPECT_EQ(pacer.next_length(2 * kChunk, kSize), kPiece);
  // The end of a range cuts a step short.
  EXPECT_EQ(pacer.next_length(kSize - 4096, kSize), 4096U);
  // Quiet again: whole chunks.
  EXPECT_EQ(pacer.after_step(1000, 9), 0U);
  EXPECT_EQ(pacer.next_length(3 * kChunk, kSize), kChunk);
  // 100 % never waits, but still copies in pieces.
  detail::RebuildPacer eager(kChunk, kPiece, 100, 0);
  EXPECT_EQ(eager.after_step(1000, 1), 0U);
  EXPECT_EQ(eager.next_length(0, kSize), kPiece);
}

TEST(RebuildYield, IdleRebuildCopiesWholeChunksWithoutWaiting) {
  Cluster cluster;
  cluster.create(2, kSize);
  fill_through_first_replica(cluster);
  auto v = open_first_replica(cluster);
  ASSERT_NE(v, nullptr);
  ASSERT_TRUE(v->add_replica(cluster.bindings()[1]).ok());
  ASSERT_TRUE(v->wait_rebuild().ok());
  RebuildProgress p = v->status().rebuild;
  EXPECT_EQ(p.total_bytes, kSize);
  EXPECT_EQ(p.pieces, kSize / kChunk);
  EXPECT_EQ(p.yields, 0U);
  EXPECT_EQ(p.yielded_seconds, 0.0);
  ASSERT_TRUE(v->close().ok());
  expect_replicas_identical(cluster);
}

TEST(RebuildYield, RebuildUnderWritesCopiesSmallPiecesAndWaits) {
  Cluster cluster;
  cluster.create(2, kSize);
  fill_through_first_replica(cluster);
  auto v = open_first_replica(cluster);
  ASSERT_NE(v, nullptr);
  ReplicatedVolume& volume = *v;

  // Foreground: rewrites blocks with the same content, QD1, until told to
  // stop; the test starts the rebuild once it has completed some writes.
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> writes{0};
  std::mutex m;
  std::condition_variable cv;
  std::thread writer([&] {
    auto q = volume.open_queue(0);
    ASSERT_TRUE(q.ok());
    auto buf = testing::make_buffer(4096);
    for (uint64_t i = 0; !stop.load(); ++i) {
      uint64_t block = (i * 7919) % (kSize / 4096);
      testing::fill_block(buf.get(), 1, block);
      ASSERT_EQ(testing::run_io(**q, VolumeOp::kWrite, block * 4096, 4096, buf.get()), 0);
      if (writes.fetch_add(1) + 1 == 64) {
        std::lock_guard lock(m);
        cv.notify_all();
      }
    }
  });
  {
    std::unique_lock lock(m);
    cv.wait(lock, [&] { return writes.load() >= 64; });
  }
  ASSERT_TRUE(volume.add_replica(cluster.bindings()[1]).ok());
  ASSERT_TRUE(volume.wait_rebuild().ok());
  stop = true;
  writer.join();

  RebuildProgress p = volume.status().rebuild;
  EXPECT_EQ(p.total_bytes, kSize);
  // Pieces of 128 KiB while the writer ran: more steps than whole chunks.
  EXPECT_GT(p.pieces, kSize / kChunk);
  EXPECT_GT(p.yields, 0U);
  EXPECT_GT(p.yielded_seconds, 0.0);
  ASSERT_TRUE(volume.close().ok());
  expect_replicas_identical(cluster);
}

}  // namespace
}  // namespace ublkvol::engine
