// engine_sim_test: the replicated engine driven by one OS thread, where a
// seed decides every interleaving (docs/testing.md "Engine simulator").
// (~1,000 lines in one file: the World's steps, model and checks share its
// state; the reusable parts - stores, executors, task runner - are in
// sim_parts.h.)
//
// Per seed: a ReplicatedVolume on 2-3 SimStores (one SimExecutor each), 1-2
// user queues, a random workload of reads, writes, write-zeroes, discards and
// flushes, and at random points: replica I/O errors, hung requests (failed by
// the deadline on the manual clock), store-executor death, clock jumps,
// operator failures, rebuilds/resyncs, add/remove/replace replica,
// checkpoints, snapshots and verify runs. Then every replica is brought back
// in sync and the run is checked:
//   - every read returned a value some write (or the initial zeros) could
//     have left there at that time (reference model below);
//   - every block reads back a value the model allows at the end - so every
//     completed write is readable unless a later write replaced it, and
//     overlapping writes ended in an order consistent with their completion;
//   - every in-sync replica holds exactly those bytes (byte-identical);
//   - replicas that hold a snapshot hold the same snapshot bytes;
//   - no request leaked: every queue has nothing in flight, every store has
//     nothing in flight, and the volume closes and is destroyed.
//
// UBLKVOL_SIM_SEED=<n>   run seed n only (the failure message names it)
// UBLKVOL_SIM_SEEDS=<n>  run seeds 1..n (default 2000); UBLKVOL_SIM_FIRST=<k>
//                        starts at seed k instead (a soak: large n)
// UBLKVOL_SIM_TRACE=1    print every step of the run (with SEED)
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <gtest/gtest.h>
#include <memory>
#include <optional>
#include <random>
#include <spdlog/spdlog.h>
#include <string>
#include <vector>

#include "ublkvol/engine/engine_clock.h"
#include "ublkvol/engine/replicated_volume.h"
#include "ublkvol/reactor/reactor.h"

#include "sim_parts.h"

namespace ublkvol::engine::sim {
namespace {

constexpr uint64_t kBlock = 4096;
constexpr uint64_t kMagic = 0x51D0B10C5EEDULL;
constexpr uint64_t kGarbage = UINT64_MAX;
constexpr uint64_t kDeadlineMs = 100;

uint64_t env_u64(const char* name, uint64_t fallback) {
  // The test's own settings, read on its one thread before anything runs.
  const char* v = std::getenv(name);  // NOLINT(concurrency-mt-unsafe)
  return v != nullptr && *v != '\0' ? std::strtoull(v, nullptr, 10) : fallback;
}

// Block contents: value 0 is all zeros; value v > 0 is a pattern naming v
// and the block, so a block landing at the wrong offset is caught too.
void fill_block(std::byte* p, uint64_t value, uint64_t block) {
  auto* w = reinterpret_cast<uint64_t*>(p);
  w[0] = kMagic ^ value;
  w[1] = block;
  for (size_t i = 2; i < kBlock / 8; ++i) {
    w[i] = value * 0x9E3779B97F4A7C15ULL + block * 31 + i;
  }
}
uint64_t decode_block(const std::byte* p, uint64_t block) {
  const auto* w = reinterpret_cast<const uint64_t*>(p);
  bool zero = true;
  for (size_t i = 0; i < kBlock / 8 && zero; ++i) {
    zero = w[i] == 0;
  }
  if (zero) {
    return 0;
  }
  const uint64_t value = w[0] ^ kMagic;
  if (w[1] != block) {
    return kGarbage;
  }
  for (size_t i = 2; i < kBlock / 8; ++i) {
    if (w[i] != value * 0x9E3779B97F4A7C15ULL + block * 31 + i) {
      return kGarbage;
    }
  }
  return value;
}

struct AlignedFree {
  void operator()(std::byte* p) const { std::free(p); }
};
using Buffer = std::unique_ptr<std::byte, AlignedFree>;
Buffer aligned(size_t bytes) {
  return Buffer(static_cast<std::byte*>(std::aligned_alloc(4096, bytes)));
}

// Reference model: per block, every mutating request that touched it with
// the logical times it was submitted and completed. A value v is possible
// for a read issued at ts and completed at tc if some request wrote v, was
// submitted before tc, and no successful request on the block was both
// submitted after it completed and completed itself before ts.
struct ModelOp {
  uint64_t value = 0;  // 0: zeros (write-zeroes, discard, initial)
  uint64_t submitted = 0;
  uint64_t completed = UINT64_MAX;
  bool ok = false;
};

class Model {
 public:
  explicit Model(uint64_t blocks) : per_block_(blocks) {
    ops_.push_back({0, 0, 0, true});  // the initial zeros
    for (auto& b : per_block_) {
      b.push_back(0);
    }
  }
  size_t begin(uint64_t first, uint64_t count, uint64_t value, uint64_t now) {
    ops_.push_back({value, now, UINT64_MAX, false});
    for (uint64_t b = first; b < first + count; ++b) {
      per_block_[b].push_back(ops_.size() - 1);
    }
    return ops_.size() - 1;
  }
  void end(size_t op, bool ok, uint64_t now) {
    ops_[op].completed = now;
    ops_[op].ok = ok;
  }
  [[nodiscard]] bool possible(uint64_t block, uint64_t value, uint64_t ts, uint64_t tc) const {
    for (size_t i : per_block_[block]) {
      const ModelOp& o = ops_[i];
      if (o.value != value || o.submitted > tc) {
        continue;
      }
      bool replaced = false;
      for (size_t j : per_block_[block]) {
        const ModelOp& n = ops_[j];
        if (n.ok && n.completed < ts && o.completed != UINT64_MAX && n.submitted > o.completed) {
          replaced = true;
          break;
        }
      }
      if (!replaced) {
        return true;
      }
    }
    return false;
  }

 private:
  std::vector<ModelOp> ops_;
  std::vector<std::vector<size_t>> per_block_;
};

struct SimFailure {
  std::string what;
};

class World final : public PauseHandler {
 public:
  // `home` (optional): an idle reactor whose identity co-located seeds
  // borrow (co-location is decided by a second generator, so a seed without
  // it runs exactly as before the variant existed).
  explicit World(uint64_t seed, reactor::Reactor* home = nullptr)
      : seed_(seed),
        rng_(seed),
        colo_rng_(seed ^ 0xC010CA7EDULL),
        trace_(env_u64("UBLKVOL_SIM_TRACE", 0) != 0),
        home_(home) {
    colocated_ = home_ != nullptr && colo_rng_() % 2 == 0;
  }

  // Runs the seed; an empty string when every check passed.
  std::string run() {
    try {
      setup();
      workload();
      quiesce();
      heal();
      check_final();
      teardown();
    } catch (const SimFailure& f) {
      // The engine was interrupted mid-operation: its state is not
      // consistent enough to shut down. Leave it (the run failed anyway).
      for (auto& q : queues_) {
        (void)q.release();
      }
      (void)vol_.release();
      return f.what;
    }
    return {};
  }

  void pause() override {
    if (++pauses_ > kMaxPauses) {
      fail("the engine waited " + std::to_string(kMaxPauses) +
           " times without finishing (stuck: a request or a wake-up was lost)");
    }
    step(/*top=*/false);
  }

 private:
  static constexpr uint64_t kMaxPauses = 400000;

  struct Req {
    VolumeIo io;
    World* world = nullptr;
    unsigned queue = 0;
    Buffer buffer;
    bool busy = false;
    uint64_t first = 0;
    uint64_t count = 0;
    uint64_t submitted = 0;
    size_t model_op = SIZE_MAX;
  };

  [[noreturn]] void fail(const std::string& what) {
    char head[96];
    (void)std::snprintf(head, sizeof(head), "seed %" PRIu64 " at step %" PRIu64 ": ", seed_, now_);
    if (destroying_) {
      // Inside the volume's destructor: no exception may leave it.
      (void)std::fprintf(stderr, "engine simulator: %s%s\n  replay: UBLKVOL_SIM_SEED=%" PRIu64 "\n",
                         head, what.c_str(), seed_);
      std::abort();
    }
    if (trace_ && vol_) {
      for (const VolumeEvent& e : vol_->status().events) {
        (void)std::fprintf(stderr, "  event: replica %d: %s\n", e.replica, e.message.c_str());
      }
    }
    throw SimFailure{head + what};
  }
  void trace(const std::string& s) const {
    if (trace_) {
      (void)std::fprintf(stderr, "[%" PRIu64 "] %s\n", now_, s.c_str());
    }
  }
  uint64_t pick(uint64_t n) { return std::uniform_int_distribution<uint64_t>(0, n - 1)(rng_); }
  bool chance(double p) { return std::uniform_real_distribution<double>(0, 1)(rng_) < p; }

  // ---- set-up ----
  unsigned new_store() {
    const unsigned i = static_cast<unsigned>(stores_.size());
    stores_.push_back(std::make_unique<SimStore>("sim" + std::to_string(i), size_, region_, clock_,
                                                 kDeadlineMs * 1000000ULL));
    execs_.push_back(std::make_unique<SimExecutor>("exec" + std::to_string(i), *stores_.back()));
    if (colocated_ && colo_rng_() % 2 == 0) {
      execs_.back()->set_home(home_);
      trace("store " + std::to_string(i) + " on the reactor");
    }
    return i;
  }
  ReplicaBinding binding_of(unsigned store) { return {stores_[store].get(), execs_[store].get()}; }

  void setup() {
    blocks_ = 16 + pick(48);
    size_ = blocks_ * kBlock;
    region_ = kBlock << pick(3);
    const unsigned replicas = 2 + static_cast<unsigned>(pick(2));
    nqueues_ = 1 + static_cast<unsigned>(pick(2));
    depth_ = 4 + static_cast<unsigned>(pick(5));
    ops_budget_ = 60 + pick(200);
    p_error_ = chance(0.5) ? 0.0 : 0.002 + 0.02 * static_cast<double>(pick(100)) / 100;
    p_hang_ = chance(0.5) ? 0.0 : 0.002 + 0.01 * static_cast<double>(pick(100)) / 100;
    p_control_ = 0.005 + 0.02 * static_cast<double>(pick(100)) / 100;
    model_ = std::make_unique<Model>(blocks_);
    std::vector<ReplicaBinding> bindings;
    for (unsigned r = 0; r < replicas; ++r) {
      const unsigned s = new_store();
      store_of_[r] = static_cast<int>(s);
      bindings.push_back(binding_of(s));
    }
    ReplicatedVolumeOptions o;
    o.name = "sim" + std::to_string(seed_);
    o.queues = nqueues_;
    o.queue_depth = depth_;
    o.min_replicas = 1;
    o.io_deadline = std::chrono::milliseconds(kDeadlineMs);
    o.max_io_bytes = 4 * kBlock;
    o.rebuild_chunk_bytes = static_cast<uint32_t>(kBlock << pick(3));
    o.rebuild_persist_bytes = kBlock * (1 + pick(8));
    o.dirty_clear_interval = std::chrono::milliseconds(0);
    o.clock = EngineClock(&clock_);
    o.task_runner = &runner_;
    trace("open: " + std::to_string(replicas) + " replicas, " + std::to_string(nqueues_) +
          " queues of depth " + std::to_string(depth_) + ", " + std::to_string(blocks_) +
          " blocks");
    auto v = ReplicatedVolume::open(o, bindings);
    if (!v.ok()) {
      fail("open: " + v.error().to_string());
    }
    vol_ = std::move(*v);
    for (unsigned q = 0; q < nqueues_; ++q) {
      // Co-located seeds open some queues "on" the reactor: their channels
      // to the stores there turn local (direct calls, queue_control.cpp).
      std::optional<reactor::Reactor::CurrentForTesting> on_reactor;
      if (colocated_ && colo_rng_() % 2 == 0) {
        on_reactor.emplace(*home_);
        trace("queue " + std::to_string(q) + " on the reactor");
      }
      auto queue = vol_->open_queue(q);
      if (!queue.ok()) {
        fail("open_queue: " + queue.error().to_string());
      }
      queues_.push_back(std::move(*queue));
      for (unsigned i = 0; i < depth_; ++i) {
        auto r = std::make_unique<Req>();
        r->world = this;
        r->queue = q;
        r->buffer = aligned(4 * kBlock);
        r->io.user_data = r.get();
        r->io.on_complete = &World::on_complete;
        reqs_.push_back(std::move(r));
      }
    }
  }

  // ---- the data path ----
  bool submit_one() {
    std::vector<Req*> free;
    for (auto& r : reqs_) {
      if (!r->busy) {
        free.push_back(r.get());
      }
    }
    if (free.empty()) {
      return false;
    }
    Req& r = *free[pick(free.size())];
    r.busy = true;
    ++submitted_;
    r.submitted = now_;
    r.count = 1 + pick(4);
    r.first = pick(blocks_ - r.count + 1);
    r.model_op = SIZE_MAX;
    VolumeIo& io = r.io;
    io.offset = r.first * kBlock;
    io.length = static_cast<uint32_t>(r.count * kBlock);
    io.fua = chance(0.1);
    io.buffer = r.buffer.get();
    const uint64_t roll = pick(100);
    if (roll < 50) {
      io.op = VolumeOp::kWrite;
      const uint64_t value = ++next_value_;
      for (uint64_t b = 0; b < r.count; ++b) {
        fill_block(r.buffer.get() + b * kBlock, value, r.first + b);
      }
      r.model_op = model_->begin(r.first, r.count, value, now_);
    } else if (roll < 85) {
      io.op = VolumeOp::kRead;
      std::memset(r.buffer.get(), 0xA5, r.count * kBlock);
    } else if (roll < 90) {
      io.op = VolumeOp::kWriteZeroes;
      r.model_op = model_->begin(r.first, r.count, 0, now_);
    } else if (roll < 95) {
      io.op = VolumeOp::kDiscard;
      r.model_op = model_->begin(r.first, r.count, 0, now_);
    } else {
      io.op = VolumeOp::kFlush;
      io.offset = 0;
      io.length = 0;
    }
    trace("submit q" + std::to_string(r.queue) + " " + to_string(io.op) + " block " +
          std::to_string(r.first) + "+" + std::to_string(r.count));
    queues_[r.queue]->submit(io);
    queues_[r.queue]->kick();
    return true;
  }

  static void on_complete(VolumeIo& io, int result) {
    auto& r = *static_cast<Req*>(io.user_data);
    r.world->completed(r, result);
  }
  void completed(Req& r, int result) {
    trace("complete q" + std::to_string(r.queue) + " " + to_string(r.io.op) + " block " +
          std::to_string(r.first) + " result " + std::to_string(result));
    r.busy = false;
    ++completed_;
    if (result != 0 && result != -EIO) {
      fail(std::string(to_string(r.io.op)) + " completed with " + std::to_string(result));
    }
    if (r.model_op != SIZE_MAX) {
      model_->end(r.model_op, result == 0, now_);
    }
    if (r.io.op == VolumeOp::kRead && result == 0) {
      for (uint64_t b = 0; b < r.count; ++b) {
        const uint64_t block = r.first + b;
        const uint64_t v = decode_block(r.buffer.get() + b * kBlock, block);
        if (v == kGarbage || !model_->possible(block, v, r.submitted, now_)) {
          fail("read of block " + std::to_string(block) + " (submitted at step " +
               std::to_string(r.submitted) + ") returned " +
               (v == kGarbage ? std::string("bytes no request wrote there")
                              : "value " + std::to_string(v)) +
               ", which no write could have left there");
        }
      }
    }
  }

  // ---- one step of the world ----
  // `top`: the simulator's own loop (may run control operations and
  // background bodies); else a pause inside the engine.
  void step(bool top) {
    ++now_;
    const uint64_t roll = pick(1000);
    if (faults_ && roll < 3) {
      clock_.advance(std::chrono::milliseconds(1 + pick(5)));
      return;
    }
    if (faults_ && roll < 4 && chance(0.02)) {
      // A clock jump (VM pause, suspend): every request in flight looks overdue.
      // The device had what the store threads had taken (the rings are
      // drained first): those are the requests the jump overtakes.
      trace("clock jump");
      while (deliver_one()) {
      }
      clock_.advance(std::chrono::milliseconds(150 + pick(400)));
      return;
    }
    if (faults_ && roll < 5 && chance(0.05)) {
      kill_one();
      return;
    }
    if (faults_ && roll < 8) {
      for (auto& s : stores_) {
        if (s->any_hung() && chance(0.3)) {
          trace("late answers from " + std::string(s->name()));
          s->unhang_all();
        }
      }
      return;
    }
    if (run_ticker()) {
      return;
    }
    if (top && faults_ && chance(p_control_)) {
      control();
      return;
    }
    if (top && run_body()) {
      return;
    }
    if (issuing_ && submitted_ < ops_budget_ && roll < 300 && submit_one()) {
      return;
    }
    if (roll < 550 && deliver_one()) {
      return;
    }
    if (roll < 850 && complete_one()) {
      return;
    }
    if (reap_one()) {
      return;
    }
    if (deliver_one() || complete_one()) {
      return;
    }
    // Nothing could move: let time pass to the next tick.
    clock_.advance(std::chrono::milliseconds(5));
  }

  bool run_ticker() {
    for (auto& t : runner_.tickers()) {
      if (t->stopped) {
        continue;
      }
      // The wake fd is looked at in one step of four (a read(2) each time
      // is most of the simulator's system time); the seed decides which.
      uint64_t v = 0;
      const bool due = clock_.now_ns() >= t->next_ns;
      const bool signalled = !due && pick(4) == 0 && ::read(t->fd, &v, sizeof(v)) == sizeof(v);
      if (due) {
        (void)::read(t->fd, &v, sizeof(v));  // the tick covers the signal too
      }
      if (signalled || due) {
        t->next_ns = clock_.now_ns() + t->period_ns;
        t->tick();
        return true;
      }
    }
    return false;
  }
  bool run_body() {
    auto pending = runner_.pending();
    if (pending.empty()) {
      return false;
    }
    trace("background " + pending.front()->name);
    SimTaskRunner::run(*pending.front());
    return true;
  }
  bool deliver_one() {
    std::vector<std::pair<size_t, size_t>> options;
    for (size_t e = 0; e < execs_.size(); ++e) {
      for (size_t c : execs_[e]->deliverable()) {
        options.emplace_back(e, c);
      }
    }
    if (options.empty()) {
      return false;
    }
    auto [e, c] = options[pick(options.size())];
    execs_[e]->deliver(c);
    return true;
  }
  bool complete_one() {
    std::vector<std::pair<size_t, size_t>> options;
    for (size_t s = 0; s < stores_.size(); ++s) {
      if (execs_[s]->exited()) {
        continue;
      }
      for (size_t i : stores_[s]->ready()) {
        options.emplace_back(s, i);
      }
    }
    if (options.empty()) {
      return false;
    }
    auto [s, i] = options[pick(options.size())];
    if (faults_ && chance(p_hang_)) {
      const ReplicaIo& io = stores_[s]->request(i);
      trace("hang " + std::string(to_string(io.op)) + " r" + std::to_string(io.replica) +
            " block " + std::to_string(io.offset / kBlock) + "+" +
            std::to_string(io.length / kBlock) + " at " + std::string(stores_[s]->name()));
      stores_[s]->hang(i);
      return true;
    }
    const Outcome out = faults_ && chance(p_error_) ? Outcome::kError : Outcome::kOk;
    if (out == Outcome::kError) {
      trace("I/O error at " + std::string(stores_[s]->name()));
    }
    if (trace_) {
      const ReplicaIo& io = stores_[s]->request(i);
      trace(std::string(stores_[s]->name()) + " completes " + to_string(io.op) + " r" +
            std::to_string(io.replica) + " block " + std::to_string(io.offset / kBlock) + "+" +
            std::to_string(io.length / kBlock) + (out == Outcome::kError ? " with EIO" : "") +
            (io.untracked ? " (copy)" : ""));
    }
    stores_[s]->complete(i, out);
    return true;
  }
  bool reap_one() {
    if (queues_.empty()) {
      return false;  // closed (teardown)
    }
    const size_t q = pick(queues_.size());
    return queues_[q]->reap() > 0;
  }
  void kill_one() {
    // Never the executor of the last in-sync replica whose executor runs:
    // the volume's newest data lives there (the engine keeps that replica
    // in service whatever happens, so nothing could heal the run).
    VolumeStatus st = vol_->status();
    std::vector<size_t> live;
    std::vector<size_t> in_sync_live;
    for (unsigned r = 0; r < st.replicas.size(); ++r) {
      if (store_of_[r] >= 0 && st.replicas[r].state != ReplicaState::kRemoved &&
          !execs_[static_cast<size_t>(store_of_[r])]->exited()) {
        live.push_back(static_cast<size_t>(store_of_[r]));
        if (st.replicas[r].state == ReplicaState::kInSync) {
          in_sync_live.push_back(static_cast<size_t>(store_of_[r]));
        }
      }
    }
    if (in_sync_live.size() == 1) {
      live.erase(std::remove(live.begin(), live.end(), in_sync_live.front()), live.end());
    }
    if (live.empty() || in_sync_live.empty()) {
      return;
    }
    const size_t s = live[pick(live.size())];
    trace("store executor " + std::string(execs_[s]->name()) + " dies");
    execs_[s]->kill();
  }

  // ---- control operations (top level only) ----
  std::vector<unsigned> replicas_in(ReplicaState want) {
    std::vector<unsigned> out;
    VolumeStatus st = vol_->status();
    for (unsigned r = 0; r < st.replicas.size(); ++r) {
      if (st.replicas[r].state == want) {
        out.push_back(r);
      }
    }
    return out;
  }
  void control() {
    const uint64_t roll = pick(8);
    pauses_ = 0;
    switch (roll) {
      case 0: {
        auto in_sync = replicas_in(ReplicaState::kInSync);
        if (in_sync.empty()) {
          break;
        }
        const unsigned r = in_sync[pick(in_sync.size())];
        trace("fail_replica " + std::to_string(r));
        (void)vol_->fail_replica(r, "simulated operator");
        break;
      }
      case 1: {
        auto failed = replicas_in(ReplicaState::kFailed);
        if (failed.empty()) {
          break;
        }
        const unsigned r = failed[pick(failed.size())];
        if (execs_[static_cast<size_t>(store_of_[r])]->exited()) {
          replace(r);
        } else {
          trace("start_rebuild " + std::to_string(r));
          (void)vol_->start_rebuild(r);
        }
        break;
      }
      case 2: {
        if (stores_.size() >= 8) {
          break;
        }
        const unsigned s = new_store();
        trace("add_replica " + std::string(stores_[s]->name()));
        auto r = vol_->add_replica(binding_of(s));
        if (r.ok()) {
          store_of_[*r] = static_cast<int>(s);
        }
        break;
      }
      case 3: {
        VolumeStatus st = vol_->status();
        unsigned present = 0;
        for (auto& rs : st.replicas) {
          present += rs.state != ReplicaState::kRemoved ? 1 : 0;
        }
        if (present <= 2) {
          break;
        }
        const unsigned r = static_cast<unsigned>(pick(st.replicas.size()));
        trace("remove_replica " + std::to_string(r));
        if (vol_->remove_replica(r).ok()) {
          store_of_[r] = -1;
        }
        break;
      }
      case 4:
        trace("checkpoint");
        (void)vol_->checkpoint();
        break;
      case 5: {
        const std::string name = "snap" + std::to_string(snapshots_++);
        trace("create_snapshot " + name);
        (void)vol_->create_snapshot(name);
        break;
      }
      case 6: {
        trace("verify");
        auto report = vol_->verify();
        if (report.ok() && !report->mismatches.empty()) {
          fail("verify found in-sync replicas that differ at byte " +
               std::to_string(report->mismatches.front().first));
        }
        break;
      }
      default: {
        auto failed = replicas_in(ReplicaState::kFailed);
        for (unsigned r : failed) {
          if (execs_[static_cast<size_t>(store_of_[r])]->exited()) {
            replace(r);
            break;
          }
        }
        break;
      }
    }
  }
  void replace(unsigned r) {
    const unsigned s = new_store();
    trace("replace_replica " + std::to_string(r) + " by " + std::string(stores_[s]->name()));
    if (vol_->replace_replica(r, binding_of(s)).ok()) {
      store_of_[r] = static_cast<int>(s);
    }
  }

  // ---- end of the run ----
  void workload() {
    faults_ = true;
    issuing_ = true;
    uint64_t steps = 0;
    while (submitted_ < ops_budget_) {
      if (++steps > 200000) {
        fail("the workload made no progress");
      }
      pauses_ = 0;
      step(true);
    }
  }
  bool busy() {
    for (auto& r : reqs_) {
      if (r->busy) {
        return true;
      }
    }
    for (auto& q : queues_) {
      if (q->in_flight() != 0) {
        return true;
      }
    }
    for (auto& e : execs_) {
      if (!e->deliverable().empty()) {
        return true;
      }
    }
    for (size_t s = 0; s < stores_.size(); ++s) {
      if (!execs_[s]->exited() && stores_[s]->in_flight() != 0) {
        return true;
      }
    }
    return !runner_.pending().empty();
  }
  // No more faults or new I/O: everything in flight finishes.
  void quiesce() {
    faults_ = false;
    issuing_ = false;
    for (auto& s : stores_) {
      s->unhang_all();
    }
    uint64_t steps = 0;
    while (busy()) {
      if (++steps > 200000) {
        fail("requests still in flight after the faults stopped (a request leaked)");
      }
      pauses_ = 0;
      step(true);
    }
  }
  // Every replica back in sync: rebuild the failed ones, replace dead ones.
  void heal() {
    for (int round = 0; round < 8; ++round) {
      VolumeStatus st = vol_->status();
      // Two faults can leave the newest data only on replicas whose executor
      // died (the engine keeps the last in-sync replica whatever happens):
      // nothing can heal that, by design. The run's reads were checked; the
      // final byte checks are skipped.
      bool source = false;
      for (unsigned r = 0; r < st.replicas.size(); ++r) {
        source = source || (st.replicas[r].state == ReplicaState::kInSync &&
                            !execs_[static_cast<size_t>(store_of_[r])]->exited());
      }
      if (!source) {
        trace("heal: every in-sync replica's executor died; nothing to heal from");
        unrecoverable_ = true;
        return;
      }
      bool all = true;
      for (unsigned r = 0; r < st.replicas.size(); ++r) {
        const ReplicaState s = st.replicas[r].state;
        if (s == ReplicaState::kInSync || s == ReplicaState::kRemoved) {
          continue;
        }
        all = false;
        if (s == ReplicaState::kFailed || s == ReplicaState::kStale) {
          pauses_ = 0;
          if (execs_[static_cast<size_t>(store_of_[r])]->exited()) {
            replace(r);
          } else {
            trace("heal: start_rebuild " + std::to_string(r));
            (void)vol_->start_rebuild(r);
          }
        }
      }
      if (all) {
        return;
      }
      quiesce();
      pauses_ = 0;
      Status rebuilt = vol_->wait_rebuild();
      if (!rebuilt.ok()) {
        trace("heal: rebuild: " + rebuilt.error().to_string());
      }
    }
    VolumeStatus st = vol_->status();
    std::string states;
    for (auto& rs : st.replicas) {
      states += std::string(" ") + to_string(rs.state);
      if (!rs.last_error.empty()) {
        states += " (" + rs.last_error + ")";
      }
    }
    fail("replicas did not all come back in sync:" + states);
  }

  void check_final() {
    if (unrecoverable_) {
      return;
    }
    // Read every block through the volume.
    Req& r = *reqs_.front();
    std::vector<uint64_t> values(blocks_);
    for (uint64_t b = 0; b < blocks_; ++b) {
      r.busy = true;
      r.first = b;
      r.count = 1;
      r.submitted = now_;
      r.model_op = SIZE_MAX;
      r.io.op = VolumeOp::kRead;
      r.io.offset = b * kBlock;
      r.io.length = static_cast<uint32_t>(kBlock);
      r.io.buffer = r.buffer.get();
      queues_[r.queue]->submit(r.io);
      queues_[r.queue]->kick();
      uint64_t steps = 0;
      while (r.busy) {
        if (++steps > 100000) {
          fail("a final read never completed");
        }
        pauses_ = 0;
        step(true);
      }
      values[b] = decode_block(r.buffer.get(), b);
    }
    // Every in-sync replica holds exactly those bytes.
    VolumeStatus st = vol_->status();
    for (unsigned rep = 0; rep < st.replicas.size(); ++rep) {
      if (st.replicas[rep].state != ReplicaState::kInSync) {
        continue;
      }
      const SimStore& s = *stores_[static_cast<size_t>(store_of_[rep])];
      for (uint64_t b = 0; b < blocks_; ++b) {
        const uint64_t v = decode_block(s.data().data() + b * kBlock, b);
        if (v != values[b]) {
          fail("replica " + std::to_string(rep) + " (" + std::string(s.name()) + ") block " +
               std::to_string(b) + " holds value " + std::to_string(v) + ", the volume read " +
               std::to_string(values[b]) + ": in-sync replicas differ");
        }
      }
    }
    // Snapshots: the same bytes on every replica that has one.
    for (uint64_t n = 0; n < snapshots_; ++n) {
      const std::string name = "snap" + std::to_string(n);
      const std::vector<std::byte>* first = nullptr;
      for (unsigned rep = 0; rep < st.replicas.size(); ++rep) {
        if (store_of_[rep] < 0) {
          continue;
        }
        const auto& snaps = stores_[static_cast<size_t>(store_of_[rep])]->snapshots();
        auto it = snaps.find(name);
        if (it == snaps.end()) {
          continue;
        }
        if (first == nullptr) {
          first = &it->second;
        } else if (*first != it->second) {
          fail("snapshot " + name + " differs between replicas");
        }
      }
    }
    for (auto& s : stores_) {
      if (s->saw_invalid()) {
        fail(std::string(s->name()) + " received a request outside its range");
      }
    }
  }

  void teardown() {
    for (auto& q : queues_) {
      if (q->in_flight() != 0) {
        fail("a queue still has " + std::to_string(q->in_flight()) + " requests in flight");
      }
    }
    queues_.clear();
    pauses_ = 0;
    Status closed = vol_->close();
    if (!closed.ok()) {
      fail("close: " + closed.error().to_string());
    }
    pauses_ = 0;
    destroying_ = true;
    vol_.reset();
    destroying_ = false;
    for (size_t s = 0; s < stores_.size(); ++s) {
      if (!execs_[s]->exited() && stores_[s]->in_flight() != 0) {
        fail(std::string(stores_[s]->name()) + " still holds requests after close");
      }
    }
  }

  uint64_t seed_;
  std::mt19937_64 rng_;
  std::mt19937_64 colo_rng_;
  bool trace_;
  reactor::Reactor* home_ = nullptr;
  bool colocated_ = false;
  ManualClock clock_;
  SimTaskRunner runner_{*this};
  // Declared before vol_: the volume is destroyed first.
  std::vector<std::unique_ptr<SimStore>> stores_;
  std::vector<std::unique_ptr<SimExecutor>> execs_;
  std::array<int, kMaxReplicas> store_of_{-1, -1, -1, -1};
  std::vector<std::unique_ptr<Req>> reqs_;
  std::unique_ptr<ReplicatedVolume> vol_;
  std::vector<std::unique_ptr<VolumeQueue>> queues_;
  std::unique_ptr<Model> model_;
  uint64_t blocks_ = 0;
  uint64_t size_ = 0;
  uint64_t region_ = 0;
  unsigned nqueues_ = 1;
  unsigned depth_ = 4;
  uint64_t ops_budget_ = 0;
  double p_error_ = 0;
  double p_hang_ = 0;
  double p_control_ = 0;
  bool faults_ = false;
  bool destroying_ = false;
  bool unrecoverable_ = false;
  bool issuing_ = false;
  uint64_t now_ = 0;
  uint64_t pauses_ = 0;
  uint64_t submitted_ = 0;
  uint64_t completed_ = 0;
  uint64_t next_value_ = 0;
  uint64_t snapshots_ = 0;
};

// Seeds that found bugs (each failed before its fix, in the order found);
// kept whatever the default range becomes.
//   7, 6, 24  a rebuild stopped by a copy error left its target "rebuilding"
//             for good; start_rebuild() refused it (rebuild.cpp
//             rebuild_abandon()). Then: start_rebuild() of a replica whose
//             failure the monitor had not handled yet leaked gen_hold, and
//             every write acknowledgement was held for good
//             (start_rebuild_locked()).
//   14        a write overdue at the last in-sync replica completed (-EIO)
//             and handed its buffer back while that replica still held it;
//             the late write stored the buffer's next contents (queue_path.cpp
//             on_tick()). Then: an interrupted dirty-region resync persisted
//             a watermark claiming its dirty regions copied, and its resume
//             declared the target in sync over stale blocks
//             (rebuild_join_targets()).
//   307       a read that waited for the answer of a replica dropped
//             meanwhile accepted that answer: stale data, or a late write's
//             bytes from a reused buffer (queue_path.cpp handle()).
//   483, 1086 a write failed by the last in-sync replica (kept) but applied
//             by a rebuilding one left them different; with the rebuild done
//             meanwhile it even completed with success (check_done_write()).
TEST(EngineSim, Regressions) {
  spdlog::set_level(spdlog::level::off);
  for (uint64_t seed : {7, 6, 24, 14, 307, 483, 1086}) {
    World world(seed);
    std::string failed = world.run();
    EXPECT_TRUE(failed.empty()) << "engine simulator: " << failed
                                << "\n  replay: UBLKVOL_SIM_SEED=" << seed;
  }
}

TEST(EngineSim, Seeds) {
  spdlog::set_level(spdlog::level::off);
  const uint64_t only = env_u64("UBLKVOL_SIM_SEED", 0);
  const uint64_t first = only != 0 ? only : env_u64("UBLKVOL_SIM_FIRST", 1);
  const uint64_t count = only != 0 ? 1 : env_u64("UBLKVOL_SIM_SEEDS", 2000);
  const auto started = std::chrono::steady_clock::now();
  uint64_t failures = 0;
  // Half of the seeds put some stores and queues on this (idle) reactor.
  reactor::ReactorOptions ro;
  ro.name = "sim-home";
  auto home = reactor::Reactor::start(ro);
  ASSERT_TRUE(home.ok()) << home.error().to_string();
  for (uint64_t seed = first; seed < first + count; ++seed) {
    World world(seed, home->get());
    std::string failed = world.run();
    if (!failed.empty()) {
      ++failures;
      ADD_FAILURE() << "engine simulator: " << failed << "\n  replay: UBLKVOL_SIM_SEED=" << seed
                    << " (UBLKVOL_SIM_TRACE=1 prints every step)";
      if (failures >= 5) {
        break;
      }
    }
  }
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  std::printf("engine simulator: %" PRIu64 " seed(s) from %" PRIu64 " in %.1f s, %" PRIu64
              " failed\n",
              count, first, secs, failures);
}

}  // namespace
}  // namespace ublkvol::engine::sim
