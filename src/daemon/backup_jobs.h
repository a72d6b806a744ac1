// BackupJobs: the daemon's running backups (backup.create), one thread each.
//
// A job reads its snapshot from one store through that store's thread
// (StoreExecutor::call per chunk, so the store keeps serving I/O in between)
// and writes to its target (src/backup, docs/backup-format.md). The event
// loop starts jobs and reads their progress; stop_all() (daemon shutdown)
// and stop_using() (before a store is removed) stop them - an interrupted
// job leaves a partial manifest that the same backup.create resumes.
#pragma once

#include <chrono>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "ublkvol/backup/backup_job.h"
#include "ublkvol/backup/target.h"
#include "ublkvol/common/result.h"
#include "ublkvol/common/thread_annotations.h"
#include "ublkvol/daemon/protocol.h"
#include "ublkvol/dbs/store.h"
#include "ublkvol/engine/store_thread.h"

namespace ublkvol::daemon {

class Registry;

struct BackupJobSpec {
  std::string name;
  std::string target;    // as the operator gave it (open_target)
  backup::S3Options s3;  // how to reach an s3:// target
  std::string volume;
  std::string snapshot;
  std::string parent;
  std::string store;  // the store it reads from (by name)
  uint64_t rate_bytes_per_sec = 0;
};

// A job's state file as JSON, and back (errors name the field).
Json backup_job_to_json(const BackupJobSpec& spec);
Result<BackupJobSpec> backup_job_from_json(const Json& json);

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

  // Starts the job: `store`/`executor` must stay valid until stop_using(spec.store)
  // or stop_all() returned. EBUSY if a job of that name on that target runs.
  // Writes the job's state file first (refused if it cannot be written).
  // `resumed`: started again at daemon start-up (shown in list()).
  Status start(const BackupJobSpec& spec, dbs::Store& store, engine::StoreExecutor& executor,
               bool resumed = false);
  // A persisted job that cannot run now (its store is not available): listed
  // as "waiting" with `why`; its state file stays for the next start.
  void add_waiting(const BackupJobSpec& spec, const std::string& why);
  // Every job (running and finished since start), as JSON for backup.list:
  // name, target, volume, snapshot, parent, state (running / done / failed /
  // stopped), error, percent, bytes_read, rate (bytes/s), eta_seconds, chunks.
  [[nodiscard]] Json list() const;
  // Stops and joins the jobs reading from `store`, and drops their state
  // files (the store is being removed: nothing to resume).
  void stop_using(const std::string& store);
  // The backup is being deleted: its finished or waiting jobs go from the
  // list and its state file goes (else the next start would resume it).
  // The caller has checked that no job of it runs.
  void forget(const std::string& target, const std::string& name);
  void stop_all();

 private:
  struct Job {
    BackupJobSpec spec;
    bool resumed = false;
    std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
    mutable std::mutex mutex;
    backup::BackupProgress progress GUARDED_BY(mutex);
    std::string state GUARDED_BY(mutex) = "running";
    std::string error GUARDED_BY(mutex);
    std::jthread thread;  // last: joined before the rest goes
  };
  void run(Job& job, dbs::Store& store, engine::StoreExecutor& executor,
           const std::stop_token& stop);
  [[nodiscard]] static std::string state_key(const BackupJobSpec& spec);
  void remove_state(const BackupJobSpec& spec);

  std::list<std::unique_ptr<Job>> jobs_;  // the event loop's only
  // The state files' directory target (atomic, durable puts); null: none.
  std::unique_ptr<backup::Target> states_;
};

// Starts again every job with a state file (daemon start-up, after the
// stores are open): on its store's thread, as backup.create does. A job whose
// store is not there is listed as "waiting" and kept for the next start.
void resume_backup_jobs(Registry& r);

}  // namespace ublkvol::daemon
