// resume_backup_jobs (backup_jobs.h): at daemon start-up, the backup,
// restore and delete jobs a stop or a crash interrupted run again from their
// state files.
#include <spdlog/spdlog.h>

#include "backup_jobs.h"
#include "handlers.h"
#include "registry.h"

namespace ublkvol::daemon {

namespace {

void resume_backup(Registry& r, const BackupJobSpec& spec) {
  StoreEntry* s = r.find_store(spec.store);
  if (s == nullptr || !s->online()) {
    const std::string why = "store '" + spec.store + "' is not available: not resumed";
    spdlog::error("backup '{}' to {}: {}", spec.name, spec.target, why);
    r.backup_jobs.add_waiting(spec, why);
    return;
  }
  if (auto started = r.backup_jobs.start(spec, *s->store, *s->thread, /*resumed=*/true); !started) {
    spdlog::error("backup '{}' to {}: cannot resume: {}", spec.name, spec.target,
                  started.error().to_string());
    r.backup_jobs.add_waiting(spec, started.error().to_string());
    return;
  }
  spdlog::info("backup '{}' of volume '{}' snapshot '{}' to {} resumed (replica on store '{}')",
               spec.name, spec.volume, spec.snapshot, spec.target, spec.store);
}

void resume_restore(Registry& r, const BackupJobSpec& spec) {
  VolumeEntry* v = r.find_volume(spec.volume);
  if (v == nullptr) {
    // Killed after the state file was written and before the volume was
    // created (or its volume.create intent was undone): nothing restored.
    // A restore as a snapshot: its volume is gone (its staging volumes are
    // orphans now, for store gc).
    spdlog::error(
        "restore of backup '{}' into volume '{}': the volume {}; dropped (start the restore "
        "again)",
        spec.name, spec.volume, spec.snapshot.empty() ? "was never created" : "does not exist");
    r.backup_jobs.forget_restore(spec.volume);
    return;
  }
  // A restore as a snapshot keeps its state file after a failure only while
  // sealing: resumed, it finishes the sealing.
  if (!spec.failed.empty() && spec.snapshot.empty()) {
    r.backup_jobs.add_waiting(spec, spec.failed + " (delete the volume)", "failed");
    return;
  }
  if (!v->missing_stores.empty()) {
    const std::string why =
        "replica store(s) " + list_names(v->missing_stores) + " not available: not resumed";
    spdlog::error("restore of backup '{}' into volume '{}': {}", spec.name, spec.volume, why);
    r.backup_jobs.add_waiting(spec, why);
    return;
  }
  if (auto started = start_restore_job(r, *v, spec, /*resumed=*/true); !started) {
    spdlog::error("restore of backup '{}' into volume '{}': cannot resume: {}", spec.name,
                  spec.volume, started.error().to_string());
    r.backup_jobs.add_waiting(spec, started.error().to_string());
    return;
  }
  spdlog::info("restore of backup '{}' on {} into volume '{}' resumed at volume offset {}",
               spec.name, spec.target, spec.volume, spec.resume_offset);
}

void resume_delete(Registry& r, const BackupJobSpec& spec) {
  if (auto started = r.backup_jobs.start_delete(spec, /*resumed=*/true); !started) {
    spdlog::error("delete of backup '{}' on {}: cannot resume: {}", spec.name, spec.target,
                  started.error().to_string());
    r.backup_jobs.add_waiting(spec, started.error().to_string());
    return;
  }
  spdlog::info("delete of backup '{}' on {} resumed", spec.name, spec.target);
}

}  // namespace

void resume_backup_jobs(Registry& r) {
  for (const auto& spec : r.backup_jobs.persisted()) {
    switch (spec.kind) {
      case BackupJobKind::kBackup:
        resume_backup(r, spec);
        break;
      case BackupJobKind::kRestore:
        resume_restore(r, spec);
        break;
      case BackupJobKind::kDelete:
        resume_delete(r, spec);
        break;
    }
  }
}

}  // namespace ublkvol::daemon
