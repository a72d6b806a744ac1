// QueueRunner: the body of one ublk hardware-queue thread.
//
// It owns (and sets up on its own thread) the io_uring, the read-only mapping
// of the queue's request descriptors, the 4 KiB-aligned tag buffers and the
// VolumeQueue. Its loop: submit queued SQEs and wait; for every kernel CQE
// hand the request to the volume (one VolumeIo per tag, reused); kick the
// volume; reap volume completions, which queue COMMIT_AND_FETCH_REQs for the
// next submit - one io_uring_enter per batch. The volume's wake_fd() (if it
// has one) and a detach eventfd are read through the same ring.
#pragma once

#include <sched.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>

#include "ublkvol/common/result.h"
#include "ublkvol/common/unique_fd.h"
#include "ublkvol/engine/volume.h"
#include "ublkvol/ublk/device.h"

namespace ublkvol::ublk {

struct QueueSetup {
  uint32_t dev_id = 0;
  uint16_t queue_id = 0;
  unsigned depth = 0;
  // Bytes per tag buffer (the device's max request size).
  uint32_t buffer_bytes = 0;
  // /dev/ublkcN, open for the whole life of the queue.
  int char_fd = -1;
  bool pin = false;
  cpu_set_t cpus{};
  bool io_flusher = false;
};

// Per-queue counters: written by the queue thread only (relaxed stores, no
// read-modify-write), read by anyone. Cache-line aligned so that queues never
// share a line.
struct alignas(64) QueueCounters {
  std::atomic<uint64_t> reads{0};
  std::atomic<uint64_t> writes{0};
  std::atomic<uint64_t> fua_writes{0};
  std::atomic<uint64_t> flushes{0};
  std::atomic<uint64_t> discards{0};
  std::atomic<uint64_t> write_zeroes{0};
  std::atomic<uint64_t> bytes_read{0};
  std::atomic<uint64_t> bytes_written{0};
  std::atomic<uint64_t> errors{0};
  // Latency histograms (device.h, kLatencyBuckets), same single-writer rule.
  std::array<std::atomic<uint64_t>, kLatencyBuckets> read_latency{};
  std::array<std::atomic<uint64_t>, kLatencyBuckets> write_latency{};
  std::atomic<uint64_t> read_latency_sum_ns{0};
  std::atomic<uint64_t> write_latency_sum_ns{0};

  void add_to(DeviceStats& stats) const;
};

class QueueRunner {
 public:
  // Called once by run(): OK when every tag has a FETCH_REQ with the driver
  // (START_DEV / END_USER_RECOVERY may proceed), or the setup error.
  using ReadyCallback = std::function<void(const Status&)>;

  static Result<std::unique_ptr<QueueRunner>> make(const QueueSetup& setup, engine::Volume& volume,
                                                   QueueCounters& counters);
  ~QueueRunner();
  QueueRunner(const QueueRunner&) = delete;
  QueueRunner& operator=(const QueueRunner&) = delete;

  // The thread body. Returns OK when every tag was aborted by the driver
  // (device stopped or deleted) or after request_detach(); an error if setup
  // failed or the driver refused a command.
  Status run(const ReadyCallback& ready);

  // Thread-safe: makes run() return as soon as the volume has nothing in
  // flight. Tags stay with the driver until the ring closes.
  void request_detach();

 private:
  struct Impl;
  explicit QueueRunner(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ublkvol::ublk
