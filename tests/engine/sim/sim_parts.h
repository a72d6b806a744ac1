// The engine simulator's stand-ins for the parts of the world around a
// ReplicatedVolume, all driven by one OS thread (docs/testing.md
// "Engine simulator"):
//   - SimStore: a ReplicaStore in memory whose requests complete only when
//     the simulator says so, in any order, with an injected error, or never
//     (hung) - the device;
//   - SimExecutor: the StoreExecutor of one store (the store thread): moves
//     requests from the volume's channels to its store and completions back,
//     one at a time, when the simulator picks it; can die like a crashed
//     store thread;
//   - SimTaskRunner: the engine's background activities and control-path
//     pauses as steps of the simulator (Sim::pause()).
// Everything here is single-threaded by design: no locks, no atomics.
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "ublkvol/engine/engine_clock.h"
#include "ublkvol/engine/replica_store.h"
#include "ublkvol/engine/store_executor.h"
#include "ublkvol/engine/task_runner.h"

#include "store_channel.h"

namespace ublkvol::engine::sim {

// What the simulator asks of a SimStore request it completes.
enum class Outcome : uint8_t { kOk, kError };

class SimStore final : public ReplicaStore {
 public:
  // `clock` and `deadline_ns`: reads that took longer are aborted (below).
  SimStore(std::string name, uint64_t size, uint64_t region, const ManualClock& clock,
           uint64_t deadline_ns)
      : name_(std::move(name)),
        data_(size),
        region_(region),
        dirty_((size + region - 1) / region),
        clock_(clock),
        deadline_ns_(deadline_ns) {}

  [[nodiscard]] std::string_view name() const override { return name_; }
  [[nodiscard]] uint64_t size_bytes() const override { return data_.size(); }

  void submit(ReplicaIo& io) override {
    const bool mutating = io.op == ReplicaOp::kWrite || io.op == ReplicaOp::kDiscard ||
                          io.op == ReplicaOp::kWriteZeroes;
    if (io.op != ReplicaOp::kFlush &&
        (io.offset % 4096 != 0 || io.length % 4096 != 0 || io.offset > data_.size() ||
         io.length > data_.size() - io.offset)) {
      invalid_ = true;  // the engine never sends these: the run fails
    }
    if (mutating && !io.untracked) {
      // Marked (and, in memory, durable) before the request can apply.
      for (uint64_t r = io.offset / region_; r * region_ < io.offset + io.length; ++r) {
        dirty_[r] = 1;
      }
    }
    inflight_.push_back({&io, false, false, clock_.now_ns()});
  }
  void kick() override {}
  unsigned poll(bool /*wait*/) override { return 0; }
  [[nodiscard]] unsigned in_flight() const override {
    return static_cast<unsigned>(inflight_.size());
  }
  [[nodiscard]] int completion_fd() const override { return -1; }

  [[nodiscard]] const ReplicaMeta& meta() const override { return meta_; }
  Status write_meta(const ReplicaMeta& meta) override {
    if (fail_meta_) {
      return Error(EIO, name_ + ": injected metadata write failure");
    }
    meta_ = meta;
    return ok_status();
  }
  [[nodiscard]] uint64_t region_bytes() const override { return region_; }
  [[nodiscard]] std::vector<uint8_t> dirty_regions() const override { return dirty_; }
  Status clear_dirty() override {
    std::fill(dirty_.begin(), dirty_.end(), 0);
    meta_.bitmap_base = meta_.generation;
    return ok_status();
  }
  Status mark_all_dirty() override {
    std::fill(dirty_.begin(), dirty_.end(), 1);
    return ok_status();
  }
  Status create_snapshot(std::string_view name) override {
    auto [it, inserted] = snapshots_.emplace(std::string(name), data_);
    (void)it;
    if (!inserted) {
      return Error(EEXIST, name_ + ": snapshot " + std::string(name) + " exists");
    }
    return ok_status();
  }
  Status delete_snapshot(std::string_view name) override {
    if (snapshots_.erase(std::string(name)) == 0) {
      return Error(ENOENT, name_ + ": no snapshot " + std::string(name));
    }
    return ok_status();
  }
  [[nodiscard]] std::vector<std::string> list_snapshots() const override {
    std::vector<std::string> names;
    for (const auto& [name, bytes] : snapshots_) {
      names.push_back(name);
    }
    return names;
  }

  // ---- simulator side ----
  // Requests the simulator may complete now (not hung).
  [[nodiscard]] std::vector<size_t> ready() const {
    std::vector<size_t> out;
    for (size_t i = 0; i < inflight_.size(); ++i) {
      if (!inflight_[i].hung) {
        out.push_back(i);
      }
    }
    return out;
  }
  void hang(size_t i) { inflight_[i].hung = true; }
  // Hung requests answer: hung reads aborted (see complete()), hung writes
  // late, with their data.
  void unhang_all() {
    for (auto& e : inflight_) {
      if (e.hung && e.io->op == ReplicaOp::kRead) {
        e.aborted = true;
      }
      e.hung = false;
    }
  }
  [[nodiscard]] bool any_hung() const {
    return std::any_of(inflight_.begin(), inflight_.end(), [](const Entry& e) { return e.hung; });
  }
  [[nodiscard]] const ReplicaIo& request(size_t i) const { return *inflight_[i].io; }
  // Completes request i: applies it (unless it fails) and runs its callback.
  void complete(size_t i, Outcome outcome) {
    ReplicaIo& io = *inflight_[i].io;
    // The engine's stated assumption (docs/engine.md "Read after a hang"):
    // the device finishes or aborts a request within the I/O deadline
    // (deadline >= the device's io_timeout). A read that took longer - hung,
    // or overtaken by a clock jump - ends as the block layer's timeout ends
    // it: an error, its buffer untouched. The engine gave up on it at the
    // deadline and handed the buffer back, so a later landing would
    // overwrite whatever the caller put there since.
    if (inflight_[i].aborted ||
        (io.op == ReplicaOp::kRead && clock_.now_ns() - inflight_[i].since >= deadline_ns_)) {
      outcome = Outcome::kError;
    }
    inflight_.erase(inflight_.begin() + static_cast<std::ptrdiff_t>(i));
    int result = 0;
    if (outcome == Outcome::kError) {
      result = -EIO;
    } else if (io.op != ReplicaOp::kFlush) {
      std::byte* at = data_.data() + io.offset;
      switch (io.op) {
        case ReplicaOp::kRead:
          std::memcpy(io.buffer, at, io.length);
          break;
        case ReplicaOp::kWrite:
          std::memcpy(at, io.buffer, io.length);
          break;
        case ReplicaOp::kDiscard:
        case ReplicaOp::kWriteZeroes:
          std::memset(at, 0, io.length);
          break;
        case ReplicaOp::kFlush:
          break;
      }
    }
    io.on_complete(io, result);
  }
  // The store thread died: what it held is never completed nor touched.
  void abandon() { inflight_.clear(); }

  [[nodiscard]] const std::vector<std::byte>& data() const { return data_; }
  [[nodiscard]] const std::map<std::string, std::vector<std::byte>>& snapshots() const {
    return snapshots_;
  }
  [[nodiscard]] bool saw_invalid() const { return invalid_; }
  void set_fail_meta(bool fail) { fail_meta_ = fail; }

 private:
  struct Entry {
    ReplicaIo* io;
    bool hung;
    bool aborted;    // a hung read: completes with an error, touching nothing
    uint64_t since;  // ManualClock time it reached the store
  };
  std::string name_;
  std::vector<std::byte> data_;
  uint64_t region_;
  std::vector<uint8_t> dirty_;
  ReplicaMeta meta_;
  std::vector<Entry> inflight_;
  std::map<std::string, std::vector<std::byte>> snapshots_;
  const ManualClock& clock_;
  uint64_t deadline_ns_;
  bool invalid_ = false;
  bool fail_meta_ = false;
};

class SimExecutor final : public StoreExecutor {
 public:
  SimExecutor(std::string name, SimStore& store) : name_(std::move(name)), store_(store) {}

  [[nodiscard]] std::string_view name() const override { return name_; }
  Status call(const std::function<Status()>& fn) override {
    if (dead_) {
      return Error(ESHUTDOWN, "store executor " + name_ + " is not running");
    }
    return fn();
  }
  Status add_channel(detail::StoreChannel& channel) override {
    if (dead_) {
      return Error(ESHUTDOWN, "store executor " + name_ + " is not running");
    }
    channels_.push_back(&channel);
    return ok_status();
  }
  Status remove_channel(detail::StoreChannel& channel) override {
    channels_.erase(std::remove(channels_.begin(), channels_.end(), &channel), channels_.end());
    return ok_status();
  }
  void ring_doorbell() override {}
  [[nodiscard]] bool exited() const override { return dead_; }
  // Co-located variant: the executor's stores "live on" `home` (an idle
  // reactor whose identity the simulator borrows, Reactor::CurrentForTesting),
  // so a queue opened there calls the store directly (StoreChannel::local).
  [[nodiscard]] reactor::Reactor* home_reactor() const override { return home_; }
  void set_home(reactor::Reactor* home) { home_ = home; }

  // ---- simulator side ----
  // Channels with a request waiting (indices into the channel list).
  [[nodiscard]] std::vector<size_t> deliverable() const {
    std::vector<size_t> out;
    if (dead_) {
      return out;
    }
    for (size_t i = 0; i < channels_.size(); ++i) {
      if (!channels_[i]->requests.empty_for_consumer()) {
        out.push_back(i);
      }
    }
    return out;
  }
  // Moves the oldest request of channel i to the store.
  void deliver(size_t i) {
    detail::StoreChannel* ch = channels_[i];
    ReplicaIo* io = ch->requests.pop();
    io->on_complete = &SimExecutor::on_complete;
    io->user_data = ch;
    ch->stores[io->replica]->submit(*io);
  }
  void kill() {
    dead_ = true;
    store_.abandon();
  }
  [[nodiscard]] SimStore& store() const { return store_; }

 private:
  static void on_complete(ReplicaIo& io, int result) {
    io.result = result;
    auto* ch = static_cast<detail::StoreChannel*>(io.user_data);
    bool was_empty = false;
    bool ok = ch->completions.push(&io, was_empty);
    // Rings hold every request a queue can have in flight.
    (void)ok;
  }

  std::string name_;
  SimStore& store_;
  std::vector<detail::StoreChannel*> channels_;
  reactor::Reactor* home_ = nullptr;
  bool dead_ = false;
};

// The simulator's side of SimTaskRunner.
class PauseHandler {
 public:
  virtual ~PauseHandler() = default;
  // A control-path pause of the engine: let something else happen.
  virtual void pause() = 0;
};

class SimTaskRunner final : public TaskRunner {
 public:
  explicit SimTaskRunner(PauseHandler& sim) : sim_(sim) {}

  struct Body {
    std::string name;
    std::function<void()> fn;
    bool ran = false;
  };
  struct Ticker {
    std::string name;
    int fd = -1;
    uint64_t period_ns = 0;
    uint64_t next_ns = 0;
    std::function<void()> tick;
    bool stopped = false;
  };

  std::unique_ptr<BackgroundTask> start(std::string name, std::function<void()> body) override {
    auto b = std::make_shared<Body>();
    b->name = std::move(name);
    b->fn = std::move(body);
    bodies_.push_back(b);
    return std::make_unique<BodyTask>(std::move(b));
  }
  std::unique_ptr<BackgroundTask> start_ticker(std::string name, int wake_fd,
                                               std::chrono::milliseconds period,
                                               std::function<void()> tick) override {
    auto t = std::make_shared<Ticker>();
    t->name = std::move(name);
    t->fd = wake_fd;
    t->period_ns = static_cast<uint64_t>(period.count()) * 1000000ULL;
    t->tick = std::move(tick);
    tickers_.push_back(t);
    return std::make_unique<TickerTask>(std::move(t));
  }
  void wait(int /*fd*/, std::chrono::milliseconds /*timeout*/) override { sim_.pause(); }

  // Background bodies started and not yet run (the simulator runs them at
  // its top level, never inside a pause: they take the engine's control
  // locks).
  std::vector<std::shared_ptr<Body>> pending() {
    std::vector<std::shared_ptr<Body>> out;
    for (auto& b : bodies_) {
      if (!b->ran) {
        out.push_back(b);
      }
    }
    bodies_.erase(std::remove_if(bodies_.begin(), bodies_.end(),
                                 [](const std::shared_ptr<Body>& b) { return b->ran; }),
                  bodies_.end());
    return out;
  }
  std::vector<std::shared_ptr<Ticker>>& tickers() { return tickers_; }

  static void run(Body& b) {
    if (!b.ran) {
      b.ran = true;
      b.fn();
    }
  }

 private:
  class BodyTask final : public BackgroundTask {
   public:
    explicit BodyTask(std::shared_ptr<Body> b) : b_(std::move(b)) {}
    // A body nobody ran yet runs now (it sees its stop flag and returns).
    void join() override { run(*b_); }

   private:
    std::shared_ptr<Body> b_;
  };
  class TickerTask final : public BackgroundTask {
   public:
    explicit TickerTask(std::shared_ptr<Ticker> t) : t_(std::move(t)) {}
    ~TickerTask() override { t_->stopped = true; }
    void join() override { t_->stopped = true; }

   private:
    std::shared_ptr<Ticker> t_;
  };

  PauseHandler& sim_;
  std::vector<std::shared_ptr<Body>> bodies_;
  std::vector<std::shared_ptr<Ticker>> tickers_;
};

}  // namespace ublkvol::engine::sim
