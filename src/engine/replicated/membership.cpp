// Membership changes on a running volume (docs/engine.md "Membership
// changes"): fence, install, uninstall, take out; add / remove / replace.
#include "impl.h"

namespace ublkvol::engine {

namespace {
// Reaps `q` unless another thread uses it (holds `m`). The fence calls it
// with membership_mutex held, out of the lock order (impl.h): a try_lock
// never waits, so it cannot deadlock, but the analysis checks the order on
// try_lock too - hence outside it.
void reap_if_free(Mutex& m, QueueState& q) NO_THREAD_SAFETY_ANALYSIS {
  if (m.try_lock()) {
    MutexLock lock(m, kAdoptLock);
    q.reap();
  }
}

// "volume V: replica R" for a replica the volume holds; EINVAL naming it if
// there is none (out of range or removed).
Result<std::string> held_replica(const ReplicatedVolume::Impl& v, unsigned replica) {
  if (replica >= v.nreplicas || v.replica_state(replica) == ReplicaState::kRemoved) {
    return Error(EINVAL, "volume " + v.options.name + ": no replica " + std::to_string(replica));
  }
  return "volume " + v.options.name + ": replica " + std::to_string(replica);
}
}  // namespace

// ---------------------------------------------------------------------------
// Membership changes (docs/engine.md "Membership changes")
// ---------------------------------------------------------------------------

// Waits until replica r is fenced: every queue has acted on the current
// state epoch (so none sends to r under an older mask) and no queue has a
// sub-request at r's store (answered, or reclaimed because its thread
// exited). Internal queues nobody is driving are reaped here.
Status ReplicatedVolume::Impl::fence(unsigned r, const std::string& what) {
  const uint64_t target = state_epoch.load(std::memory_order_seq_cst);
  poke_queues();
  const auto limit = options.clock.now() + 2 * options.io_deadline + std::chrono::seconds(1);
  std::string waiting;
  for (;;) {
    waiting.clear();
    for (unsigned i = 0; i < queues.size(); ++i) {
      QueueState& q = *queues[i];
      bool idle = false;
      if (i == control_queue) {
        reap_if_free(control_mutex, q);
      } else if (i == rebuild_queue) {
        MutexLock lock(rebuild_mutex);
        if (!rebuild_running) {
          q.reap();
        }
      } else {
        // A closed queue runs nothing; its next use refreshes its masks.
        idle = !q.opened.load(std::memory_order_acquire);
      }
      bool acked = idle || q.acked_epoch.load(std::memory_order_acquire) >= target;
      if (!acked || q.outstanding[r].load(std::memory_order_acquire) != 0) {
        waiting += " " + std::to_string(i);
      }
    }
    if (waiting.empty()) {
      return ok_status();
    }
    if (options.clock.now() > limit) {
      return Error(ETIMEDOUT,
                   std::string(what)
                       .append(": queue(s)")
                       .append(waiting)
                       .append(" still hold requests for it or did not reap (keep reaping "
                               "on wake_fd; a hung store keeps its requests)"));
    }
    // Control path: queues answer within a reap or a monitor tick.
    runner().wait(-1, std::chrono::milliseconds(2));
  }
}

Status ReplicatedVolume::Impl::check_new_binding(const ReplicaBinding& b, int except,
                                                 const std::string& what) const {
  if (b.store == nullptr || b.thread == nullptr) {
    return Error(EINVAL, what + ": the new replica has no store or thread");
  }
  if (b.thread->exited()) {
    return Error(ESHUTDOWN, what + ": the new replica's store thread is not running");
  }
  for (unsigned r = 0; r < nreplicas; ++r) {
    if (static_cast<int>(r) != except && replica_state(r) != ReplicaState::kRemoved &&
        replicas[r].store == b.store) {
      return Error(EINVAL, what + ": that store is already replica " + std::to_string(r));
    }
  }
  if (b.store->size_bytes() < info.size_bytes) {
    return Error(EINVAL, what + ": the new store holds " + std::to_string(b.store->size_bytes()) +
                             " bytes, the volume needs " + std::to_string(info.size_bytes));
  }
  if (b.store->region_bytes() != region_size) {
    return Error(EINVAL, what + ": the new store's dirty-region size " +
                             std::to_string(b.store->region_bytes()) +
                             " differs from the volume's " + std::to_string(region_size));
  }
  return ok_status();
}

// r is kRemoved (or r == nreplicas) and fenced. The new replica joins as
// stale: not read, not written until its rebuild makes it a target.
Status ReplicatedVolume::Impl::install(unsigned r, const ReplicaBinding& b) {
  {
    MutexLock meta_lock(meta_mutex);
    replicas[r] = b;
    ++binding_version[r];
    handled[r] = false;
    MutexLock lock(mutex);
    names[r] = std::string(b.store->name());
    last_error[r].clear();
  }
  fail_kind[r].store(0);
  state[r].store(static_cast<uint8_t>(ReplicaState::kStale), std::memory_order_seq_cst);
  for (auto& q : queues) {
    Status st = q->bind_replica(r);
    if (!st.ok()) {
      for (auto& u : queues) {
        (void)u->unbind_replica(r);
      }
      state[r].store(static_cast<uint8_t>(ReplicaState::kRemoved), std::memory_order_seq_cst);
      return st;
    }
  }
  if (r >= nreplicas) {
    nreplicas.store(r + 1, std::memory_order_seq_cst);
  }
  bump_epoch();
  // Zero copy: no request on a window address may reach r (direct_io.cpp).
  Status drained =
      detail::drain_direct(*this, r,
                           "volume " + options.name + ": replica " + std::to_string(r) + " (" +
                               std::string(b.store->name()) + ")");
  if (!drained.ok()) {
    (void)uninstall(r);
    return drained;
  }
  return ok_status();
}

// r is failed or stale and fenced: forget its binding.
Status ReplicatedVolume::Impl::uninstall(unsigned r) {
  Status result = ok_status();
  for (auto& q : queues) {
    Status st = q->unbind_replica(r);
    if (!st.ok() && result.ok()) {
      result = st;  // the old thread stopped meanwhile: nothing left to detach
    }
  }
  {
    MutexLock lock(rebuild_mutex);
    // Queued jobs for the old binding must not run on a new one.
    jobs.erase(std::remove_if(jobs.begin(), jobs.end(),
                              [&](const Job& j) { return (j.targets & bit(r)) != 0; }),
               jobs.end());
  }
  {
    MutexLock meta_lock(meta_mutex);
    state[r].store(static_cast<uint8_t>(ReplicaState::kRemoved), std::memory_order_seq_cst);
    replicas[r] = {};
    ++binding_version[r];
  }
  bump_epoch();
  (void)result;
  return ok_status();
}

// Takes r out of the write set (as a failure would) and waits for the
// survivors' generation bump.
Status ReplicatedVolume::Impl::take_out(unsigned r, const std::string& what) {
  ReplicaState s = replica_state(r);
  if (s == ReplicaState::kInSync) {
    unsigned in_sync = static_cast<unsigned>(std::popcount(mask_of(ReplicaState::kInSync)));
    if (in_sync - 1 < options.min_replicas) {
      return Error(EBUSY, what + ": removing it would leave " + std::to_string(in_sync - 1) +
                              " in-sync replica(s), below min-replicas " +
                              std::to_string(options.min_replicas));
    }
  }
  if (s == ReplicaState::kInSync || s == ReplicaState::kRebuilding) {
    if (!report_failure(r, FailKind::kOperator, -ECANCELED)) {
      return Error(EBUSY, what + " is the last replica in sync");
    }
    signal_fd(monitor_fd.get());
  }
  while (gen_hold.load(std::memory_order_seq_cst) != 0) {
    runner().wait(-1, std::chrono::milliseconds(1));
  }
  return ok_status();
}

Result<unsigned> ReplicatedVolume::add_replica(ReplicaBinding replica) {
  Impl& v = *impl_;
  MutexLock membership_lock(v.membership_mutex);
  std::string what = "volume " + v.options.name + ": add replica";
  if (v.closed) {
    return Error(ESHUTDOWN, what + ": the volume is closed");
  }
  UBLKVOL_TRY(v.check_new_binding(replica, -1, what));
  UBLKVOL_TRY(v.check_space(replica, what));
  unsigned r = 0;
  while (r < v.nreplicas && v.replica_state(r) != ReplicaState::kRemoved) {
    ++r;
  }
  if (r >= kMaxReplicas) {
    return Error(ENOSPC,
                 what + ": the volume already has " + std::to_string(kMaxReplicas) + " replicas");
  }
  // A removed index was fenced when it was removed.
  UBLKVOL_TRY(v.install(r, replica));
  v.event(static_cast<int>(r), "added; full rebuild follows");
  Impl::Job job = v.make_job(bit(r), 0);
  UBLKVOL_TRY(v.start_job(job));
  return r;
}

Status ReplicatedVolume::remove_replica(unsigned replica) {
  Impl& v = *impl_;
  MutexLock membership_lock(v.membership_mutex);
  UBLKVOL_ASSIGN_OR_RETURN(const std::string what, held_replica(v, replica));
  UBLKVOL_TRY(v.take_out(replica, what));
  UBLKVOL_TRY(v.fence(replica, what));
  std::string name;
  {
    MutexLock lock(v.mutex);
    name = v.names[replica];
  }
  UBLKVOL_TRY(v.uninstall(replica));
  v.event(static_cast<int>(replica), "removed (" + name + ")");
  return ok_status();
}

Status ReplicatedVolume::replace_replica(unsigned replica, ReplicaBinding binding) {
  Impl& v = *impl_;
  MutexLock membership_lock(v.membership_mutex);
  UBLKVOL_ASSIGN_OR_RETURN(const std::string what, held_replica(v, replica));
  ReplicaState s = v.replica_state(replica);
  if (s != ReplicaState::kFailed && s != ReplicaState::kStale) {
    return Error(EBUSY, what + " is " + to_string(s) +
                            "; only a failed or stale replica is replaced (fail it first)");
  }
  UBLKVOL_TRY(v.check_new_binding(binding, static_cast<int>(replica), what));
  UBLKVOL_TRY(v.check_space(binding, what));
  UBLKVOL_TRY(v.take_out(replica, what));
  UBLKVOL_TRY(v.fence(replica, what));
  std::string old_name;
  {
    MutexLock lock(v.mutex);
    old_name = v.names[replica];
  }
  UBLKVOL_TRY(v.uninstall(replica));
  UBLKVOL_TRY(v.install(replica, binding));
  v.event(static_cast<int>(replica), "replaced " + old_name + "; rebuilding");
  return v.start_rebuild_locked(replica);
}

}  // namespace ublkvol::engine
