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
