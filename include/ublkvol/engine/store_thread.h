// StoreThread: the StoreExecutor (store_executor.h) of production - the one
// thread that owns a store (all ReplicaStores on one
// device / one DBS) and does its I/O. Shared-nothing: nothing else ever
// touches the stores it owns.
//
// Queue threads reach it through per-(queue, store thread) channels: two
// lock-free SPSC rings of ReplicaIo pointers (requests in, completions out).
// Wake-ups are batched and cheap:
//   - queue -> store: the producer writes the store's doorbell eventfd only
//     if the store thread announced it is going to sleep (flag + re-check,
//     so no wake-up is lost and none is sent while it is busy);
//   - store -> queue: after each loop iteration, the queue's wake_fd is
//     written once per channel whose completion ring was empty before the
//     batch (the queue drains until empty, so a non-empty ring already has a
//     pending wake-up).
// When idle the thread first keeps polling for `spin_before_sleep` (rings
// and device completion queues are shared memory, so this costs no
// syscalls), then sleeps in poll(2) on its doorbell plus the stores'
// completion fds. Stores without a completion fd and with requests in flight
// (e.g. a fault-injecting wrapper holding delayed requests) are polled every
// `idle_poll_interval`.
//
// Control work (opening a replica's metadata, generation bumps, snapshots)
// runs on the thread through call(), which blocks the caller until done.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "ublkvol/common/result.h"
#include "ublkvol/engine/replica_store.h"
#include "ublkvol/engine/store_executor.h"

namespace ublkvol::engine {

struct StoreThreadOptions {
  std::string name = "store";
  std::chrono::microseconds idle_poll_interval{200};
  // How long an idle thread keeps polling before it sleeps. A completion or
  // request arriving within it is picked up without the sleep/wake-up pair
  // (two context switches, plus the waker's eventfd write); longer idle
  // periods cost this much CPU each. 0: sleep at once.
  std::chrono::microseconds spin_before_sleep{0};
  // Serve the stores on this reactor (a ReactorExecutor on it, shared with
  // whatever else the reactor runs - ublk queues, other stores) instead of
  // starting a thread of its own; the two options above are then the
  // reactor's business. It must outlive the StoreThread. nullptr: own thread.
  reactor::Reactor* reactor = nullptr;
};

class StoreThread final : public StoreExecutor {
 public:
  static Result<std::unique_ptr<StoreThread>> start(const StoreThreadOptions& options = {});
  // Stops the thread (see stop()).
  ~StoreThread() override;
  StoreThread(const StoreThread&) = delete;
  StoreThread& operator=(const StoreThread&) = delete;

  [[nodiscard]] std::string_view name() const override;

  // Runs `fn` on the store thread and returns its result. Fails with
  // ESHUTDOWN if the thread has stopped or died.
  Status call(const std::function<Status()>& fn) override;

  // Stores the thread serves (it polls them). Control path; `store` must
  // outlive its attachment.
  Status attach(ReplicaStore& store);
  Status detach(ReplicaStore& store);

  // Engine plumbing: channels are added/removed by ReplicatedVolume.
  Status add_channel(detail::StoreChannel& channel) override;
  Status remove_channel(detail::StoreChannel& channel) override;
  // Producer side: call after pushing requests (wakes the thread if asleep).
  void ring_doorbell() override;

  // Ends the loop and joins (on a shared reactor: leaves it, synchronously).
  // Requests still in flight are abandoned (their completions never
  // arrive): close the volumes first.
  void stop();
  // Fault injection: the thread exits at once, completing nothing that is in
  // flight, as if it had crashed. exited() turns true after its last access
  // to any request, so the engine may then reclaim them.
  void kill_for_testing();
  [[nodiscard]] bool exited() const override;
  // Its own reactor (a queue opened on the store thread submits directly).
  [[nodiscard]] reactor::Reactor* home_reactor() const override;

  struct Impl;

 private:
  explicit StoreThread(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ublkvol::engine
