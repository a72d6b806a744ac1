// Snapshot operations across every replica (docs/engine.md "Snapshots"):
// create, delete, revert, clone.
#include "impl.h"

namespace ublkvol::engine {

// Revert and clone need the snapshot on every target: a replica added or
// rebuilt after the snapshot was taken lacks it (rebuilds copy the head
// only), and a half-applied revert would leave replicas that differ.
Status ReplicatedVolume::Impl::refuse_if_lacking(const std::string& snapshot, uint32_t targets,
                                                 const std::string& what) {
  const uint32_t lacking = targets & ~holders_of(snapshot, targets);
  if (lacking == 0) {
    return ok_status();
  }
  std::string list;
  for (unsigned r = 0; r < nreplicas; ++r) {
    if ((lacking & bit(r)) != 0) {
      list += (list.empty() ? "" : ", ") + replica_name(r);
    }
  }
  return Error(ENOENT, what + " refused, nothing changed: " + list + " has no snapshot " +
                           snapshot +
                           " (added or rebuilt after it was taken); remove or replace that "
                           "replica first, or use a snapshot taken since");
}

// Snapshot operations (docs/engine.md "Snapshots"): all-or-nothing across
// every replica the volume writes to; refused while a rebuild runs or is
// queued (a rebuilding replica's data is not consistent, and a replica that
// finishes rebuilding after a snapshot would lack it); revert and clone
// refused up front when an in-sync replica lacks the snapshot.
Status ReplicatedVolume::create_snapshot(const std::string& snapshot) {
  Impl& v = *impl_;
  MutexLock control_lock(v.control_mutex);
  const std::string what = "volume " + v.options.name + ": snapshot create " + snapshot;
  return v.with_barrier([&]() -> Status {
    // Nothing is in flight; meta_mutex keeps rebuilds from starting.
    MutexLock meta_lock(v.meta_mutex);
    UBLKVOL_TRY(v.refuse_while_rebuilding(what));
    uint32_t done = 0;
    for (unsigned r = 0; r < v.nreplicas; ++r) {
      if (v.replica_state(r) != ReplicaState::kInSync) {
        continue;
      }
      Status st = v.on_store(r, [&](ReplicaStore& s) { return s.create_snapshot(snapshot); });
      if (!st.ok()) {
        v.undo_on(done, [&](ReplicaStore& s) { return s.delete_snapshot(snapshot); });
        return st.error().with_context(what + ": on " + v.replica_name(r) +
                                       " (undone on the others)");
      }
      done |= bit(r);
    }
    v.event(-1, "snapshot " + snapshot + " created on replica mask " + std::to_string(done));
    return ok_status();
  });
}

Status ReplicatedVolume::delete_snapshot(const std::string& snapshot) {
  Impl& v = *impl_;
  MutexLock control_lock(v.control_mutex);
  MutexLock meta_lock(v.meta_mutex);
  const std::string what = "volume " + v.options.name + ": snapshot delete " + snapshot;
  UBLKVOL_TRY(v.refuse_while_rebuilding(what));
  const uint32_t holders = v.holders_of(snapshot, v.mask_of(ReplicaState::kInSync));
  if (holders == 0) {
    return Error(ENOENT, what + ": no in-sync replica has it");
  }
  // A delete cannot be undone (the snapshot merges into its child); one
  // that fails part-way leaves the snapshot on some replicas, and repeating
  // the delete finishes it (replicas without it are skipped).
  uint32_t done = 0;
  for (unsigned r = 0; r < v.nreplicas; ++r) {
    if ((holders & bit(r)) == 0) {
      continue;
    }
    Status st = v.on_store(r, [&](ReplicaStore& s) { return s.delete_snapshot(snapshot); });
    if (!st.ok()) {
      return st.error().with_context(what + ": on " + v.replica_name(r) + " (deleted on mask " +
                                     std::to_string(done) + "; repeat the delete to finish)");
    }
    done |= bit(r);
  }
  v.event(-1, "snapshot " + snapshot + " deleted on replica mask " + std::to_string(done));
  return ok_status();
}

Status ReplicatedVolume::revert_snapshot(const std::string& snapshot) {
  Impl& v = *impl_;
  MutexLock control_lock(v.control_mutex);
  const std::string what = "volume " + v.options.name + ": revert to snapshot " + snapshot;
  return v.with_barrier([&]() -> Status {
    MutexLock meta_lock(v.meta_mutex);
    UBLKVOL_TRY(v.refuse_while_rebuilding(what));
    const uint32_t targets = v.mask_of(ReplicaState::kInSync);
    UBLKVOL_TRY(v.refuse_if_lacking(snapshot, targets, what));
    // A crash between two replicas' reverts must not leave equal
    // generations over different data: every region is marked dirty
    // first, so open() copies the whole volume from one of them.
    for (unsigned r = 0; r < v.nreplicas; ++r) {
      if ((targets & bit(r)) == 0) {
        continue;
      }
      Status st = v.on_store(r, [](ReplicaStore& s) { return s.mark_all_dirty(); });
      if (!st.ok()) {
        return st.error().with_context(what + ": on " + v.replica_name(r) + ", nothing reverted");
      }
    }
    uint32_t done = 0;
    Status failed = ok_status();
    for (unsigned r = 0; r < v.nreplicas; ++r) {
      if ((targets & bit(r)) == 0) {
        continue;
      }
      Status st = v.on_store(r, [&](ReplicaStore& s) { return s.revert_snapshot(snapshot); });
      if (!st.ok()) {
        if (done == 0) {
          return st.error().with_context(what + ": on " + v.replica_name(r) + ", nothing reverted");
        }
        failed = st.error().with_context(what + ": on " + v.replica_name(r));
        break;
      }
      done |= bit(r);
    }
    // The reverted replicas start a new generation whose bitmap base is
    // the revert: a replica that was out (or failed to revert) holds data
    // the bitmaps do not describe and rebuilds fully when it returns.
    const uint64_t g = v.new_generation();
    std::vector<uint64_t> members;  // the in-sync set at g: the reverted replicas
    for (unsigned r = 0; r < v.nreplicas; ++r) {
      if ((done & bit(r)) != 0) {
        Result<ReplicaMeta> m = v.read_meta(r);
        if (m.ok()) {
          members.push_back(m->replica_id);
        }
      }
    }
    const InSyncSet set = make_in_sync_set(members);
    for (unsigned r = 0; r < v.nreplicas; ++r) {
      if ((done & bit(r)) == 0) {
        continue;
      }
      Status st = v.on_store(r, [&](ReplicaStore& s) -> Status {
        ReplicaMeta m = s.meta();
        advance_generation(m, g, set);
        UBLKVOL_TRY(s.write_meta(m));
        return s.clear_dirty();  // bitmap_base = g; nothing in flight, all durable
      });
      if (!st.ok() && failed.ok()) {
        failed = st.error().with_context(what + ": new generation on " + v.replica_name(r));
      }
    }
    {
      MutexLock lock(v.mutex);
      v.generation = g;
    }
    if (!failed.ok()) {
      // Replicas that did not revert leave the write set (they rebuild from
      // the reverted ones); the volume never serves two versions.
      for (unsigned r = 0; r < v.nreplicas; ++r) {
        if ((targets & bit(r)) != 0 && (done & bit(r)) == 0) {
          (void)v.report_failure(r, FailKind::kOperator, -EIO);
        }
      }
      v.event(-1, "reverted to snapshot " + snapshot + " on replica mask " + std::to_string(done) +
                      " only; the others were taken out: " + failed.error().message());
      return Error(failed.error().errno_value(),
                   failed.error().message() + " (reverted on replica mask " + std::to_string(done) +
                       "; the others were taken out of sync)");
    }
    v.event(-1, "reverted to snapshot " + snapshot + " on replica mask " + std::to_string(done));
    return ok_status();
  });
}

Result<uint32_t> ReplicatedVolume::clone_snapshot(const std::string& snapshot,
                                                  const std::string& clone) {
  Impl& v = *impl_;
  MutexLock control_lock(v.control_mutex);
  MutexLock membership_lock(v.membership_mutex);  // bindings stay put
  MutexLock meta_lock(v.meta_mutex);
  const std::string what =
      "volume " + v.options.name + ": clone " + clone + " of snapshot " + snapshot;
  UBLKVOL_TRY(v.refuse_while_rebuilding(what));
  const uint32_t targets = v.mask_of(ReplicaState::kInSync);
  if (targets == 0) {
    return Error(EIO, what + ": no in-sync replica to clone from");
  }
  UBLKVOL_TRY(v.refuse_if_lacking(snapshot, targets, what));
  // One new volume: its own id, one generation shared by every replica of
  // the clone, empty bitmaps relative to it (snapshots are immutable, so
  // every replica's snapshot holds the same bytes - create_snapshot took
  // them at one point).
  ReplicaMeta meta;
  meta.fresh = false;
  meta.volume_uuid = v.new_generation();
  meta.generation = v.new_generation();
  meta.bitmap_base = meta.generation;
  // Each clone replica gets its own id; all of them are in sync at the
  // clone's first generation.
  std::array<uint64_t, kMaxReplicas> ids{};
  std::vector<uint64_t> members;
  for (unsigned r = 0; r < v.nreplicas; ++r) {
    if ((targets & bit(r)) != 0) {
      ids[r] = v.new_generation();
      members.push_back(ids[r]);
    }
  }
  meta.in_sync = make_in_sync_set(members);
  uint32_t done = 0;
  for (unsigned r = 0; r < v.nreplicas; ++r) {
    if ((targets & bit(r)) == 0) {
      continue;
    }
    ReplicaMeta replica_meta = meta;
    replica_meta.replica_id = ids[r];
    Status st = v.on_store(r, [&](ReplicaStore& s) {
      Status made = s.clone_snapshot(snapshot, clone, replica_meta);
      if (!made.ok()) {
        (void)s.delete_clone(clone);  // whatever part of it was made
      }
      return made;
    });
    if (!st.ok()) {
      v.undo_on(done, [&](ReplicaStore& s) { return s.delete_clone(clone); });
      return st.error().with_context(what + ": on " + v.replica_name(r) +
                                     " (the clones made on the others were deleted)");
    }
    done |= bit(r);
  }
  v.event(-1, "snapshot " + snapshot + " cloned to " + clone + " on replica mask " +
                  std::to_string(done));
  return done;
}

}  // namespace ublkvol::engine
