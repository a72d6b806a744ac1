// backup.restore with `snapshot`: the backup becomes a new snapshot of an
// existing volume (docs/control-protocol.md, docs/backup-format.md "Restore
// as a snapshot"); the job is backup_restore_snapshot.cpp.
#include <algorithm>
#include <cerrno>
#include <spdlog/spdlog.h>

#include "ublkvol/backup/repository.h"

#include "handlers.h"

namespace ublkvol::daemon {

Result<Json> restore_as_snapshot(Registry& r, BackupJobSpec spec) {
  spec.kind = BackupJobKind::kRestore;
  UBLKVOL_ASSIGN_OR_RETURN(auto target, backup::open_target(spec.target, spec.s3));
  backup::Repository repo(*target);
  UBLKVOL_ASSIGN_OR_RETURN(const backup::Manifest manifest, repo.get_manifest(spec.name));
  UBLKVOL_ASSIGN_OR_RETURN(VolumeEntry * v, r.open_volume_named(spec.volume));
  if (manifest.volume_size != v->size_bytes) {
    return invalid("backup " + named(spec.name) + " is " + std::to_string(manifest.volume_size) +
                   " bytes, volume " + named(spec.volume) + " is " + std::to_string(v->size_bytes) +
                   " bytes: a snapshot has its volume's size (restore into a new volume instead)");
  }
  UBLKVOL_ASSIGN_OR_RETURN(const std::vector<std::string> snapshots, r.list_snapshots(*v));
  if (std::find(snapshots.begin(), snapshots.end(), spec.snapshot) != snapshots.end()) {
    return Error(
        EEXIST, "volume " + named(spec.volume) + " already has a snapshot " + named(spec.snapshot));
  }
  // Every replica gets the snapshot, as snapshot.create does: each must be a
  // local replica in sync on an online store (a rebuilding one would finish
  // without it; a remote one has no store here to write).
  if (!v->missing_stores.empty()) {
    return Error(EIO, "volume " + named(spec.volume) + ": replica store(s) " +
                          list_names(v->missing_stores) + " not available");
  }
  const engine::VolumeStatus status = v->engine->status();
  spec.stores.clear();
  for (size_t i = 0; i < v->slots.size(); ++i) {
    const ReplicaSlot& slot = v->slots[i];
    if (!slot.used()) {
      continue;
    }
    const std::string which = "replica " + std::to_string(i) + " of volume " + named(spec.volume);
    if (slot.store == nullptr) {
      return Error(ENOTSUP,
                   which + " is remote: a restore as a snapshot writes local replicas only");
    }
    if (!slot.store->online()) {
      return Error(
          EIO, which + ": store " + named(slot.store->name) + " is failed: " + slot.store->error);
    }
    if (i >= status.replicas.size() || status.replicas[i].state != engine::ReplicaState::kInSync) {
      return Error(EBUSY, which + " (store " + named(slot.store->name) +
                              ") is not in sync: restore once it is");
    }
    spec.stores.push_back(slot.store->name);
  }
  if (spec.stores.empty()) {
    return Error(EIO, "volume " + named(spec.volume) + " has no replica to restore into");
  }
  UBLKVOL_TRY(
      check_restore_space(r, spec.stores, spec.name, manifest.data_blocks() * backup::kBlockBytes));
  // The state file first: across crashes the job resumes (or, sealing,
  // finishes) from it.
  UBLKVOL_TRY(r.backup_jobs.record_restore(spec));
  if (auto started = start_restore_snapshot_job(r, spec, /*resumed=*/false); !started) {
    r.backup_jobs.forget_restore(spec.volume);
    return started.error();
  }
  spdlog::info("restore of backup '{}' on {} as snapshot '{}' of volume '{}' started ({} chunks)",
               spec.name, spec.target, spec.snapshot, spec.volume, manifest.entries.size());
  return Json{{"volume", spec.volume},
              {"snapshot", spec.snapshot},
              {"name", spec.name},
              {"target", spec.target},
              {"state", "running"},
              {"chunks", manifest.entries.size()},
              {"data_bytes", manifest.data_blocks() * backup::kBlockBytes}};
}

Status check_restore_space(Registry& r, const std::vector<std::string>& stores,
                           const std::string& backup, uint64_t data_bytes) {
  for (const std::string& name : stores) {
    StoreEntry* s = r.find_store(name);
    if (s == nullptr || !s->online()) {
      continue;  // refused later, naming the store
    }
    dbs::StoreStats stats;
    UBLKVOL_TRY(s->thread->call([&] {
      stats = s->store->stats();
      return ok_status();
    }));
    const uint64_t free_bytes = stats.free_extents * stats.extent_bytes;
    if (free_bytes < data_bytes) {
      return Error(ENOSPC, "store " + named(name) + " has " + std::to_string(free_bytes >> 20U) +
                               " MiB free; backup " + named(backup) + " holds " +
                               std::to_string((data_bytes + (1U << 20U) - 1) >> 20U) +
                               " MiB of data, written to each replica's store: free space there "
                               "(delete snapshots or volumes) or restore to other stores");
    }
  }
  return ok_status();
}

Status start_restore_snapshot_job(Registry& r, const BackupJobSpec& spec, bool resumed) {
  // The stores the job began with (a replica added since lacks the
  // snapshot, as it lacks every snapshot taken before it joined).
  std::vector<RestoreReplica> replicas;
  for (const std::string& name : spec.stores) {
    StoreEntry* s = r.find_store(name);
    if (s == nullptr || !s->online()) {
      return Error(EIO, "store " + named(name) + " is not available" +
                            (s != nullptr ? ": " + s->error : std::string()));
    }
    replicas.push_back({s->name, s->store.get(), s->thread.get()});
  }
  return r.backup_jobs.start_restore(spec, std::move(replicas), resumed);
}

}  // namespace ublkvol::daemon
