// Failure monitoring (docs/engine.md "Failures", "Generations"): the monitor
// thread's deadline ticks and store-thread death detection, the generation
// bump after a replica leaves the write set, and fail_replica().
#include "impl.h"

namespace ublkvol::engine {

// ---------------------------------------------------------------------------
// Monitor: deadline ticks, failure handling, generation bumps.
// ---------------------------------------------------------------------------
// One round of the monitor: a ticker of the task runner (open.cpp), run
// every deadline/4 (at most 1 s) and whenever monitor_fd is signalled.
void ReplicatedVolume::Impl::monitor_tick() {
  tick.fetch_add(1, std::memory_order_relaxed);
  {
    // Bindings change under meta_mutex (membership changes).
    MutexLock meta_lock(meta_mutex);
    for (unsigned r = 0; r < nreplicas; ++r) {
      ReplicaState s = replica_state(r);
      if ((s == ReplicaState::kInSync || s == ReplicaState::kRebuilding) && thread_exited(r)) {
        report_failure(r, FailKind::kThreadDied, -ESHUTDOWN);
      }
    }
  }
  handle_failures();
  poke_queues();
}

void ReplicatedVolume::Impl::handle_failures() {
  MutexLock meta_lock(meta_mutex);
  uint32_t newly = 0;
  for (unsigned r = 0; r < nreplicas; ++r) {
    if (replica_state(r) == ReplicaState::kFailed && !handled[r]) {
      handled[r] = true;
      newly |= bit(r);
      auto kind = static_cast<FailKind>(fail_kind[r].load(std::memory_order_relaxed));
      int err = fail_errno[r].load(std::memory_order_relaxed);
      std::string why = std::string(to_string(kind)) + " (" +
                        std::error_code(-err, std::generic_category()).message() + ")";
      {
        MutexLock lock(mutex);
        last_error[r] = why;
      }
      event(static_cast<int>(r), "dropped from the write set: " + why);
    }
  }
  if (newly == 0) {
    return;
  }
  // The survivors move to a new generation before anything the lost
  // replica(s) missed is acknowledged (gen_hold keeps those acks back).
  uint64_t g = new_generation();
  // Every replica that moves to g records who else does (the in-sync set,
  // docs/engine.md "In-sync sets"); one whose write fails below is in the
  // set all the same, which only makes an open without it refuse.
  std::array<ReplicaMeta, kMaxReplicas> metas{};
  std::array<Status, kMaxReplicas> read{};
  std::vector<uint64_t> members;
  for (unsigned r = 0; r < nreplicas; ++r) {
    ReplicaState s = replica_state(r);
    if ((s != ReplicaState::kInSync && s != ReplicaState::kRebuilding) || thread_exited(r)) {
      continue;
    }
    Result<ReplicaMeta> m = read_meta(r);
    if (!m.ok()) {
      read[r] = m.error();
      continue;
    }
    metas[r] = *m;
    if (s == ReplicaState::kInSync) {
      members.push_back(m->replica_id);
    }
  }
  const InSyncSet set = make_in_sync_set(members);
  for (unsigned r = 0; r < nreplicas; ++r) {
    ReplicaState s = replica_state(r);
    if ((s != ReplicaState::kInSync && s != ReplicaState::kRebuilding) || thread_exited(r)) {
      continue;
    }
    Status st = read[r];
    if (st.ok()) {
      ReplicaMeta meta = metas[r];
      if (s == ReplicaState::kInSync) {
        advance_generation(meta, g, set);
      } else {
        meta.rebuild_generation = g;
      }
      st = write_meta(r, meta);
    }
    if (!st.ok()) {
      spdlog::error("volume {}: replica {}: generation bump failed: {}", options.name, r,
                    st.error().to_string());
      if (report_failure(r, FailKind::kMetadata, -st.error().errno_value())) {
        // Counted (and bumped past) in the next round.
      }
    }
  }
  unsigned in_sync = static_cast<unsigned>(std::popcount(mask_of(ReplicaState::kInSync)));
  {
    MutexLock lock(mutex);
    generation = g;
  }
  event(-1, "generation " + hex(g) + " after losing replica mask " + std::to_string(newly) + "; " +
                std::to_string(in_sync) + " of " + std::to_string(nreplicas) + " replicas in sync");
  if (in_sync < options.min_replicas) {
    spdlog::error(
        "volume {}: only {} replica(s) in sync, below min-replicas {}: I/O fails with "
        "EIO until a replica is rebuilt",
        options.name, in_sync, options.min_replicas);
  }
  gen_hold.fetch_sub(static_cast<uint32_t>(std::popcount(newly)), std::memory_order_seq_cst);
  bump_epoch();
}

Status ReplicatedVolume::fail_replica(unsigned replica, const std::string& reason, bool force) {
  Impl& v = *impl_;
  if (replica >= v.nreplicas || v.replica_state(replica) == ReplicaState::kRemoved) {
    return Error(EINVAL, "volume " + v.options.name + ": no replica " + std::to_string(replica));
  }
  if (!force && v.replica_state(replica) == ReplicaState::kInSync) {
    auto in_sync = static_cast<unsigned>(std::popcount(v.mask_of(ReplicaState::kInSync)));
    if (in_sync - 1 < v.options.min_replicas) {
      return Error(EBUSY, "volume " + v.options.name + ": failing replica " +
                              std::to_string(replica) + " would leave " +
                              std::to_string(in_sync - 1) + " of " + std::to_string(in_sync) +
                              " in-sync replica(s), below min_replicas " +
                              std::to_string(v.options.min_replicas) +
                              " (the volume would go offline; force to do it anyway)");
    }
  }
  if (!v.report_failure(replica, FailKind::kOperator, -ECANCELED)) {
    return Error(EBUSY, "volume " + v.options.name + ": replica " + std::to_string(replica) +
                            " is the last one in sync");
  }
  v.event(static_cast<int>(replica), "failed by request: " + reason);
  signal_fd(v.monitor_fd.get());
  // Wait for the generation bump so that status() reflects it.
  while (v.gen_hold.load() != 0) {
    v.runner().wait(-1, std::chrono::milliseconds(0));
  }
  return ok_status();
}

}  // namespace ublkvol::engine
