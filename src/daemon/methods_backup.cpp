// backup.create / list / show / verify / delete (docs/control-protocol.md,
// docs/backup-format.md). create, restore and delete start background jobs
// (backup_jobs.h); list, show and verify work on the target on the control
// thread.
#include <algorithm>
#include <cerrno>
#include <optional>
#include <spdlog/spdlog.h>

#include "ublkvol/backup/gc.h"
#include "ublkvol/backup/repository.h"
#include "ublkvol/backup/restore.h"

#include "handlers.h"
#include "store_paths.h"

namespace ublkvol::daemon {
namespace {

Json manifest_json(const backup::Manifest& m) {
  return {{"name", m.name},
          {"volume", m.volume},
          {"snapshot", m.snapshot},
          {"parent", m.parent},
          {"size", m.volume_size},
          {"chunks", m.entries.size()},
          {"data_bytes", m.data_blocks() * backup::kBlockBytes},
          {"create_time", m.create_time},
          {"complete", m.complete}};
}

Json jobs_of(Registry& r, const std::string& target, const std::string& name = "") {
  Json out = Json::array();
  for (const auto& job : r.backup_jobs.list()) {
    if (job["target"] == target && (name.empty() || job["name"] == name)) {
      out.push_back(job);
    }
  }
  return out;
}

// The daemon (root) reads, writes and deletes files under a target: only
// root may name one (store.add's store_dirs rule has no equivalent here yet).
Status check_may_use_targets(const Params& p) {
  if (!may_name_any_path(p.peer())) {
    return Error(EACCES, "backup targets may be named by root only (uid " +
                             std::to_string(p.peer().uid) + ")");
  }
  return ok_status();
}

// How to reach an s3:// target: s3_endpoint, s3_region, s3_credentials (a
// file the daemon reads: an absolute path).
Result<backup::S3Options> parse_s3(Params& p) {
  backup::S3Options s3;
  UBLKVOL_ASSIGN_OR_RETURN(auto endpoint, p.optional_string("s3_endpoint"));
  UBLKVOL_ASSIGN_OR_RETURN(auto region, p.optional_string("s3_region"));
  UBLKVOL_ASSIGN_OR_RETURN(auto credentials, p.optional_string("s3_credentials"));
  s3.endpoint = endpoint.value_or("");
  s3.region = region.value_or("");
  s3.credentials_file = credentials.value_or("");
  if (!s3.credentials_file.empty() && s3.credentials_file.front() != '/') {
    return Error(EINVAL, "s3_credentials '" + s3.credentials_file + "' is not an absolute path");
  }
  return s3;
}

struct TargetArgs {
  std::string target;
  std::string name;
  backup::S3Options s3;
};

Result<TargetArgs> parse_target(Params& p, bool with_name) {
  TargetArgs a;
  UBLKVOL_ASSIGN_OR_RETURN(a.target, p.string("target"));
  UBLKVOL_ASSIGN_OR_RETURN(a.s3, parse_s3(p));
  if (with_name) {
    UBLKVOL_ASSIGN_OR_RETURN(a.name, p.name("name"));
  }
  UBLKVOL_TRY(p.finish());
  UBLKVOL_TRY(check_may_use_targets(p));
  return a;
}

}  // namespace

Result<Json> backup_create(Registry& r, Params& p) {
  BackupJobSpec spec;
  UBLKVOL_ASSIGN_OR_RETURN(spec.volume, p.name("volume"));
  UBLKVOL_ASSIGN_OR_RETURN(spec.snapshot, p.name("snapshot"));
  UBLKVOL_ASSIGN_OR_RETURN(spec.target, p.string("target"));
  UBLKVOL_ASSIGN_OR_RETURN(auto name, p.optional_name("name"));
  UBLKVOL_ASSIGN_OR_RETURN(auto parent, p.optional_name("parent"));
  UBLKVOL_ASSIGN_OR_RETURN(auto rate, p.optional_uint("rate"));
  UBLKVOL_ASSIGN_OR_RETURN(spec.s3, parse_s3(p));
  UBLKVOL_TRY(p.finish());
  UBLKVOL_TRY(check_may_use_targets(p));
  spec.name = name.value_or(spec.volume + "-" + spec.snapshot);
  spec.parent = parent.value_or("");
  // MiB/s on the wire, as replica.verify's rate.
  spec.rate = rate.value_or(0) << 20U;
  UBLKVOL_TRY(backup::check_backup_name(spec.name, "backup name"));
  // Refuse a target that does not open now rather than in the job.
  UBLKVOL_ASSIGN_OR_RETURN(auto target, backup::open_target(spec.target, spec.s3));
  UBLKVOL_ASSIGN_OR_RETURN(VolumeEntry * v, r.open_volume_named(spec.volume));
  UBLKVOL_ASSIGN_OR_RETURN(const std::vector<std::string> snapshots, r.list_snapshots(*v));
  if (std::find(snapshots.begin(), snapshots.end(), spec.snapshot) == snapshots.end()) {
    return Error(ENOENT,
                 "volume " + named(spec.volume) + " has no snapshot " + named(spec.snapshot));
  }
  // One healthy replica is read: the first in sync.
  const engine::VolumeStatus status = v->engine->status();
  for (size_t i = 0; i < status.replicas.size() && i < v->slots.size(); ++i) {
    StoreEntry* s = v->slots[i].store;
    if (status.replicas[i].state != engine::ReplicaState::kInSync || s == nullptr || !s->online()) {
      continue;
    }
    spec.store = s->name;
    UBLKVOL_TRY(r.backup_jobs.start(spec, *s->store, *s->thread));
    spdlog::info("backup '{}' of volume '{}' snapshot '{}' to {} started (replica on store '{}')",
                 spec.name, spec.volume, spec.snapshot, spec.target, spec.store);
    return Json{{"name", spec.name}, {"target", spec.target}, {"store", spec.store}};
  }
  return Error(EIO, "volume " + named(spec.volume) + " has no in-sync replica to back up from");
}

Result<Json> backup_list(Registry& r, Params& p) {
  UBLKVOL_ASSIGN_OR_RETURN(const TargetArgs a, parse_target(p, false));
  UBLKVOL_ASSIGN_OR_RETURN(auto target, backup::open_target(a.target, a.s3));
  backup::Repository repo(*target);
  Json backups = Json::array();
  UBLKVOL_ASSIGN_OR_RETURN(const auto names, repo.list_backups());
  for (const auto& name : names) {
    auto m = repo.get_manifest(name);
    backups.push_back(m ? manifest_json(*m)
                        : Json{{"name", name}, {"error", m.error().to_string()}});
  }
  UBLKVOL_ASSIGN_OR_RETURN(const auto partial, repo.list_backups(/*partial=*/true));
  return Json{{"backups", backups}, {"partial", partial}, {"jobs", jobs_of(r, a.target)}};
}

Result<Json> backup_show(Registry& r, Params& p) {
  UBLKVOL_ASSIGN_OR_RETURN(const TargetArgs a, parse_target(p, true));
  UBLKVOL_ASSIGN_OR_RETURN(auto target, backup::open_target(a.target, a.s3));
  backup::Repository repo(*target);
  Json out{{"name", a.name}, {"jobs", jobs_of(r, a.target, a.name)}};
  auto m = repo.get_manifest(a.name);
  if (m.ok()) {
    out["backup"] = manifest_json(*m);
  } else if (m.error().kind() != ErrorKind::kNotFound || out["jobs"].empty()) {
    return m.error();
  }
  return out;
}

Result<Json> backup_verify(Registry& /*r*/, Params& p) {
  UBLKVOL_ASSIGN_OR_RETURN(const TargetArgs a, parse_target(p, true));
  UBLKVOL_ASSIGN_OR_RETURN(auto target, backup::open_target(a.target, a.s3));
  backup::Repository repo(*target);
  UBLKVOL_ASSIGN_OR_RETURN(auto lock, target->lock(/*exclusive=*/false));
  UBLKVOL_ASSIGN_OR_RETURN(const auto problems, repo.verify(a.name));
  return Json{{"name", a.name}, {"problems", problems}};
}

Result<Json> backup_delete(Registry& r, Params& p) {
  BackupJobSpec spec;
  spec.kind = BackupJobKind::kDelete;
  UBLKVOL_ASSIGN_OR_RETURN(spec.target, p.string("target"));
  UBLKVOL_ASSIGN_OR_RETURN(spec.name, p.name("name"));
  // Chunk objects removed per second (object stores limit requests).
  UBLKVOL_ASSIGN_OR_RETURN(const auto rate, p.optional_uint("rate"));
  UBLKVOL_ASSIGN_OR_RETURN(spec.s3, parse_s3(p));
  UBLKVOL_TRY(p.finish());
  UBLKVOL_TRY(check_may_use_targets(p));
  spec.rate = rate.value_or(0);
  UBLKVOL_TRY(r.backup_jobs.may_delete(spec.target, spec.name));
  UBLKVOL_ASSIGN_OR_RETURN(auto target, backup::open_target(spec.target, spec.s3));
  // Finished jobs of the backup (and their state files) go, also when there
  // is no backup left to delete.
  r.backup_jobs.forget(spec.target, spec.name);
  UBLKVOL_ASSIGN_OR_RETURN(const bool has_manifest,
                           target->exists(backup::Repository::manifest_key(spec.name)));
  UBLKVOL_ASSIGN_OR_RETURN(const bool has_partial,
                           target->exists(backup::Repository::partial_key(spec.name)));
  if (!has_manifest && !has_partial) {
    return Error(ENOENT, target->describe() + ": no backup " + named(spec.name));
  }
  UBLKVOL_TRY(r.backup_jobs.start_delete(spec));
  spdlog::info("delete of backup '{}' on {} started", spec.name, spec.target);
  return Json{{"name", spec.name}, {"target", spec.target}, {"state", "running"}};
}

Result<Json> backup_restore(Registry& r, Params& p) {
  BackupJobSpec spec;
  spec.kind = BackupJobKind::kRestore;
  UBLKVOL_ASSIGN_OR_RETURN(spec.target, p.string("target"));
  UBLKVOL_ASSIGN_OR_RETURN(spec.name, p.name("name"));
  UBLKVOL_ASSIGN_OR_RETURN(spec.volume, p.name("volume"));
  // 'stores' is optional in the schema (not with 'snapshot'). Present? A
  // string reader refuses an array: refused or a value means it is there.
  const auto as_string = p.optional_string("stores");
  std::optional<std::vector<std::string>> stores;
  if (!as_string.ok() || as_string->has_value()) {
    UBLKVOL_ASSIGN_OR_RETURN(stores, p.name_list("stores", 1, engine::kMaxReplicas));
  }
  UBLKVOL_ASSIGN_OR_RETURN(const auto min_replicas, p.optional_uint("min_replicas"));
  UBLKVOL_ASSIGN_OR_RETURN(auto snapshot, p.optional_name("snapshot"));
  UBLKVOL_ASSIGN_OR_RETURN(const auto rate, p.optional_uint("rate"));
  UBLKVOL_ASSIGN_OR_RETURN(spec.s3, parse_s3(p));
  UBLKVOL_TRY(p.finish());
  UBLKVOL_TRY(check_may_use_targets(p));
  spec.rate = rate.value_or(0) << 20U;  // MiB/s written, as backup.create's rate
  if (snapshot) {
    // Into the existing volume's replicas (methods_restore_snapshot.cpp).
    if (stores || min_replicas) {
      return invalid(
          "'stores' and 'min_replicas' are for a restore into a new volume; with 'snapshot' "
          "the backup goes to the replicas of volume " +
          named(spec.volume));
    }
    spec.snapshot = *snapshot;
    return restore_as_snapshot(r, spec);
  }
  if (!stores) {
    return invalid(
        "missing field 'stores' (array of names): the stores of the new volume's replicas (or "
        "'snapshot' to restore as a new snapshot of the existing volume)");
  }
  spec.stores = std::move(*stores);
  UBLKVOL_ASSIGN_OR_RETURN(auto target, backup::open_target(spec.target, spec.s3));
  backup::Repository repo(*target);
  UBLKVOL_ASSIGN_OR_RETURN(const backup::Manifest manifest, repo.get_manifest(spec.name));
  UBLKVOL_TRY(r.check_new_volume_name(spec.volume));
  UBLKVOL_TRY(
      check_restore_space(r, spec.stores, spec.name, manifest.data_blocks() * backup::kBlockBytes));
  // The job's state file first: from here on, across crashes, the volume
  // is not usable until the restore is done (BackupJobs::restoring).
  UBLKVOL_TRY(r.backup_jobs.record_restore(spec));
  // The new volume, as volume.create makes it (same checks, intent, state).
  Json create{{"name", spec.volume}, {"size", manifest.volume_size}, {"stores", spec.stores}};
  if (min_replicas) {
    create["min_replicas"] = *min_replicas;
  }
  Params create_params(create, p.peer());
  if (auto created = volume_create(r, create_params); !created) {
    r.backup_jobs.forget_restore(spec.volume);
    return created.error();
  }
  UBLKVOL_ASSIGN_OR_RETURN(VolumeEntry * v, r.volume_named(spec.volume));
  UBLKVOL_TRY(start_restore_job(r, *v, spec, /*resumed=*/false));
  spdlog::info("restore of backup '{}' on {} into new volume '{}' started ({} chunks)", spec.name,
               spec.target, spec.volume, manifest.entries.size());
  return Json{{"volume", spec.volume},
              {"name", spec.name},
              {"target", spec.target},
              {"state", "running"},
              {"chunks", manifest.entries.size()},
              {"data_bytes", manifest.data_blocks() * backup::kBlockBytes}};
}

Status start_restore_job(Registry& r, VolumeEntry& v, const BackupJobSpec& spec, bool resumed) {
  if (!spec.snapshot.empty()) {
    return start_restore_snapshot_job(r, spec, resumed);
  }
  std::vector<RestoreReplica> replicas;
  for (auto& slot : v.slots) {
    if (slot.store == nullptr) {
      continue;
    }
    if (!slot.store->online()) {
      return Error(EIO, "store " + named(slot.store->name) + " is failed: " + slot.store->error);
    }
    replicas.push_back({slot.store->name, slot.store->store.get(), slot.store->thread.get()});
  }
  if (replicas.empty()) {
    return Error(EIO, "volume " + named(v.name) + " has no replica to restore into");
  }
  return r.backup_jobs.start_restore(spec, std::move(replicas), resumed);
}

}  // namespace ublkvol::daemon
