// Zero copy, per request (docs/zero-copy.md "The daemon"): whether a user
// queue may take its next request as an address in the thread's zero-copy
// window, and the drain that keeps such requests away from a replica that
// joins the volume later.
//
// Why a request's targets cannot grow past what the answer saw: a request
// is not fanned out once at submit. It may wait for a free slot or for the
// write ordering, and a read may be retried or repaired later; each of these
// recomputes the masks of the epoch it runs in. So the answer is computed
// over every replica the volume holds in any state (present_mask(): failed
// and stale ones too, which can only become targets again through a
// rebuild), not over the current read or write set. The only way a replica
// that is not a local fixed-buffer one becomes present is install(), which
// calls drain_direct() after publishing it: every request that was answered
// "direct" before the queue saw the new replica completes before install()
// returns - before the rebuild can make the replica a write target.
#include "impl.h"

namespace ublkvol::engine::detail {

void QueueState::mark_fixed_buffer_io(unsigned r) {
  if (vol->replicas[r].fixed_buffer_io) {
    fixed_mask.fetch_or(bit(r), std::memory_order_relaxed);
  }
}

bool QueueState::all_targets_local() {
  if (!asks_direct.load(std::memory_order_relaxed)) {
    asks_direct.store(true, std::memory_order_seq_cst);  // before the epoch load (queue_path.h)
  }
  // Recomputed once per state epoch (and after the queue changed home).
  // install() / uninstall() publish the binding masks before the epoch
  // bump, so an answer computed for an epoch sees that epoch's bindings.
  const uint64_t epoch = vol->state_epoch.load(std::memory_order_seq_cst);
  if (epoch != direct_epoch) {
    direct_epoch = epoch;
    const uint32_t present = vol->present_mask();
    const uint32_t usable =
        local_mask.load(std::memory_order_relaxed) & fixed_mask.load(std::memory_order_relaxed);
    direct_answer = present != 0 && (present & ~usable) == 0;
  }
  // The next submit() counts its request as direct (see submit()).
  answered_direct = direct_answer;
  return direct_answer;
}

Status drain_direct(ReplicatedVolume::Impl& v, unsigned r, const std::string& what) {
  const uint64_t target = v.state_epoch.load(std::memory_order_seq_cst);
  v.poke_queues();
  const auto limit = v.options.clock.now() + 2 * v.options.io_deadline + std::chrono::seconds(1);
  std::string waiting;
  for (;;) {
    waiting.clear();
    for (unsigned i = 0; i < v.queues.size(); ++i) {
      QueueState& q = *v.queues[i];
      const uint32_t usable = q.local_mask.load(std::memory_order_relaxed) &
                              q.fixed_mask.load(std::memory_order_relaxed);
      if ((usable & bit(r)) != 0 || !q.opened.load(std::memory_order_acquire) ||
          !q.asks_direct.load(std::memory_order_seq_cst)) {
        continue;  // r takes window addresses of this queue; nothing runs; or it never asked
      }
      // Acked: the queue answers for the new membership from now on, and
      // every request it answered "direct" before is counted (the count is
      // stored before acked_epoch, release).
      const bool acked = q.acked_epoch.load(std::memory_order_acquire) >= target;
      if (!acked || q.direct_in_flight.load(std::memory_order_acquire) != 0) {
        waiting += " " + std::to_string(i);
      }
    }
    if (waiting.empty()) {
      return ok_status();
    }
    if (v.options.clock.now() > limit) {
      return Error(ETIMEDOUT, std::string(what)
                                  .append(": queue(s)")
                                  .append(waiting)
                                  .append(" still have requests on zero-copy buffers, which the "
                                          "new replica cannot reach (keep reaping on wake_fd)"));
    }
    v.runner().wait(-1, std::chrono::milliseconds(2));
  }
}

}  // namespace ublkvol::engine::detail
