// Test helpers for the replicated engine: replicas on memory devices behind
// a fault-injecting wrapper, one store thread each (or executors on shared
// reactors: store_owner.h), a queue driver that runs
// a workload on its own thread, and a block-pattern reference model.
#pragma once

#include <poll.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <gtest/gtest.h>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "ublkvol/dbs/block_device.h"
#include "ublkvol/dbs/fault_device.h"
#include "ublkvol/dbs/memory_device.h"
#include "ublkvol/engine/raw_replica_store.h"
#include "ublkvol/engine/replicated_volume.h"
#include "ublkvol/engine/store_thread.h"
#include "ublkvol/engine/volume.h"

#include "store_owner.h"

namespace ublkvol::engine::testing {

// N replicas: memory device -> fault device -> raw replica store -> thread.
struct Cluster {
  struct Replica {
    std::unique_ptr<dbs::MemoryDevice> memory;
    std::unique_ptr<dbs::FaultDevice> fault;
    std::unique_ptr<RawReplicaStore> store;
    std::unique_ptr<StoreOwner> thread;
  };
  // Before `replicas`: the executors on them go first.
  std::unique_ptr<reactor::ReactorSet> reactors;
  bool reactors_started = false;
  std::vector<Replica> replicas;
  uint64_t data_offset = 0;

  // Formats fresh replicas of `size` bytes.
  void create(unsigned n, uint64_t size, uint64_t region_bytes = 64 << 10) {
    for (unsigned i = 0; i < n; ++i) {
      Replica r;
      r.memory = std::make_unique<dbs::MemoryDevice>(size + (2U << 20U));
      RawReplicaFormatOptions fo;
      fo.region_bytes = region_bytes;
      fo.size_bytes = size;
      Status st = format_raw_replica(*r.memory, fo);
      if (!st.ok()) {
        std::abort();
      }
      replicas.push_back(std::move(r));
    }
    start();
  }

  // (Re)opens stores and starts threads on the existing memory devices.
  void start() {
    for (size_t i = 0; i < replicas.size(); ++i) {
      Replica& r = replicas[i];
      r.fault = std::make_unique<dbs::FaultDevice>(*r.memory);
      auto store = open_raw_replica(*r.fault);
      if (!store.ok()) {
        std::abort();
      }
      r.store = std::move(store.value());
      data_offset = r.store->data_offset();
      if (!reactors_started) {
        reactors = start_store_reactors();
        reactors_started = true;
      }
      r.thread =
          StoreOwner::start("store" + std::to_string(i),
                            reactors ? &reactors->for_store(static_cast<unsigned>(i)) : nullptr);
      (void)r.thread->attach(*r.store);
    }
  }

  // Stops threads and drops stores (the memory devices' content survives),
  // as a process crash would.
  void stop() {
    for (Replica& r : replicas) {
      if (r.thread) {
        r.thread->stop();
      }
      r.thread.reset();
      // A thread killed by kill_for_testing() leaves requests queued in the
      // memory device, linked through requests owned by the store, the fault
      // wrapper and the (gone) volume. Executing them would call into freed
      // objects, and a restarted store polling the same device would do just
      // that. Drop them as a crash does - never executed - by moving the
      // content into a fresh device; the old one is destroyed without
      // touching its queue. Safe to read in_flight(): the thread was joined.
      if (r.memory && r.memory->in_flight() != 0) {
        r.memory = std::make_unique<dbs::MemoryDevice>(r.memory->release_image());
      }
      r.store.reset();
      r.fault.reset();
    }
  }

  std::vector<ReplicaBinding> bindings() {
    std::vector<ReplicaBinding> b;
    for (Replica& r : replicas) {
      b.push_back({r.store.get(), r.thread.get()});
    }
    return b;
  }

  // Runs `fn` on replica i's fault device, on its store thread (the device's
  // owner).
  void fault(unsigned i, const std::function<void(dbs::FaultDevice&)>& fn) {
    dbs::FaultDevice* f = replicas[i].fault.get();
    Status st = replicas[i].thread->call([&]() -> Status {
      fn(*f);
      return ok_status();
    });
    if (!st.ok()) {
      std::abort();
    }
  }

  // Requests the replica's store holds (asked on its thread).
  unsigned store_in_flight(unsigned i) {
    unsigned n = 0;
    ReplicaStore* s = replicas[i].store.get();
    (void)replicas[i].thread->call([&]() -> Status {
      n = s->in_flight();
      return ok_status();
    });
    return n;
  }

  // The replica's data bytes for [offset, offset + length).
  [[nodiscard]] const std::byte* data(unsigned i, uint64_t offset) const {
    return replicas[i].memory->bytes().data() + data_offset + offset;
  }
};

// Opens a volume over all of the cluster's replicas; nullptr (and a test
// failure naming the error) if that fails.
inline std::unique_ptr<ReplicatedVolume> open_volume(Cluster& cluster,
                                                     const ReplicatedVolumeOptions& options) {
  auto v = ReplicatedVolume::open(options, cluster.bindings());
  EXPECT_TRUE(v.ok()) << v.error().to_string();
  return v.ok() ? std::move(v.value()) : nullptr;
}

// Block content: word 0 = writer id, word 1 = block number, rest a hash.
inline uint64_t mix(uint64_t a, uint64_t b, uint64_t c) {
  uint64_t x = a * 0x9E3779B97F4A7C15ULL ^ (b + 0x632BE59BD9B4E019ULL) * 0xC2B2AE3D27D4EB4FULL ^
               (c + 1) * 0x165667B19E3779F9ULL;
  x ^= x >> 31;
  x *= 0xD6E8FEB86659FD93ULL;
  x ^= x >> 29;
  return x;
}

inline void fill_block(std::byte* p, uint64_t id, uint64_t block) {
  auto* w = reinterpret_cast<uint64_t*>(p);
  w[0] = id;
  w[1] = block;
  for (size_t i = 2; i < 512; ++i) {
    w[i] = mix(id, block, i);
  }
}

// The writer id a block holds: 0 for zeros, ~0 if it is not a valid pattern.
inline uint64_t block_id(const std::byte* p, uint64_t block) {
  const auto* w = reinterpret_cast<const uint64_t*>(p);
  bool zero = true;
  for (size_t i = 0; i < 512 && zero; ++i) {
    zero = w[i] == 0;
  }
  if (zero) {
    return 0;
  }
  if (w[1] != block) {
    return ~uint64_t{0};
  }
  for (size_t i = 2; i < 512; ++i) {
    if (w[i] != mix(w[0], block, i)) {
      return ~uint64_t{0};
    }
  }
  return w[0];
}

struct AlignedFree {
  void operator()(std::byte* p) const { std::free(p); }
};
using Buffer = std::unique_ptr<std::byte, AlignedFree>;
inline Buffer make_buffer(size_t size) {
  return Buffer(static_cast<std::byte*>(std::aligned_alloc(4096, size)));
}

// Waits for the queue's wake fd (with a generous safety timeout so a lost
// wake-up shows up as a slow test plus the final assertion, not a hang).
inline void wait_queue(VolumeQueue& q) {
  pollfd p{q.wake_fd(), POLLIN, 0};
  ::poll(&p, 1, 1000);
  uint64_t v = 0;
  ssize_t n = ::read(q.wake_fd(), &v, sizeof(v));
  (void)n;
}

// Synchronous single I/O on a queue (test convenience).
inline int run_io(VolumeQueue& q, VolumeOp op, uint64_t offset, uint32_t length, std::byte* buffer,
                  bool fua = false) {
  struct Done {
    bool done = false;
    int result = 0;
  } done;
  VolumeIo io;
  io.op = op;
  io.offset = offset;
  io.length = length;
  io.buffer = buffer;
  io.fua = fua;
  io.user_data = &done;
  io.on_complete = [](VolumeIo& i, int result) {
    auto* d = static_cast<Done*>(i.user_data);
    d->done = true;
    d->result = result;
  };
  q.submit(io);
  q.kick();
  while (!done.done) {
    if (q.reap() > 0 && done.done) {
      break;
    }
    if (!done.done) {
      wait_queue(q);
    }
  }
  return done.result;
}

}  // namespace ublkvol::engine::testing
