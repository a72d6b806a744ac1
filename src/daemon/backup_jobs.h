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

#include "ublkvol/backup/backup_job.h"
#include "ublkvol/backup/target.h"
#include "ublkvol/common/result.h"
#include "ublkvol/common/thread_annotations.h"
#include "ublkvol/daemon/protocol.h"
#include "ublkvol/dbs/store.h"
#include "ublkvol/engine/store_thread.h"

namespace ublkvol::daemon {

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

class BackupJobs {
 public:
  BackupJobs() = default;
  ~BackupJobs() { stop_all(); }
  BackupJobs(const BackupJobs&) = delete;
  BackupJobs& operator=(const BackupJobs&) = delete;

  // Starts the job: `store`/`executor` must stay valid until stop_using(spec.store)
  // or stop_all() returned. EBUSY if a job of that name on that target runs.
  Status start(const BackupJobSpec& spec, dbs::Store& store, engine::StoreExecutor& executor);
  // Every job (running and finished since start), as JSON for backup.list:
  // name, target, volume, snapshot, parent, state (running / done / failed /
  // stopped), error, percent, bytes_read, rate (bytes/s), eta_seconds, chunks.
  [[nodiscard]] Json list() const;
  // Stops and joins the jobs reading from `store`.
  void stop_using(const std::string& store);
  void stop_all();

 private:
  struct Job {
    BackupJobSpec spec;
    std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
    mutable std::mutex mutex;
    backup::BackupProgress progress GUARDED_BY(mutex);
    std::string state GUARDED_BY(mutex) = "running";
    std::string error GUARDED_BY(mutex);
    std::jthread thread;  // last: joined before the rest goes
  };
  void run(Job& job, dbs::Store& store, engine::StoreExecutor& executor,
           const std::stop_token& stop);

  std::list<std::unique_ptr<Job>> jobs_;  // the event loop's only
};

}  // namespace ublkvol::daemon
