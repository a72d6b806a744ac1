// BackupJobs: the daemon's backup, restore and delete jobs (backup.create,
// backup.restore, backup.delete), one thread each, off the control thread.
//
// A backup reads its snapshot from one store, a restore writes every
// replica of the volume it restores into, each through that store's thread
// (StoreExecutor::call per chunk, so the store keeps serving I/O in between);
// a delete removes the backup's manifest and collects the chunks no other
// backup needs (src/backup, docs/backup-format.md). The event loop starts
// jobs and reads their progress; stop_all() (daemon shutdown) and
// stop_using() (before a store is removed) stop them.
//
// Every job has a state file in <state_dir>/backup-jobs/jobs/, written
// (atomically: temporary, fsync, rename) before the job starts and removed
// when it is done. A job interrupted by a stop or a crash runs again at the
// next start (resume_backup_jobs):
//   - a backup continues after its partial manifest;
//   - a restore continues after its last checkpoint (resume_offset: every
//     chunk below it was committed on every replica before the offset was
//     saved); chunks above it are written again, with the same bytes;
//   - a delete removes the manifest if it is still there and collects
//     garbage again: the live set is recomputed from the manifests left.
// A restore's state file is what keeps its volume unusable (restoring()):
// it is written before the volume is created and removed only after the
// last chunk is committed on every replica; a failed restore keeps it (the
// volume stays blocked until it is deleted, volume.delete drops the job).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "ublkvol/backup/backup_job.h"
#include "ublkvol/backup/restore.h"
#include "ublkvol/backup/target.h"
#include "ublkvol/common/result.h"
#include "ublkvol/common/thread_annotations.h"
#include "ublkvol/daemon/protocol.h"
#include "ublkvol/dbs/store.h"
#include "ublkvol/engine/store_thread.h"

namespace ublkvol::daemon {

class Registry;

enum class BackupJobKind { kBackup, kRestore, kDelete };
const char* to_string(BackupJobKind kind);

struct BackupJobSpec {
  BackupJobKind kind = BackupJobKind::kBackup;
  std::string name;      // the backup
  std::string target;    // as the operator gave it (open_target)
  backup::S3Options s3;  // how to reach an s3:// target
  // backup: the volume read; restore: the (new) volume written.
  std::string volume;
  // backup: the snapshot read; restore: the new snapshot of the existing
  // volume `volume` the backup is restored as ("" = into a new volume;
  // backup_restore_snapshot.cpp).
  std::string snapshot;
  std::string parent;  // backup
  std::string store;   // backup: the store it reads from (by name)
  // restore: the stores of the volume's replicas.
  std::vector<std::string> stores;
  // backup, restore: bytes per second; delete: chunk objects removed per
  // second. 0 = unthrottled.
  uint64_t rate = 0;
  uint64_t resume_offset = 0;  // restore: the last checkpoint
  std::string failed;          // restore: why it failed ("" = not failed)
};

// A job's state file as JSON, and back (errors name the field).
Json backup_job_to_json(const BackupJobSpec& spec);
Result<BackupJobSpec> backup_job_from_json(const Json& json);

// A replica a restore writes: its store, reached through the store's thread.
struct RestoreReplica {
  std::string store_name;
  dbs::Store* store = nullptr;
  engine::StoreExecutor* executor = nullptr;
};

class BackupJobs {
 public:
  BackupJobs() = default;
  ~BackupJobs() { stop_all(); }
  BackupJobs(const BackupJobs&) = delete;
  BackupJobs& operator=(const BackupJobs&) = delete;

  // Where the job state files go (<state_dir>/backup-jobs); without it
  // (tests of the jobs alone) jobs are not persisted.
  Status persist_in(const std::string& state_dir);
  // The specs of the jobs whose state files are there (interrupted by a
  // stop or a crash), for resume_backup_jobs. A file that cannot be read is
  // skipped with an error in the log (and left for the operator).
  [[nodiscard]] std::vector<BackupJobSpec> persisted() const;

  // Starts a backup: `store`/`executor` must stay valid until
  // stop_using(spec.store) or stop_all() returned. EBUSY if a backup or a
  // delete of that name on that target runs. Writes the job's state file
  // first (refused if it cannot be written). `resumed`: started again at
  // daemon start-up (shown in list()).
  Status start(const BackupJobSpec& spec, dbs::Store& store, engine::StoreExecutor& executor,
               bool resumed = false);
  // Records a restore job (its state file) before its volume is created:
  // from here on the volume is restoring(). EBUSY while a delete of the
  // backup runs or a restore into the volume is known.
  Status record_restore(const BackupJobSpec& spec);
  // Starts the recorded restore into `replicas` (every replica of the
  // volume, which exists on each of their stores).
  Status start_restore(const BackupJobSpec& spec, std::vector<RestoreReplica> replicas,
                       bool resumed = false);
  // EBUSY while a backup, a restore or a delete of the backup runs.
  [[nodiscard]] Status may_delete(const std::string& target, const std::string& name) const;
  // Starts a delete (backup.delete) if may_delete().
  Status start_delete(const BackupJobSpec& spec, bool resumed = false);
  // A persisted job that cannot run now (its store is not available): listed
  // as "waiting" (or "failed" for a failed restore) with `why`; its state
  // file stays for the next start.
  void add_waiting(const BackupJobSpec& spec, const std::string& why,
                   const std::string& state = "waiting");
  // Every job (running and finished since start), as JSON for backup.list:
  // kind, name, target, volume, snapshot, parent, state (running / done /
  // failed / stopped / waiting), error, percent, bytes (read or written),
  // rate (bytes/s; chunks/s for a delete), eta_seconds, chunk counts.
  [[nodiscard]] Json list() const;
  // Why volume `volume` may not be used ("restoring from backup 'b' on T:
  // 37%"), or nothing: a restore into it (as a new volume) is recorded and
  // not done. A restore as a snapshot of it does not block the volume.
  [[nodiscard]] std::optional<std::string> restoring(const std::string& volume) const;
  // The restore as a snapshot of `volume` that is recorded and not done
  // (its snapshot name), or nothing.
  [[nodiscard]] std::optional<std::string> restoring_snapshot(const std::string& volume) const;
  // The DBS volumes restores as snapshots are filling (staging volumes,
  // restore_staging_name): not orphans while their job is recorded.
  [[nodiscard]] std::set<std::string> staging_volumes() const;
  // Stops and joins the jobs using `store`; a backup's state file goes (the
  // store is being removed: nothing to resume).
  void stop_using(const std::string& store);
  // The backup is being deleted: its finished or waiting backup and delete
  // jobs go from the list and their state files go (else the next start
  // would resume them). The caller has checked that no job of it runs.
  void forget(const std::string& target, const std::string& name);
  // The volume is being deleted: a restore into it is stopped, joined and
  // forgotten (state file included).
  void forget_restore(const std::string& volume);
  void stop_all();

 private:
  struct Progress {
    uint64_t chunks_total = 0;
    uint64_t chunks_done = 0;
    uint64_t bytes = 0;           // backup: read; restore: written
    uint64_t chunks_written = 0;  // backup
    uint64_t chunks_reused = 0;   // backup
    uint64_t chunks_skipped = 0;  // restore: below the checkpoint it resumed from
    uint64_t chunks_removed = 0;  // delete
  };
  struct Job {
    BackupJobSpec spec;
    bool resumed = false;
    std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
    mutable std::mutex mutex;
    Progress progress GUARDED_BY(mutex);
    std::string state GUARDED_BY(mutex) = "running";
    std::string error GUARDED_BY(mutex);
    std::jthread thread;  // last: joined before the rest goes
  };
  Job& add_job(const BackupJobSpec& spec, bool resumed);
  Status save_state(const BackupJobSpec& spec);
  static void finish(Job& job, const std::string& state, const std::string& error);
  void run_backup(Job& job, dbs::Store& store, engine::StoreExecutor& executor,
                  const std::stop_token& stop);
  void run_restore(Job& job, const std::vector<RestoreReplica>& replicas,
                   const std::stop_token& stop);
  // A restore job's options: rate, stop and resume point from `spec`;
  // progress into `job`; each checkpoint runs `commit` (durable on every
  // replica) before it records the next offset in the job's state file, so
  // a resume never skips a chunk that a crash could have lost. `spec` and
  // `commit` must outlive the restore.
  backup::RestoreOptions restore_job_options(Job& job, BackupJobSpec& spec,
                                             const std::stop_token& stop,
                                             std::function<Status()> commit);
  // backup_restore_snapshot.cpp
  void run_restore_snapshot(Job& job, const std::vector<RestoreReplica>& replicas,
                            const std::stop_token& stop);
  void run_delete(Job& job, const std::stop_token& stop);
  [[nodiscard]] bool running(BackupJobKind kind, const std::string& target,
                             const std::string& name) const;
  [[nodiscard]] static std::string state_key(const BackupJobSpec& spec);
  void remove_state(const BackupJobSpec& spec);

  std::list<std::unique_ptr<Job>> jobs_;  // the event loop's only
  // The state files' directory target (atomic, durable puts; also used by
  // the job threads: its puts are thread-safe); null: none.
  std::unique_ptr<backup::Target> states_;
};

// The DBS volume a restore as a snapshot of `volume` fills on each replica's
// store before it becomes the snapshot (dbs::Store::adopt_as_snapshot):
// "<volume>~restoring". '~' is in no volume name, so it never collides.
std::string restore_staging_name(const std::string& volume);

// Starts again every job with a state file (daemon start-up, after the
// stores and volumes are open, before the control socket answers): on its
// stores' threads, as backup.create / restore / delete do. A job whose store
// or volume is not there is listed as "waiting" and kept for the next start.
void resume_backup_jobs(Registry& r);

}  // namespace ublkvol::daemon
