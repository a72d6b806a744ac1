// QueueRunner: one ublk hardware queue, as a reactor::Poller.
//
// It owns (and sets up on the thread that will run it) the io_uring, the
// read-only mapping of the queue's request descriptors, the 4 KiB-aligned tag
// buffers and the VolumeQueue. One step of work: for every kernel CQE hand the
// request to the volume (one VolumeIo per tag, reused); kick the volume; reap
// volume completions, which queue COMMIT_AND_FETCH_REQs; submit - one
// io_uring_enter per batch. The volume's wake_fd() (if it has one) and a
// detach eventfd are read through the same ring, so the ring is the only
// thing a sleeping thread has to wait on.
//
// Two ways to run it (DeviceOptions::queue_loop, docs/ublk.md):
//   - run(): the queue's own thread (thread mode). The loop sleeps inside
//     io_uring_submit_and_wait - the submit and the wait are one syscall.
//   - set_up() then poll() from somebody else's loop (external mode, e.g. a
//     reactor running several queues). wait_fd() is an eventfd registered on
//     the ring (io_uring_register_eventfd), readable after a CQE is posted;
//     the ring has no DEFER_TASKRUN in this mode (queue.cpp, Ring::init, says
//     why): pending task work interrupts the host's sleep and posts the CQEs.
// Either way every call after set_up() comes from the thread that ran
// set_up(): ublk takes a queue's commands from the task that fetched them,
// and the ring is SINGLE_ISSUER.
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
#include "ublkvol/reactor/poller.h"
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
  // External mode: register an eventfd on the ring for wait_fd() (thread mode
  // has none: its loop waits in io_uring_enter, and an eventfd would cost a
  // signal per CQE).
  bool external = false;
  // The device has UBLK_F_AUTO_BUF_REG | UBLK_F_USER_COPY (docs/zero-copy.md):
  // each data request's pages arrive registered as fixed buffer `tag` of the
  // queue's ring. Requests are then served either directly (below) or by
  // copy: pread/pwrite on /dev/ublkcN into the tag buffer.
  bool zero_copy = false;
  // With zero_copy: set up a PROT_NONE window of the queue's ring
  // (dbs/fixed_buffer.h) and hand a data request to the volume as an address
  // in it whenever the volume queue's all_targets_local() says yes right
  // before its submit (DeviceOptions::zero_copy_direct).
  bool zero_copy_direct = false;
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
  // Zero copy: data requests served on the request's own pages, and those
  // of a zero-copy device served by copy (NEED_REG_BUF, or not direct).
  std::atomic<uint64_t> zero_copy_ios{0};
  std::atomic<uint64_t> copied_ios{0};
  // Latency histograms (device.h, kLatencyBuckets), same single-writer rule.
  std::array<std::atomic<uint64_t>, kLatencyBuckets> read_latency{};
  std::array<std::atomic<uint64_t>, kLatencyBuckets> write_latency{};
  std::atomic<uint64_t> read_latency_sum_ns{0};
  std::atomic<uint64_t> write_latency_sum_ns{0};

  void add_to(DeviceStats& stats) const;
};

class QueueRunner final : public reactor::Poller {
 public:
  // Called once by run(): OK when every tag has a FETCH_REQ with the driver
  // (START_DEV / END_USER_RECOVERY may proceed), or the setup error.
  using ReadyCallback = std::function<void(const Status&)>;
  // Called once by poll(), on the polling thread, when the queue has finished
  // (see finished()); the VolumeQueue is already closed. The poller must not
  // be polled again.
  using FinishedCallback = std::function<void(const Status&)>;

  static Result<std::unique_ptr<QueueRunner>> make(const QueueSetup& setup, engine::Volume& volume,
                                                   QueueCounters& counters);
  ~QueueRunner() override;
  QueueRunner(const QueueRunner&) = delete;
  QueueRunner& operator=(const QueueRunner&) = delete;

  // Thread mode: the thread body. set_up(), ready(status), then a loop that
  // sleeps in io_uring_submit_and_wait until finished(). Returns OK when
  // every tag was aborted by the driver (device stopped or deleted) or after
  // request_detach(); an error if setup failed or the driver refused a
  // command. The VolumeQueue is closed before it returns; the ring is not
  // (see the destructor).
  Status run(const ReadyCallback& ready);

  // External mode, on the thread that will poll: opens the VolumeQueue, sets
  // up the ring (with the wait_fd() eventfd when QueueSetup::external),
  // mappings and buffers, and submits a FETCH_REQ per tag. OK when every tag
  // is with the driver. On an error some FETCH_REQs may be with the driver
  // already: see holds_driver_commands().
  Status set_up();
  void on_finished(FinishedCallback callback);

  // reactor::Poller. poll(): flushes deferred completions if the ring has
  // some, handles the CQEs, kicks and reaps the volume, submits the commits
  // without waiting; once finished(), closes the VolumeQueue and calls the
  // FinishedCallback (once). Polling thread only.
  unsigned poll() override;
  [[nodiscard]] int wait_fd() const override;
  // The volume has I/O in flight that only reap() notices (no wake fd).
  [[nodiscard]] bool busy() const override;
  // The volume has I/O in flight (adaptive polling waits for it).
  [[nodiscard]] bool waiting() const override;

  // Every tag was aborted or failed, the driver refused a command, or a
  // requested detach is done (nothing in flight at the volume, last commits
  // submitted). Polling thread only.
  [[nodiscard]] bool finished() const;
  // Commands (FETCH_REQs) are still with the driver: after a detach, or a
  // setup that failed half-way. Then the ring must not be closed before the
  // thread that issued them has exited (the destructor says why): whoever
  // owns the runner keeps it until then.
  [[nodiscard]] bool holds_driver_commands() const;

  // Thread-safe: makes the queue finish as soon as the volume has nothing in
  // flight. Tags stay with the driver until the ring closes - unless
  // `driver_aborts` (the device was quiesced: QUIESCE_DEV cancelled every
  // tag's command before it returned): then an external-mode queue also
  // waits (bounded) until it has seen every abort, so it holds no driver
  // command and its owner can close its ring at once.
  void request_detach(bool driver_aborts = false);

 private:
  struct Impl;
  explicit QueueRunner(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ublkvol::ublk
