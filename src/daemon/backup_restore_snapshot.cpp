// A restore as a new snapshot of an existing volume (backup.restore with
// `snapshot`; docs/backup-format.md "Restore as a snapshot"): the job fills
// a staging DBS volume "<volume>~restoring" of the volume's size on every
// replica's store (through each store's thread, beside the volume's live
// I/O), commits, and then turns each staging volume into the snapshot with
// dbs::Store::adopt_as_snapshot - one commit per store, no data copied. The
// volume's head is never written: it stays exposed and in use throughout.
//
// Crash safety and resume: the state file (backup_jobs.h) records the
// offset every replica has committed. Until the staging volumes are complete
// no snapshot exists anywhere; a resumed job writes on from the offset. Once
// the offset is the volume size, a replica without the staging volume but
// with the snapshot was sealed before the interruption, and the others are
// sealed now. A failure before the sealing deletes the staging volumes and
// the job (nothing is left); a failure while sealing keeps the state file,
// and the next daemon start finishes the sealing.
#include <algorithm>
#include <cerrno>
#include <spdlog/spdlog.h>

#include "ublkvol/backup/repository.h"
#include "ublkvol/backup/restore.h"

#include "backup_jobs.h"

namespace ublkvol::daemon {

namespace {

// One replica of the restore: its store, the volume and the staging volume.
struct StagedReplica {
  const RestoreReplica* replica = nullptr;
  dbs::VolumeId volume = 0;
  dbs::VolumeId staging = 0;
  bool sealed = false;  // the snapshot is there already (sealed before a restart)
};

// Writes the same bytes into the staging volume of every replica not sealed.
class StagingWriter final : public backup::VolumeWriter {
 public:
  explicit StagingWriter(const std::vector<StagedReplica>& replicas) : replicas_(replicas) {}
  Status write(uint64_t offset, std::span<const std::byte> data) override {
    for (const StagedReplica& s : replicas_) {
      if (s.sealed) {
        continue;
      }
      const RestoreReplica& r = *s.replica;
      if (auto written = r.executor->call([&] { return r.store->write(s.staging, offset, data); });
          !written) {
        return written.error().with_context("store '" + r.store_name + "'");
      }
    }
    return ok_status();
  }
  Status commit() {
    for (const StagedReplica& s : replicas_) {
      if (s.sealed) {
        continue;
      }
      const RestoreReplica& r = *s.replica;
      if (auto committed = r.executor->call([&] { return r.store->commit(); }); !committed) {
        return committed.error().with_context("store '" + r.store_name + "': commit");
      }
    }
    return ok_status();
  }

 private:
  const std::vector<StagedReplica>& replicas_;
};

}  // namespace

std::string restore_staging_name(const std::string& volume) { return volume + "~restoring"; }

std::optional<std::string> BackupJobs::restoring_snapshot(const std::string& volume) const {
  for (const auto& job : jobs_) {
    if (job->spec.kind != BackupJobKind::kRestore || job->spec.volume != volume ||
        job->spec.snapshot.empty()) {
      continue;
    }
    std::lock_guard lock(job->mutex);
    if (job->state == "running" || job->state == "waiting" || job->state == "stopped") {
      return job->spec.snapshot;
    }
  }
  return std::nullopt;
}

std::set<std::string> BackupJobs::staging_volumes() const {
  std::set<std::string> names;
  for (const auto& job : jobs_) {
    if (job->spec.kind != BackupJobKind::kRestore || job->spec.snapshot.empty()) {
      continue;
    }
    std::lock_guard lock(job->mutex);
    if (job->state != "done") {
      names.insert(restore_staging_name(job->spec.volume));
    }
  }
  return names;
}

void BackupJobs::run_restore_snapshot(Job& job, const std::vector<RestoreReplica>& replicas,
                                      const std::stop_token& stop) {
  // The thread's own copy: its resume_offset moves with each checkpoint.
  BackupJobSpec spec = job.spec;
  const std::string staging_name = restore_staging_name(spec.volume);
  std::vector<StagedReplica> staged;
  bool sealing = false;
  auto failed = [&](const Error& error) {
    spec.failed = error.to_string();
    if (sealing) {
      // Every staging volume is complete: the next start seals the rest.
      if (auto saved = save_state(spec); !saved) {
        spdlog::error("restore of backup '{}' as snapshot '{}' of volume '{}': {}", spec.name,
                      spec.snapshot, spec.volume, saved.error().to_string());
      }
    } else {
      // Nothing is a snapshot yet: the staging volumes and the job go.
      for (const RestoreReplica& r : replicas) {
        (void)r.executor->call([&]() -> Status {
          if (auto id = r.store->find_volume(staging_name); id.ok()) {
            return r.store->delete_volume(*id);
          }
          return ok_status();
        });
      }
      remove_state(spec);
    }
    spdlog::error("restore of backup '{}' as snapshot '{}' of volume '{}' failed: {}", spec.name,
                  spec.snapshot, spec.volume, spec.failed);
    finish(job, "failed", spec.failed);
  };
  auto target = backup::open_target(spec.target, spec.s3);
  if (!target) {
    failed(target.error());
    return;
  }
  backup::Repository repo(**target);
  auto manifest = repo.get_manifest(spec.name);
  if (!manifest) {
    failed(manifest.error());
    return;
  }
  const uint64_t size = manifest->volume_size;
  // Complete on every replica (recorded before any sealing): from here on a
  // failure keeps the job, so that the next start seals the rest.
  sealing = spec.resume_offset >= size;
  // Find (or make) the staging volume on every replica's store.
  bool restart = false;
  for (const RestoreReplica& r : replicas) {
    StagedReplica s;
    s.replica = &r;
    Status found = r.executor->call([&]() -> Status {
      dbs::Store& store = *r.store;
      UBLKVOL_ASSIGN_OR_RETURN(s.volume, store.find_volume(spec.volume));
      UBLKVOL_ASSIGN_OR_RETURN(const dbs::VolumeInfo info, store.volume_info(s.volume));
      if (info.size_bytes != size) {
        return Error(EINVAL, "backup '" + spec.name + "' is " + std::to_string(size) +
                                 " bytes, volume '" + spec.volume + "' is " +
                                 std::to_string(info.size_bytes) + " bytes");
      }
      auto staging = store.find_volume(staging_name);
      const bool has_snapshot = store.find_snapshot(s.volume, spec.snapshot).ok();
      if (has_snapshot) {
        if (!staging.ok() && spec.resume_offset >= size) {
          s.sealed = true;  // sealed before an interruption
          return ok_status();
        }
        return Error(EEXIST,
                     "volume '" + spec.volume + "' already has a snapshot '" + spec.snapshot + "'");
      }
      if (staging.ok() && spec.resume_offset == 0) {
        // Left by an earlier restore: holes are not written, so the fill
        // must start from an empty volume.
        UBLKVOL_TRY(store.delete_volume(*staging));
        staging = Error(ENOENT, "deleted");
      }
      if (!staging.ok()) {
        restart = restart || spec.resume_offset > 0;  // lost (store gc): write it all again
        UBLKVOL_ASSIGN_OR_RETURN(s.staging, store.create_volume(staging_name, size));
        return ok_status();
      }
      s.staging = *staging;
      return ok_status();
    });
    if (!found) {
      failed(found.error().with_context("store '" + r.store_name + "'"));
      return;
    }
    staged.push_back(s);
  }
  if (restart) {
    spec.resume_offset = 0;
  }
  StagingWriter writer(staged);
  const backup::RestoreOptions options =
      restore_job_options(job, spec, stop, [&writer] { return writer.commit(); });
  auto done = backup::run_restore(repo, spec.name, writer, options);
  Status filled = done.ok() ? writer.commit() : Status(done.error());
  if (filled.ok() && spec.resume_offset < size) {
    spec.resume_offset = size;  // every staging volume is complete and committed
    filled = save_state(spec);
  }
  if (!filled) {
    if (filled.error().errno_value() == ECANCELED) {
      finish(job, "stopped", filled.error().message());  // resumed at the next start
    } else {
      failed(filled.error());
    }
    return;
  }
  sealing = true;
  for (StagedReplica& s : staged) {
    if (s.sealed) {
      continue;
    }
    const RestoreReplica& r = *s.replica;
    Status sealed = r.executor->call([&]() -> Status {
      UBLKVOL_ASSIGN_OR_RETURN(const dbs::SnapshotId id,
                               r.store->adopt_as_snapshot(s.staging, s.volume, spec.snapshot));
      (void)id;
      return ok_status();
    });
    if (!sealed) {
      failed(sealed.error().with_context("store '" + r.store_name + "': sealing the snapshot"));
      return;
    }
    s.sealed = true;
  }
  spdlog::info("backup '{}' on {} restored as snapshot '{}' of volume '{}' ({} chunks)", spec.name,
               spec.target, spec.snapshot, spec.volume, manifest->entries.size());
  remove_state(spec);
  finish(job, "done", "");
}

}  // namespace ublkvol::daemon
