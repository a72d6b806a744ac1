// Co-located dispatch (issue 14; docs/engine.md "Reactors"): a queue opened
// on a reactor's thread submits to the replicas whose stores that reactor
// runs with a direct call (the store holds the request before the queue's
// submit() returns - no ring, no doorbell), reads prefer such a replica,
// data is right through both paths, and losing a co-located replica works as
// losing any other.
#include <atomic>
#include <chrono>
#include <cstring>
#include <gtest/gtest.h>
#include <memory>
#include <thread>
#include <vector>

#include "ublkvol/dbs/memory_device.h"
#include "ublkvol/engine/raw_replica_store.h"
#include "ublkvol/engine/reactor_executor.h"
#include "ublkvol/engine/replicated_volume.h"
#include "ublkvol/reactor/reactor.h"

#include "reactor_queue_driver.h"
#include "replica_test_util.h"
#include "support/wait_until.h"

namespace ublkvol::engine {
namespace {

using namespace std::chrono_literals;
constexpr uint64_t kSize = 4 << 20;
constexpr uint32_t kBlock = 4096;
constexpr size_t kB = kBlock;  // for offsets (no 32-bit products)

// Waits of this file are bounded by 20s unless a call says otherwise.
template <typename Pred>
bool wait_until(Pred pred, std::chrono::milliseconds bound = 20s) {
  return ublkvol::test_support::wait_until(pred, bound);
}

// One replica: memory device -> raw replica store -> executor on a reactor.
struct LocalReplica {
  std::unique_ptr<dbs::MemoryDevice> memory;
  std::unique_ptr<RawReplicaStore> store;
  std::unique_ptr<ReactorExecutor> executor;
};

LocalReplica make_replica(reactor::Reactor& on, const std::string& name) {
  LocalReplica r;
  r.memory = std::make_unique<dbs::MemoryDevice>(kSize + (2U << 20U));
  RawReplicaFormatOptions fo;
  fo.size_bytes = kSize;
  EXPECT_TRUE(format_raw_replica(*r.memory, fo).ok());
  auto store = open_raw_replica(*r.memory);
  EXPECT_TRUE(store.ok());
  r.store = std::move(*store);
  auto exec = ReactorExecutor::create(on, name);
  EXPECT_TRUE(exec.ok());
  r.executor = std::move(*exec);
  EXPECT_TRUE(r.executor->attach(*r.store).ok());
  return r;
}

using testing::on_done;
using testing::QueueDriver;
using testing::Request;

class Colocated : public ::testing::Test {
 protected:
  // `homes[i]`: the reactor (index into reactors_) of replica i's store.
  void start(unsigned nreactors, const std::vector<unsigned>& homes) {
    for (unsigned i = 0; i < nreactors; ++i) {
      auto r = reactor::Reactor::start({.name = "colo" + std::to_string(i)});
      ASSERT_TRUE(r.ok());
      reactors_.push_back(std::move(*r));
    }
    std::vector<ReplicaBinding> bindings;
    for (size_t i = 0; i < homes.size(); ++i) {
      replicas_.push_back(make_replica(*reactors_[homes[i]], "rep" + std::to_string(i)));
      bindings.push_back({replicas_.back().store.get(), replicas_.back().executor.get()});
    }
    ReplicatedVolumeOptions o;
    o.name = "colo";
    o.dirty_clear_interval = std::chrono::milliseconds(0);
    auto v = ReplicatedVolume::open(o, bindings);
    ASSERT_TRUE(v.ok()) << v.error().to_string();
    volume_ = std::move(*v);
    // The queue is opened on reactor 0's thread: that is its home.
    ASSERT_TRUE(home()
                    .call([&]() -> Status {
                      auto q = volume_->open_queue(0);
                      if (!q.ok()) {
                        return q.error();
                      }
                      driver_.queue = std::move(*q);
                      return ok_status();
                    })
                    .ok());
    ASSERT_TRUE(home().add(driver_).ok());
  }

  void TearDown() override {
    if (!reactors_.empty()) {
      (void)home().remove(driver_);
      (void)home().call([&] {
        driver_.queue.reset();
        return ok_status();
      });
    }
    if (volume_) {
      EXPECT_TRUE(volume_->close().ok());
      volume_.reset();
    }
    for (LocalReplica& r : replicas_) {
      r.executor.reset();
      // A killed executor leaves requests queued in its memory device that
      // nothing will execute: drop them as a crash does (Cluster::stop).
      if (r.memory->in_flight() != 0) {
        r.memory = std::make_unique<dbs::MemoryDevice>(r.memory->release_image());
      }
      r.store.reset();
    }
    replicas_.clear();
    reactors_.clear();
  }

  reactor::Reactor& home() { return *reactors_[0]; }

  // Submits on the home reactor; `check` runs right after submit(), on that
  // thread, before the reactor polls anything.
  void submit(Request& req, VolumeOp op, uint64_t offset, uint32_t length, std::byte* buffer,
              const std::function<void()>& check = {}) {
    req.io = VolumeIo{};
    req.io.op = op;
    req.io.offset = offset;
    req.io.length = length;
    req.io.buffer = buffer;
    req.io.user_data = &req;
    req.io.on_complete = &on_done;
    req.result = 1;
    ASSERT_TRUE(home()
                    .call([&] {
                      driver_.queue->submit(req.io);
                      if (check) {
                        check();
                      }
                      driver_.queue->kick();
                      return ok_status();
                    })
                    .ok());
  }
  int wait(Request& req) {
    EXPECT_TRUE(wait_until([&] { return req.result.load(std::memory_order_acquire) != 1; }));
    return req.result.load(std::memory_order_acquire);
  }
  int io(VolumeOp op, uint64_t offset, uint32_t length, std::byte* buffer) {
    Request req;
    submit(req, op, offset, length, buffer);
    return wait(req);
  }
  // Requests replica i's store holds (asked on its reactor).
  unsigned in_flight(unsigned i) {
    unsigned n = 0;
    (void)replicas_[i].executor->call([&] {
      n = replicas_[i].store->in_flight();
      return ok_status();
    });
    return n;
  }

  std::vector<std::unique_ptr<reactor::Reactor>> reactors_;
  std::vector<LocalReplica> replicas_;
  std::unique_ptr<ReplicatedVolume> volume_;
  QueueDriver driver_;
};

TEST_F(Colocated, SubRequestsToStoresOnTheQueuesReactorAreDirectCalls) {
  start(1, {0, 0});
  auto buf = testing::make_buffer(kBlock);
  testing::fill_block(buf.get(), 7, 3);
  Request req;
  unsigned held0 = 0;
  unsigned held1 = 0;
  // Both stores hold the write the moment submit() returns: it was handed
  // to them by a call, not queued for their executor's next poll.
  submit(req, VolumeOp::kWrite, 3 * kB, kBlock, buf.get(), [&] {
    held0 = replicas_[0].store->in_flight();
    held1 = replicas_[1].store->in_flight();
  });
  EXPECT_EQ(held0, 1U);
  EXPECT_EQ(held1, 1U);
  EXPECT_EQ(wait(req), 0);
  // Read back through the same path, and from each replica's device.
  auto rd = testing::make_buffer(kBlock);
  ASSERT_EQ(io(VolumeOp::kRead, 3 * kB, kBlock, rd.get()), 0);
  EXPECT_EQ(testing::block_id(rd.get(), 3), 7U);
  ASSERT_EQ(io(VolumeOp::kFlush, 0, 0, nullptr), 0);
}

TEST_F(Colocated, ReadsPreferTheReplicaOnTheQueuesReactor) {
  // Replica 0 on the other reactor, replica 1 on the queue's: without the
  // preference the read would go to replica 0 (first, equally loaded).
  start(2, {1, 0});
  auto buf = testing::make_buffer(64 * kB);
  for (uint32_t b = 0; b < 64; ++b) {
    testing::fill_block(buf.get() + b * kB, 9, b);
  }
  ASSERT_EQ(io(VolumeOp::kWrite, 0, static_cast<uint32_t>(64 * kB), buf.get()), 0);
  auto rd = testing::make_buffer(64 * kB);
  for (uint32_t b = 0; b < 64; ++b) {
    Request req;
    unsigned local_held = 0;
    submit(req, VolumeOp::kRead, b * kB, kBlock, rd.get() + b * kB,
           [&] { local_held = replicas_[1].store->in_flight(); });
    EXPECT_EQ(local_held, 1U) << "block " << b;
    ASSERT_EQ(wait(req), 0);
    EXPECT_EQ(testing::block_id(rd.get() + b * kB, b), 9U) << "block " << b;
  }
  EXPECT_EQ(in_flight(0), 0U);
}

TEST_F(Colocated, MixedPathsKeepReplicasIdenticalUnderLoad) {
  // One replica local, one across: many overlapping writes in flight at once.
  start(2, {0, 1});
  constexpr unsigned kRequests = 64;
  auto buf = testing::make_buffer(size_t{kRequests} * kBlock);
  std::vector<Request> reqs(kRequests);
  for (unsigned round = 0; round < 8; ++round) {
    for (unsigned i = 0; i < kRequests; ++i) {
      uint32_t block = (i * 7 + round) % 16;  // overlapping ranges
      testing::fill_block(buf.get() + size_t{i} * kBlock, round * 1000 + i + 1, block);
      submit(reqs[i], VolumeOp::kWrite, uint64_t{block} * kBlock, kBlock,
             buf.get() + size_t{i} * kBlock);
    }
    for (auto& r : reqs) {
      ASSERT_EQ(wait(r), 0);
    }
  }
  ASSERT_EQ(io(VolumeOp::kFlush, 0, 0, nullptr), 0);
  // Both replicas hold the same bytes.
  const uint64_t data = replicas_[0].store->data_offset();
  for (uint32_t b = 0; b < 16; ++b) {
    const std::byte* a = replicas_[0].memory->bytes().data() + data + b * kB;
    const std::byte* c = replicas_[1].memory->bytes().data() + data + b * kB;
    EXPECT_EQ(std::memcmp(a, c, kBlock), 0) << "block " << b;
    EXPECT_NE(testing::block_id(a, b), ~uint64_t{0}) << "block " << b;
  }
}

TEST_F(Colocated, LosingACoLocatedReplicaKeepsTheVolumeOnline) {
  start(1, {0, 0});
  auto buf = testing::make_buffer(kBlock);
  testing::fill_block(buf.get(), 5, 0);
  ASSERT_EQ(io(VolumeOp::kWrite, 0, kBlock, buf.get()), 0);
  replicas_[0].executor->kill_for_testing();
  ASSERT_TRUE(wait_until([&] { return replicas_[0].executor->exited(); }));
  for (uint32_t b = 0; b < 16; ++b) {
    testing::fill_block(buf.get(), 6, b);
    ASSERT_EQ(io(VolumeOp::kWrite, uint64_t{b} * kBlock, kBlock, buf.get()), 0) << "block " << b;
  }
  EXPECT_TRUE(
      wait_until([&] { return volume_->status().replicas[0].state == ReplicaState::kFailed; }));
  auto rd = testing::make_buffer(kBlock);
  ASSERT_EQ(io(VolumeOp::kRead, 15 * kB, kBlock, rd.get()), 0);
  EXPECT_EQ(testing::block_id(rd.get(), 15), 6U);
}

}  // namespace
}  // namespace ublkvol::engine
