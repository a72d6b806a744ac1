// A random workload against a replicated volume, checked against a model:
// every queue thread submits overlapping writes, reads, flushes, discards and
// write-zeroes with a logical clock stamped at submit and completion, so the
// final content of every block can be checked against the writes that could
// legally have won (those not followed by another write submitted after they
// completed).
#pragma once

#include <algorithm>
#include <atomic>
#include <gtest/gtest.h>
#include <map>
#include <random>
#include <thread>
#include <vector>

#include "replica_test_util.h"

namespace ublkvol::engine::testing {

struct WorkloadOptions {
  unsigned threads = 4;
  unsigned ops_per_thread = 1500;
  unsigned queue_depth = 16;
  uint32_t max_blocks = 16;  // per request
  // Half of the requests hit the first `hot_bytes`, to force overlaps.
  uint64_t hot_bytes = 1U << 20U;
  // All requests stay below this offset (0: the whole volume).
  uint64_t limit_bytes = 0;
  bool flushes = true;
  bool zeroing = true;
  // Requests that failed are allowed (fault tests) but must be -EIO.
  bool allow_errors = false;
  // Called by thread 0 after this many of its completions (fault injection).
  unsigned trigger_after = 0;
  std::function<void()> trigger;
};

struct WriteRecord {
  uint64_t id;  // 0: zeroing
  uint64_t ts_submit;
  uint64_t ts_complete;
  bool ok;
};

class Workload {
 public:
  Workload(Volume& volume, WorkloadOptions options)
      : volume_(volume), options_(std::move(options)), log_(options_.threads) {}

  void run() {
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < options_.threads; ++t) {
      threads.emplace_back([this, t] { run_thread(t); });
    }
    for (auto& th : threads) {
      th.join();
    }
  }

  // Per block: everything written to it.
  [[nodiscard]] std::map<uint64_t, std::vector<WriteRecord>> per_block() const {
    std::map<uint64_t, std::vector<WriteRecord>> m;
    for (const auto& thread_log : log_) {
      for (const auto& [block, rec] : thread_log) {
        m[block].push_back(rec);
      }
    }
    return m;
  }

  // Checks one replica's/volume's content of block `b` against the model.
  // Returns an empty string if fine.
  [[nodiscard]] static std::string check_block(const std::vector<WriteRecord>* writes, uint64_t b,
                                               const std::byte* content) {
    uint64_t id = block_id(content, b);
    if (id == ~uint64_t{0}) {
      return "block " + std::to_string(b) + " holds no valid pattern";
    }
    if (writes == nullptr || writes->empty()) {
      return id == 0 ? "" : "block " + std::to_string(b) + " was never written but holds data";
    }
    // Completed writes can win unless another write to the block was
    // submitted after they completed. Failed writes may have landed or not.
    uint64_t latest_complete_ok = 0;
    for (const WriteRecord& w : *writes) {
      if (w.ok) {
        latest_complete_ok = std::max(latest_complete_ok, w.ts_complete);
      }
    }
    bool maybe_never = true;
    for (const WriteRecord& w : *writes) {
      if (w.ok) {
        maybe_never = false;
      }
      if (w.id == id || (id == 0 && w.id == 0)) {
        bool superseded = false;
        for (const WriteRecord& o : *writes) {
          if (o.ok && o.ts_submit > w.ts_complete) {
            superseded = true;
          }
        }
        if (!superseded) {
          return "";
        }
      }
    }
    if (id == 0 && maybe_never) {
      return "";
    }
    return "block " + std::to_string(b) + " holds writer " + std::to_string(id) +
           ", which the model says cannot be the final content";
  }

  std::atomic<uint64_t> errors{0};
  std::atomic<uint64_t> bad_reads{0};
  std::atomic<uint64_t> completed{0};

 private:
  struct Op {
    VolumeIo io;
    std::byte* buffer = nullptr;
    Workload* self = nullptr;
    unsigned thread = 0;
    uint64_t id = 0;
    uint64_t ts_submit = 0;
    bool busy = false;
  };

  void run_thread(unsigned t) {
    auto queue_result = volume_.open_queue(t);
    ASSERT_TRUE(queue_result.ok()) << queue_result.error().to_string();
    VolumeQueue& q = **queue_result;
    std::mt19937_64 rng(1234 + t);
    const uint64_t blocks =
        (options_.limit_bytes != 0 ? options_.limit_bytes : volume_.info().size_bytes) / 4096;
    const uint64_t hot_blocks = std::min<uint64_t>(options_.hot_bytes / 4096, blocks);
    std::vector<Op> ops(options_.queue_depth);
    for (Op& op : ops) {
      // Buffers outlive the thread (they are kept in the Workload): a
      // dropped replica's store may still touch them later (docs/engine.md,
      // known gaps), just as ublk tag buffers live as long as the queue.
      {
        std::lock_guard lock(buffers_mutex_);
        buffers_.push_back(make_buffer(size_t{options_.max_blocks} * 4096));
        op.buffer = buffers_.back().get();
      }
      op.self = this;
      op.thread = t;
    }
    unsigned submitted = 0;
    unsigned done = 0;
    uint64_t counter = 0;
    bool triggered = false;
    // Keep reaping until the queue has nothing left (in_flight() also counts
    // completed writes a rebuilding replica has not applied yet).
    while (done < options_.ops_per_thread || q.in_flight() > 0) {
      for (Op& op : ops) {
        if (op.busy || submitted >= options_.ops_per_thread) {
          continue;
        }
        uint32_t nblocks = 1 + static_cast<uint32_t>(rng() % options_.max_blocks);
        uint64_t range = (rng() % 2 == 0) ? hot_blocks : blocks;
        uint64_t first = rng() % (range - std::min<uint64_t>(range - 1, nblocks - 1));
        if (first + nblocks > blocks) {
          first = blocks - nblocks;
        }
        unsigned kind = static_cast<unsigned>(rng() % 100);
        VolumeIo& io = op.io;
        io = VolumeIo{};
        io.offset = first * 4096;
        io.length = nblocks * 4096;
        io.buffer = op.buffer;
        io.user_data = &op;
        io.on_complete = &Workload::on_complete;
        // The mix: 50% writes, 35% reads, 7% flushes, 8% discards/write-zeroes.
        // A kind the options switch off becomes a read: the last branch repeats
        // the read branch on purpose, so the percentages stay readable.
        if (kind < 50) {
          io.op = VolumeOp::kWrite;
          io.fua = kind < 5;
          op.id = (uint64_t{t + 1} << 40U) | ++counter;
          for (uint32_t b = 0; b < nblocks; ++b) {
            fill_block(op.buffer + size_t{b} * 4096, op.id, first + b);
          }
        } else if (kind < 85) {  // NOLINT(bugprone-branch-clone): see the mix above
          io.op = VolumeOp::kRead;
        } else if (kind < 92 && options_.flushes) {
          io.op = VolumeOp::kFlush;
        } else if (options_.zeroing) {
          io.op = kind < 96 ? VolumeOp::kDiscard : VolumeOp::kWriteZeroes;
          op.id = 0;
        } else {
          io.op = VolumeOp::kRead;
        }
        op.busy = true;
        op.ts_submit = clock_.fetch_add(1);
        q.submit(io);
        ++submitted;
      }
      q.kick();
      unsigned ran = q.reap();
      done += ran;
      if (!triggered && options_.trigger && t == 0 && done >= options_.trigger_after) {
        triggered = true;
        options_.trigger();
      }
      if (ran == 0) {
        wait_queue(q);
      }
    }
    EXPECT_EQ(q.in_flight(), 0U);
  }

  static void on_complete(VolumeIo& io, int result) {
    auto& op = *static_cast<Op*>(io.user_data);
    Workload& w = *op.self;
    uint64_t ts = w.clock_.fetch_add(1);
    op.busy = false;
    w.completed.fetch_add(1);
    if (result != 0) {
      w.errors.fetch_add(1);
      if (!w.options_.allow_errors || result != -EIO) {
        ADD_FAILURE() << to_string(io.op) << " at " << io.offset << " failed: " << result;
      }
    }
    if (io.op == VolumeOp::kWrite || io.op == VolumeOp::kDiscard ||
        io.op == VolumeOp::kWriteZeroes) {
      for (uint64_t b = io.offset / 4096; b < (io.offset + io.length) / 4096; ++b) {
        w.log_[op.thread].emplace_back(b, WriteRecord{op.id, op.ts_submit, ts, result == 0});
      }
    } else if (io.op == VolumeOp::kRead && result == 0) {
      for (uint64_t b = 0; b < io.length / 4096; ++b) {
        if (block_id(io.buffer + b * 4096, io.offset / 4096 + b) == ~uint64_t{0}) {
          w.bad_reads.fetch_add(1);
        }
      }
    }
  }

  Volume& volume_;
  WorkloadOptions options_;
  std::mutex buffers_mutex_;
  std::vector<Buffer> buffers_;
  std::atomic<uint64_t> clock_{1};
  std::vector<std::vector<std::pair<uint64_t, WriteRecord>>> log_;
};

// All replicas in `mask` byte-identical, and equal to the model.
inline void expect_replicas_match_model(const Cluster& cluster, uint32_t mask, uint64_t size,
                                        const Workload& workload) {
  auto model = workload.per_block();
  unsigned first = 0;
  while ((mask & (1U << first)) == 0) {
    ++first;
  }
  unsigned mismatches = 0;
  unsigned model_errors = 0;
  for (uint64_t b = 0; b < size / 4096; ++b) {
    const std::byte* ref = cluster.data(first, b * 4096);
    for (unsigned r = first + 1; r < cluster.replicas.size(); ++r) {
      if ((mask & (1U << r)) != 0 && std::memcmp(ref, cluster.data(r, b * 4096), 4096) != 0) {
        if (++mismatches < 5) {
          ADD_FAILURE() << "replicas " << first << " and " << r << " differ at block " << b;
        }
      }
    }
    auto it = model.find(b);
    std::string err = Workload::check_block(it == model.end() ? nullptr : &it->second, b, ref);
    if (!err.empty() && ++model_errors < 5) {
      ADD_FAILURE() << err;
    }
  }
  EXPECT_EQ(mismatches, 0U);
  EXPECT_EQ(model_errors, 0U);
}

}  // namespace ublkvol::engine::testing
