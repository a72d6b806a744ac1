// Checkpoints and periodic dirty-bitmap clearing (docs/engine.md
// "Generations, dirty bitmap, resync"), and with_barrier(): a whole-volume
// ordering entry on the control queue.
#include "impl.h"

namespace ublkvol::engine {

// ---------------------------------------------------------------------------
// Control operations
// ---------------------------------------------------------------------------
Status ReplicatedVolume::Impl::with_barrier(const std::function<Status()>& fn) {
  QueueState& q = *queues[control_queue];
  InternalOp op;
  op.kind = SlotKind::kBarrier;
  if (q.submit_op(op) != 0) {
    return Error(EBUSY, "volume " + options.name + ": control queue busy");
  }
  q.run_until_done(op);
  Status st = fn();
  q.release_barrier(op);
  q.reap();
  return st;
}

Status ReplicatedVolume::Impl::checkpoint_locked(uint64_t* quiet_seq) {
  if (mask_of(ReplicaState::kInSync) != present_mask()) {
    return Error(EAGAIN, "volume " + options.name + ": checkpoint needs every replica in sync");
  }
  // Why clearing is safe: the barrier waits for every earlier mutating
  // request (all queues) to complete on every replica, the flush makes them
  // durable everywhere, and no replica may have left meanwhile (checked
  // under meta_mutex, which failure handling takes too). Requests ordered
  // after the barrier wait for its release, i.e. until every bitmap is
  // cleared; the stores then mark (and commit) their regions again before
  // issuing them. So a cleared bit never covers a write some replica lacks.
  auto started = options.clock.now();
  if (quiet_seq != nullptr) {
    *quiet_seq = UINT64_MAX;
  }
  // The barrier takes the next sequence number; if next_seq is still one
  // past this once the bitmaps are cleared, no request was ordered between
  // (they completed before the barrier) or after it (none waits to mark).
  const uint64_t seq_before = next_seq.load(std::memory_order_seq_cst);
  Status outcome = with_barrier([&]() -> Status {
    // Flush every replica (data durable) before the bitmaps forget.
    const int flush_result = flush_and_wait(*queues[control_queue]);
    if (flush_result != 0) {
      return Error(-flush_result, "volume " + options.name + ": checkpoint flush failed");
    }
    MutexLock meta_lock(meta_mutex);
    if (mask_of(ReplicaState::kInSync) != present_mask()) {
      return Error(EAGAIN, "volume " + options.name + ": a replica left during the checkpoint");
    }
    for (unsigned r = 0; r < nreplicas; ++r) {
      if ((present_mask() & bit(r)) == 0) {
        continue;
      }
      ReplicaStore* store = replicas[r].store;
      Status st = replicas[r].thread->call([&]() -> Status { return store->clear_dirty(); });
      if (!st.ok()) {
        return st.error().with_context("volume " + options.name + ": checkpoint");
      }
    }
    if (quiet_seq != nullptr && next_seq.load(std::memory_order_seq_cst) == seq_before + 1) {
      *quiet_seq = seq_before + 1;
    }
    return ok_status();
  });
  if (outcome.ok()) {
    auto pause =
        std::chrono::duration_cast<std::chrono::microseconds>(options.clock.now() - started);
    MutexLock lock(checkpoint_mutex);
    ++checkpoints;
    last_checkpoint_pause_us = static_cast<uint64_t>(pause.count());
    checkpoint_cv.notify_all();
  }
  return outcome;
}

void ReplicatedVolume::Impl::dirty_clear_loop() {
  pthread_setname_np(pthread_self(), "vol-dirtyclear");
  // next_seq right after a checkpoint that covered every mutating request
  // ordered so far: while next_seq stays there, nothing is dirty
  // (UINT64_MAX: unknown). Not "the bitmaps read empty": a request that has
  // its sequence number may not have marked its region yet.
  uint64_t clean_seq = UINT64_MAX;
  UniqueLock lock(checkpoint_mutex);
  for (;;) {
    checkpoint_cv.wait_for(lock.native(), options.dirty_clear_interval,
                           [&]() REQUIRES(checkpoint_mutex) { return dirty_clear_stop; });
    if (dirty_clear_stop) {
      return;
    }
    lock.unlock();
    dirty_clear_round(clean_seq);
    lock.lock();
  }
}

void ReplicatedVolume::Impl::dirty_clear_round(uint64_t& clean_seq) {
  // A replica out of the write set resyncs from these bits; a rebuild
  // checkpoints itself when it is done.
  if (mask_of(ReplicaState::kInSync) != present_mask()) {
    return;
  }
  {
    MutexLock lock(rebuild_mutex);
    if (rebuild_running) {
      return;
    }
  }
  // Nothing was written since the last clear that covered every request
  // (reads take no sequence number): nothing is dirty.
  if (next_seq.load(std::memory_order_seq_cst) == clean_seq) {
    return;
  }
  // An operator's control call (snapshot, verify, membership change) holds
  // the control queue: skip this round rather than queue behind it.
  if (!control_mutex.try_lock()) {
    return;
  }
  MutexLock control_lock(control_mutex, kAdoptLock);
  uint64_t quiet = UINT64_MAX;
  Status st = checkpoint_locked(&quiet);
  if (st.ok()) {
    // Under a steady write load `quiet` stays unknown and the next round
    // clears again; once the volume goes idle one more clear records it.
    clean_seq = quiet;
    spdlog::debug("volume {}: dirty bitmaps cleared", options.name);
  } else if (st.error().errno_value() != EAGAIN) {
    spdlog::warn("volume {}: periodic dirty-bitmap clear: {}", options.name,
                 st.error().to_string());
  }
}

void ReplicatedVolume::Impl::stop_dirty_clear() {
  {
    MutexLock lock(checkpoint_mutex);
    dirty_clear_stop = true;
  }
  checkpoint_cv.notify_all();
  if (dirty_clear_thread) {
    dirty_clear_thread->join();
    dirty_clear_thread.reset();
  }
}

}  // namespace ublkvol::engine
