// UblkDevice: serves one engine::Volume as /dev/ublkbN.
//
// Lifecycle (see docs/ublk.md):
//   create():   ADD_DEV, SET_PARAMS, one thread per hardware queue (each
//               submits a FETCH_REQ per tag), then START_DEV.
//   recover():  re-attaches a new process to a device whose server died or
//               detached (UBLK_F_USER_RECOVERY): START_USER_RECOVERY, queue
//               threads, END_USER_RECOVERY. Applications only saw a pause;
//               requests the old server held are re-issued (writes may
//               repeat).
//   stop_and_delete(): STOP_DEV while the queues keep serving (outstanding
//               requests complete), queue threads end on ABORT, then DEL_DEV.
//   detach():   queue threads end without stopping the device; a recoverable
//               device waits (quiesced) for recover(), any other is removed
//               by the driver.
//   quiesce_and_detach(): (UBLK_F_QUIESCE, Linux >= 6.16) QUIESCE_DEV first:
//               the driver stops handing out requests and the queues finish
//               the ones they hold, then detach(). The next server finds
//               (almost) nothing to re-issue.
// The destructor runs stop_and_delete() unless detach() or
// stop_and_delete() ran.
//
// Each queue thread owns its io_uring, its descriptor mapping, its tag
// buffers and its VolumeQueue; queue threads share nothing and allocate
// nothing per request. With DeviceOptions::queue_loop == kExternal there are
// no queue threads: the QueueHost's threads run the queues (queue_host.h),
// and "queue thread" above means the host thread that runs the queue.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ublkvol/common/result.h"
#include "ublkvol/engine/volume.h"
#include "ublkvol/ublk/device_options.h"
#include "ublkvol/ublk/uapi.h"

namespace ublkvol::ublk {

// Latency histograms of DeviceStats: log2 buckets, bucket i counts requests
// whose time in the volume (handed over -> completed) was below
// latency_bucket_upper_ns(i) = 2^(10+i) ns and not below the previous bound;
// the last bucket also takes everything longer.
inline constexpr unsigned kLatencyBuckets = 32;
constexpr uint64_t latency_bucket_upper_ns(unsigned bucket) { return uint64_t{1} << (10 + bucket); }

struct LatencyHistogram {
  std::array<uint64_t, kLatencyBuckets> buckets{};
  uint64_t sum_ns = 0;  // total latency of the counted requests
};

// Requests handed to the volume, summed over the device's queues. Counted by
// each queue thread without shared writes; a snapshot is approximate while
// I/O runs.
struct DeviceStats {
  uint64_t reads = 0;
  uint64_t writes = 0;
  uint64_t fua_writes = 0;  // included in writes
  uint64_t flushes = 0;
  uint64_t discards = 0;
  uint64_t write_zeroes = 0;
  uint64_t bytes_read = 0;
  uint64_t bytes_written = 0;
  // Requests answered with an error (by the volume or by the frontend).
  uint64_t errors = 0;
  // Zero copy (docs/zero-copy.md): READ/WRITE requests served on the
  // request's own pages, and those of a zero-copy device served by copy.
  uint64_t zero_copy_ios = 0;
  uint64_t copied_ios = 0;
  // Time in the volume per request (completed ones; reads / writes incl. FUA).
  LatencyHistogram read_latency;
  LatencyHistogram write_latency;
};

class UblkDevice {
 public:
  // Creates and starts a device for `volume`, which must outlive it and have
  // been created for at least `options.queues` queues.
  static Result<std::unique_ptr<UblkDevice>> create(engine::Volume& volume,
                                                    const DeviceOptions& options);

  // Re-attaches to device `dev_id`, whose previous server is gone. Waits up
  // to `quiesce_timeout` for the driver to finish quiescing it. The volume
  // must describe the same size and block size; queue count and depth are the
  // device's (options.queues / queue_depth are ignored).
  static Result<std::unique_ptr<UblkDevice>> recover(
      engine::Volume& volume, uint32_t dev_id, const DeviceOptions& options,
      std::chrono::milliseconds quiesce_timeout = std::chrono::seconds(30));

  ~UblkDevice();
  UblkDevice(const UblkDevice&) = delete;
  UblkDevice& operator=(const UblkDevice&) = delete;

  [[nodiscard]] uint32_t id() const;
  [[nodiscard]] std::string block_path() const;
  // The driver's view at attach time (queues, depth, negotiated features).
  [[nodiscard]] const uapi::CtrlDevInfo& info() const;

  // An eventfd that becomes readable when every queue thread has ended: the
  // device was stopped or deleted by someone else, or a queue failed. Poll
  // it next to your own events.
  [[nodiscard]] int finished_fd() const;
  [[nodiscard]] bool finished() const;
  // Why the queues ended, once finished(): OK when the driver aborted them
  // (stop/delete), else the first queue's error.
  [[nodiscard]] Status queue_status() const;

  // Stops the device (pending requests complete), ends the queue threads and
  // deletes the device. Idempotent; tolerates a device already removed.
  Status stop_and_delete();
  // Ends the queue threads, leaving the device to the driver (see above).
  Status detach();
  // Whether the device was created with UBLK_F_AUTO_BUF_REG (zero copy).
  [[nodiscard]] bool zero_copy() const;
  // Whether the device was created with UBLK_F_QUIESCE.
  [[nodiscard]] bool quiescable() const;
  // QUIESCE_DEV (waits up to `timeout` for the driver), then detach(). On an
  // error (no UBLK_F_QUIESCE on the device: EOPNOTSUPP; the driver's
  // refusal or timeout) the device is untouched and still served: the
  // caller may detach() instead.
  Status quiesce_and_detach(std::chrono::milliseconds timeout);
  // After a detach by this process: waits up to `timeout` until the driver
  // has released the device (its state leaves "live": the queue rings and
  // /dev/ublkcN are closed), so that recover() may take it over in the same
  // process.
  static Status wait_released(uint32_t dev_id, std::chrono::milliseconds timeout);

  [[nodiscard]] DeviceStats stats() const;
  // The same, per hardware queue.
  [[nodiscard]] std::vector<DeviceStats> queue_stats() const;

 private:
  struct State;
  explicit UblkDevice(std::unique_ptr<State> state);
  // detach(); `driver_aborts`: after QUIESCE_DEV (QueueRunner::request_detach).
  Status detach_queues(bool driver_aborts);
  std::unique_ptr<State> state_;
};

}  // namespace ublkvol::ublk
