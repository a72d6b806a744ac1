// Internal helpers shared by the ReplicaStore implementations
// (raw_replica_store.cpp, dbs_replica_store.cpp): the intrusive list of
// waiting ReplicaIos, zeroed aligned buffers for metadata I/O, and which
// ops change data (and so need their dirty regions marked first).
#pragma once

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>

#include "ublkvol/engine/replica_store.h"

namespace ublkvol::engine::detail {

// Intrusive FIFO of ReplicaIos linked through store_next (never allocates).
struct IoList {
  ReplicaIo* head = nullptr;
  ReplicaIo* tail = nullptr;
  void push(ReplicaIo& io) {
    io.store_next = nullptr;
    if (tail == nullptr) {
      head = &io;
    } else {
      tail->store_next = &io;
    }
    tail = &io;
  }
  ReplicaIo* take_all() {
    ReplicaIo* h = head;
    head = tail = nullptr;
    return h;
  }
  [[nodiscard]] bool empty() const { return head == nullptr; }
};

// ReplicaStore::poll() for a store that parks requests completed without
// reaching its device (invalid, or refused because their dirty bits could not
// be committed) in `local_done` with their result set: completes those, then
// polls the device (`poll_device(wait)`, waiting only if nothing completed
// yet). Counts this store's own completions through `in_flight`, which the
// store's completion path decrements - not the device's, which include the
// store's metadata commits.
template <typename PollDevice>
unsigned complete_local_then_poll(IoList& local_done, unsigned& in_flight, bool wait,
                                  PollDevice&& poll_device) {
  unsigned ran = 0;
  ReplicaIo* io = local_done.take_all();
  while (io != nullptr) {
    ReplicaIo* next = io->store_next;
    io->store_next = nullptr;
    --in_flight;
    ++ran;
    io->on_complete(*io, io->result);
    io = next;
  }
  unsigned before = in_flight;
  poll_device(wait && ran == 0);
  ran += before >= in_flight ? before - in_flight : 0;
  return ran;
}

struct FreeDeleter {
  void operator()(std::byte* p) const { std::free(p); }
};
using AlignedBytes = std::unique_ptr<std::byte, FreeDeleter>;

// `size` zeroed bytes aligned to `alignment` (size must be a multiple of it).
inline AlignedBytes aligned_bytes(size_t alignment, size_t size) {
  auto* p = static_cast<std::byte*>(std::aligned_alloc(alignment, size));
  if (p == nullptr) {
    throw std::bad_alloc();
  }
  std::memset(p, 0, size);
  return AlignedBytes(p);
}

// Write, discard and write-zeroes change the replica's data; read and flush do not.
inline bool is_mutating(ReplicaOp op) {
  return op == ReplicaOp::kWrite || op == ReplicaOp::kDiscard || op == ReplicaOp::kWriteZeroes;
}

}  // namespace ublkvol::engine::detail
