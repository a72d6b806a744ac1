// Zero copy per request (issue 15 item 5; docs/zero-copy.md "The daemon"):
// VolumeQueue::all_targets_local() of the replicated engine says yes only
// while every replica of the volume is a DBS store on a FileDevice served by
// the queue's own reactor, follows replicas added and removed at run time,
// and a replica added while requests answered "direct" are in flight joins
// only after they completed (so none of them can reach it).
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <gtest/gtest.h>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "ublkvol/dbs/file_device.h"
#include "ublkvol/dbs/store.h"
#include "ublkvol/engine/dbs_replica_store.h"
#include "ublkvol/engine/replicated_volume.h"
#include "ublkvol/engine/store_thread.h"
#include "ublkvol/reactor/reactor.h"

#include "reactor_queue_driver.h"
#include "replica_test_util.h"
#include "support/wait_until.h"

namespace ublkvol::engine {
namespace {

using namespace std::chrono_literals;
constexpr uint64_t kMiB = 1ULL << 20U;
constexpr uint64_t kVolumeSize = 4 * kMiB;
constexpr uint32_t kBlock = 4096;

template <typename Pred>
bool wait_until(Pred pred, std::chrono::milliseconds bound = 20s) {
  return ublkvol::test_support::wait_until(pred, bound);
}

// Forwards to a DBS replica; while `hold` is set, keeps submitted requests
// (owner thread only) until release() - a request that stays in flight as
// long as the test wants.
class HoldingStore final : public ReplicaStore {
 public:
  explicit HoldingStore(ReplicaStore& inner) : inner_(inner) { held_.reserve(64); }
  [[nodiscard]] std::string_view name() const override { return inner_.name(); }
  [[nodiscard]] uint64_t size_bytes() const override { return inner_.size_bytes(); }
  void submit(ReplicaIo& io) override {
    if (hold) {
      held_.push_back(&io);
    } else {
      inner_.submit(io);
    }
  }
  void kick() override { inner_.kick(); }
  unsigned poll(bool wait) override { return inner_.poll(wait); }
  [[nodiscard]] unsigned in_flight() const override {
    return inner_.in_flight() + static_cast<unsigned>(held_.size());
  }
  [[nodiscard]] int completion_fd() const override { return inner_.completion_fd(); }
  [[nodiscard]] const ReplicaMeta& meta() const override { return inner_.meta(); }
  Status write_meta(const ReplicaMeta& meta) override { return inner_.write_meta(meta); }
  [[nodiscard]] uint64_t region_bytes() const override { return inner_.region_bytes(); }
  [[nodiscard]] std::vector<uint8_t> dirty_regions() const override {
    return inner_.dirty_regions();
  }
  Status clear_dirty() override { return inner_.clear_dirty(); }
  // Owner thread.
  void release() {
    hold = false;
    for (ReplicaIo* io : held_) {
      inner_.submit(*io);
    }
    held_.clear();
    inner_.kick();
  }
  [[nodiscard]] size_t held() const { return held_.size(); }
  bool hold = false;

 private:
  ReplicaStore& inner_;
  std::vector<ReplicaIo*> held_;
};

// One DBS store in a tmpfs file, its replica "vol", served by a StoreThread
// on `reactor` (nullptr: a thread of its own).
struct FileReplica {
  std::string path;
  std::unique_ptr<dbs::FileDevice> device;
  std::unique_ptr<dbs::Store> store;
  std::unique_ptr<DbsReplicaStore> replica;
  std::unique_ptr<HoldingStore> holding;
  std::unique_ptr<StoreThread> thread;

  [[nodiscard]] ReplicaStore& bound() const {
    return holding ? static_cast<ReplicaStore&>(*holding) : *replica;
  }
};

using testing::on_done;
using testing::QueueDriver;
using testing::Request;

class ZeroCopyTargets : public ::testing::Test {
 protected:
  void SetUp() override {
    for (unsigned i = 0; i < 2; ++i) {
      auto r = reactor::Reactor::start({.name = "zct" + std::to_string(i)});
      ASSERT_TRUE(r.ok()) << r.error().to_string();
      reactors_.push_back(std::move(*r));
    }
  }

  void TearDown() override {
    if (driver_.queue) {
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
    for (auto& r : replicas_) {
      r->thread.reset();
    }
    for (auto& r : replicas_) {
      r->holding.reset();
      r->replica.reset();
      if (r->store) {
        (void)r->store->close();
      }
      r->store.reset();
      r->device.reset();
      ::unlink(r->path.c_str());
    }
    replicas_.clear();
    reactors_.clear();
  }

  reactor::Reactor& home() { return *reactors_[0]; }

  // A new replica on reactor `on` (-1: its own StoreThread).
  FileReplica& add_store(int on, bool holding = false) {
    auto r = std::make_unique<FileReplica>();
    char path[] = "/dev/shm/ublkvol-zct-XXXXXX";
    const int fd = ::mkstemp(path);
    EXPECT_GE(fd, 0);
    ::close(fd);
    r->path = path;
    dbs::FileDeviceOptions fo;
    fo.create_size = 64 * kMiB;
    fo.single_issuer = false;  // opened here, used on the store's thread
    auto device = dbs::FileDevice::open(r->path, fo);
    EXPECT_TRUE(device.ok()) << device.error().to_string();
    r->device = std::move(*device);
    EXPECT_TRUE(dbs::Store::format(*r->device).ok());
    auto store = dbs::Store::open(*r->device);
    EXPECT_TRUE(store.ok()) << store.error().to_string();
    r->store = std::move(*store);
    EXPECT_TRUE(create_dbs_replica(*r->store, "vol", kVolumeSize).ok());
    auto rep = open_dbs_replica(*r->store, "vol");
    EXPECT_TRUE(rep.ok()) << rep.error().to_string();
    r->replica = std::move(*rep);
    if (holding) {
      r->holding = std::make_unique<HoldingStore>(*r->replica);
    }
    StoreThreadOptions to;
    to.name = "zcstore" + std::to_string(replicas_.size());
    to.reactor = on >= 0 ? reactors_[static_cast<unsigned>(on)].get() : nullptr;
    auto thread = StoreThread::start(to);
    EXPECT_TRUE(thread.ok()) << thread.error().to_string();
    r->thread = std::move(*thread);
    EXPECT_TRUE(r->thread->attach(r->bound()).ok());
    replicas_.push_back(std::move(r));
    return *replicas_.back();
  }

  static ReplicaBinding binding(FileReplica& r, bool fixed_buffer_io = true) {
    return {&r.bound(), r.thread.get(), fixed_buffer_io};
  }

  // The volume over `bindings`, its queue 0 opened and reaped on reactor 0.
  void open(const std::vector<ReplicaBinding>& bindings) {
    ReplicatedVolumeOptions o;
    o.name = "zct";
    o.dirty_clear_interval = 0ms;
    auto v = ReplicatedVolume::open(o, bindings);
    ASSERT_TRUE(v.ok()) << v.error().to_string();
    volume_ = std::move(*v);
    ASSERT_TRUE(home()
                    .call([&]() -> Status {
                      UBLKVOL_ASSIGN_OR_RETURN(driver_.queue, volume_->open_queue(0));
                      return ok_status();
                    })
                    .ok());
    ASSERT_TRUE(home().add(driver_).ok());
  }

  // all_targets_local(), asked where the queue lives.
  bool answer() {
    bool yes = false;
    EXPECT_TRUE(home()
                    .call([&] {
                      yes = driver_.queue->all_targets_local();
                      return ok_status();
                    })
                    .ok());
    return yes;
  }

  // Asks, then submits a write of block `block` (as the ublk queue does);
  // `before_submit` runs on the queue's thread first.
  bool ask_and_write(Request& req, std::byte* buffer, uint64_t block,
                     const std::function<void()>& before_submit = {}) {
    req.io = VolumeIo{};
    req.io.op = VolumeOp::kWrite;
    req.io.offset = block * kBlock;
    req.io.length = kBlock;
    req.io.buffer = buffer;
    req.io.user_data = &req;
    req.io.on_complete = &on_done;
    req.result = 1;
    bool direct = false;
    EXPECT_TRUE(home()
                    .call([&] {
                      if (before_submit) {
                        before_submit();
                      }
                      direct = driver_.queue->all_targets_local();
                      driver_.queue->submit(req.io);
                      driver_.queue->kick();
                      return ok_status();
                    })
                    .ok());
    return direct;
  }

  int wait(Request& req) {
    EXPECT_TRUE(wait_until([&] { return req.result.load(std::memory_order_acquire) != 1; }));
    return req.result.load(std::memory_order_acquire);
  }

  std::vector<std::unique_ptr<reactor::Reactor>> reactors_;
  std::vector<std::unique_ptr<FileReplica>> replicas_;
  std::unique_ptr<ReplicatedVolume> volume_;
  QueueDriver driver_;
};

TEST_F(ZeroCopyTargets, AnswerFollowsWhereTheReplicasAre) {
  open({binding(add_store(0))});
  EXPECT_TRUE(answer()) << "1 DBS replica on the queue's reactor";
  auto buf = testing::make_buffer(kBlock);
  testing::fill_block(buf.get(), 5, 1);
  Request req;
  EXPECT_TRUE(ask_and_write(req, buf.get(), 1));
  EXPECT_EQ(wait(req), 0);

  // A replica on the other reactor: its thread cannot reach the window.
  auto added = volume_->add_replica(binding(add_store(1)));
  ASSERT_TRUE(added.ok()) << added.error().to_string();
  EXPECT_FALSE(answer()) << "a replica on another reactor";
  ASSERT_TRUE(volume_->wait_rebuild().ok());
  EXPECT_FALSE(answer()) << "a replica on another reactor, rebuilt";
  ASSERT_TRUE(volume_->remove_replica(*added).ok());
  EXPECT_TRUE(answer()) << "the other reactor's replica removed";

  // Same reactor, but a store that does not say it takes fixed buffers.
  auto plain = volume_->add_replica(binding(add_store(0), /*fixed_buffer_io=*/false));
  ASSERT_TRUE(plain.ok()) << plain.error().to_string();
  EXPECT_FALSE(answer()) << "a local replica without fixed_buffer_io";
  ASSERT_TRUE(volume_->wait_rebuild().ok());
  ASSERT_TRUE(volume_->remove_replica(*plain).ok());
  EXPECT_TRUE(answer());

  // A second DBS replica on the queue's own reactor keeps it direct.
  auto local = volume_->add_replica(binding(add_store(0)));
  ASSERT_TRUE(local.ok()) << local.error().to_string();
  EXPECT_TRUE(answer()) << "two DBS replicas on the queue's reactor";
  ASSERT_TRUE(volume_->wait_rebuild().ok());
  EXPECT_TRUE(answer());
}

TEST_F(ZeroCopyTargets, StoreOnItsOwnStoreThreadIsNotLocal) {
  open({binding(add_store(-1))});
  EXPECT_FALSE(answer());
}

TEST_F(ZeroCopyTargets, ReplicaAddedWaitsForRequestsAnsweredDirect) {
  FileReplica& first = add_store(0, /*holding=*/true);
  open({binding(first)});
  auto buf = testing::make_buffer(kBlock);
  testing::fill_block(buf.get(), 9, 2);
  Request req;
  // The write stays at replica 0 until released.
  ASSERT_TRUE(ask_and_write(req, buf.get(), 2, [&] { first.holding->hold = true; }));

  std::atomic<bool> returned{false};
  std::atomic<bool> done_at_return{false};
  Result<unsigned> added = Error(EINVAL, "not run");
  FileReplica& second = add_store(1);
  std::thread adder([&] {
    added = volume_->add_replica(binding(second));
    done_at_return = req.result.load(std::memory_order_acquire) != 1;
    returned = true;
  });
  // The new replica is published (so new requests are answered "copy")...
  ASSERT_TRUE(wait_until([&] { return volume_->status().replicas.size() == 2; }));
  EXPECT_FALSE(answer());
  // ...but add_replica() returns only once the direct write is done.
  EXPECT_FALSE(req.result.load(std::memory_order_acquire) != 1);
  ASSERT_TRUE(home()
                  .call([&] {
                    first.holding->release();
                    return ok_status();
                  })
                  .ok());
  adder.join();
  ASSERT_TRUE(added.ok()) << added.error().to_string();
  EXPECT_TRUE(returned.load());
  EXPECT_TRUE(done_at_return.load())
      << "add_replica returned while a request answered direct was in flight";
  EXPECT_EQ(wait(req), 0);
  ASSERT_TRUE(volume_->wait_rebuild().ok());
}

}  // namespace
}  // namespace ublkvol::engine
