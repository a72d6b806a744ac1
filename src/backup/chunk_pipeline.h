// ChunkPipeline: hashes (SHA-256) and encodes (zstd, CRC32C) backup chunks
// on a small pool of worker threads, while the backup's own thread reads the
// next chunks and puts the finished ones - in the order they were submitted,
// so the manifest, the checkpoints and the objects written are the same as
// with one thread (docs/backup-format.md, "Workers").
//
// Bounded: workers + 2 slots, each owning its chunk content and encoded-file
// buffers, reused from chunk to chunk (no allocation per chunk once each
// slot has held a full chunk). With one worker everything runs inline on the
// caller's thread.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stop_token>
#include <thread>
#include <vector>

#include "ublkvol/backup/format.h"
#include "ublkvol/common/result.h"

namespace ublkvol::backup::detail {

class ChunkPipeline {
 public:
  struct Slot {
    uint64_t offset = 0;
    ChunkContent chunk;  // the caller fills it (clear() keeps the capacity)
    // Set by a worker: the chunk's hash, and (for a chunk with a block) its file.
    ChunkHash hash;
    std::vector<std::byte> file;
    size_t file_bytes = 0;
    bool done = false;
  };
  // Called for each finished slot, in submission order.
  using Retire = std::function<Status(Slot&)>;

  ChunkPipeline(unsigned workers, int level);
  ~ChunkPipeline();
  ChunkPipeline(const ChunkPipeline&) = delete;
  ChunkPipeline& operator=(const ChunkPipeline&) = delete;

  // A free slot to fill (chunk emptied): retires the finished slots at the
  // head first, and waits for the oldest one when none is free. Retires
  // nothing more once `stop` is requested (a retire may request it): then
  // null, and the caller abandon()s.
  Result<Slot*> next(const Retire& retire, const std::stop_token& stop);
  // Hands the slot `next` returned to the workers.
  void submit(Slot& slot);
  // Waits for and retires every slot in flight, unless `stop` is requested.
  Status drain(const Retire& retire, const std::stop_token& stop);
  // Drops the slots in flight unretired (once the workers are done with
  // them); the offset of the oldest, if any: where a resume starts again.
  std::optional<uint64_t> abandon();

 private:
  void work(const std::stop_token& stop, ChunkEncoder& encoder);
  static void process(Slot& slot, ChunkEncoder& encoder);
  [[nodiscard]] bool head_done();
  // Waits for the oldest slot in flight, frees it and retires it.
  Status retire_head(const Retire& retire);

  std::vector<std::unique_ptr<Slot>> slots_;
  size_t head_ = 0;       // oldest slot in flight
  size_t in_flight_ = 0;  // the caller's only
  std::mutex mutex_;
  std::condition_variable_any queued_cv_;
  std::condition_variable done_cv_;
  std::deque<Slot*> queue_;  // submitted, not taken by a worker (under mutex_)
  std::vector<std::unique_ptr<ChunkEncoder>> encoders_;  // one per worker
  std::vector<std::jthread> threads_;                    // last: stopped and joined first
};

}  // namespace ublkvol::backup::detail
