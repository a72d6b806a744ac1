// BackupJobs (backup_jobs.h).
#include "backup_jobs.h"

#include <cerrno>
#include <spdlog/spdlog.h>

#include "ublkvol/backup/repository.h"
#include "ublkvol/backup/store_backup.h"

namespace ublkvol::daemon {

namespace {

// Reads through the store's thread, one chunk at a time, so the store's I/O
// goes on between the chunks of a backup.
class ExecutorReader final : public backup::SnapshotReader {
 public:
  ExecutorReader(dbs::Store& store, engine::StoreExecutor& executor, dbs::SnapshotId snapshot)
      : store_(store), executor_(executor), snapshot_(snapshot) {}
  Status read(uint64_t offset, std::span<std::byte> buffer) override {
    return executor_.call([&] { return store_.read_snapshot(snapshot_, offset, buffer); });
  }

 private:
  dbs::Store& store_;
  engine::StoreExecutor& executor_;
  dbs::SnapshotId snapshot_;
};

}  // namespace

Status BackupJobs::start(const BackupJobSpec& spec, dbs::Store& store,
                         engine::StoreExecutor& executor) {
  for (const auto& job : jobs_) {
    std::lock_guard lock(job->mutex);
    if (job->state == "running" && job->spec.name == spec.name && job->spec.target == spec.target) {
      return Error(EBUSY, "backup '" + spec.name + "' to " + spec.target + " is running");
    }
  }
  // Finished jobs of the same name and target make way for the new one.
  std::erase_if(jobs_, [&](const auto& job) {
    std::lock_guard lock(job->mutex);
    return job->spec.name == spec.name && job->spec.target == spec.target;
  });
  auto job = std::make_unique<Job>();
  job->spec = spec;
  Job& j = *job;
  jobs_.push_back(std::move(job));
  j.thread = std::jthread([this, &j, &store, &executor](const std::stop_token& stop) {
    run(j, store, executor, stop);
  });
  return ok_status();
}

void BackupJobs::run(Job& job, dbs::Store& store, engine::StoreExecutor& executor,
                     const std::stop_token& stop) {
  const BackupJobSpec& spec = job.spec;
  auto finish = [&](const std::string& state, const std::string& error) {
    std::lock_guard lock(job.mutex);
    job.state = state;
    job.error = error;
  };
  auto target = backup::open_target(spec.target, spec.s3);
  if (!target) {
    finish("failed", target.error().to_string());
    return;
  }
  backup::Repository repo(**target);
  std::optional<backup::BackupSource> source;
  Status prepared = executor.call([&]() -> Status {
    auto s = backup::backup_source(store, repo, spec.volume, spec.snapshot, spec.name, spec.parent);
    if (!s) {
      return s.error();
    }
    source = std::move(*s);
    return ok_status();
  });
  if (!prepared) {
    finish("failed", prepared.error().to_string());
    return;
  }
  backup::BackupOptions options;
  options.name = spec.name;
  options.parent = spec.parent;
  options.rate_bytes_per_sec = spec.rate_bytes_per_sec;
  options.stop = stop;
  options.on_progress = [&](const backup::BackupProgress& p) {
    std::lock_guard lock(job.mutex);
    job.progress = p;
  };
  ExecutorReader reader(store, executor, source->snapshot_id);
  auto done = backup::run_backup(repo, reader, *source, options);
  if (done.ok()) {
    spdlog::info("backup '{}' of volume '{}' snapshot '{}' to {} done: {} chunks", spec.name,
                 spec.volume, spec.snapshot, spec.target, done->entries.size());
    finish("done", "");
  } else if (done.error().errno_value() == ECANCELED) {
    finish("stopped", done.error().message());
  } else {
    spdlog::error("backup '{}' failed: {}", spec.name, done.error().to_string());
    finish("failed", done.error().to_string());
  }
}

Json BackupJobs::list() const {
  Json out = Json::array();
  const auto now = std::chrono::steady_clock::now();
  for (const auto& job : jobs_) {
    std::lock_guard lock(job->mutex);
    const auto& p = job->progress;
    const double seconds = std::chrono::duration<double>(now - job->started).count();
    const double rate = seconds > 0 ? static_cast<double>(p.bytes_read) / seconds : 0;
    const double percent = p.chunks_total == 0 ? (job->state == "done" ? 100.0 : 0.0)
                                               : 100.0 * static_cast<double>(p.chunks_done) /
                                                     static_cast<double>(p.chunks_total);
    // ETA from the chunk rate so far (chunks, not bytes: what is left is
    // known in chunks before it is read).
    const double chunk_rate = seconds > 0 ? static_cast<double>(p.chunks_done) / seconds : 0;
    Json eta = nullptr;
    if (job->state == "running" && chunk_rate > 0) {
      eta = static_cast<uint64_t>(static_cast<double>(p.chunks_total - p.chunks_done) / chunk_rate);
    }
    out.push_back({{"name", job->spec.name},
                   {"target", job->spec.target},
                   {"volume", job->spec.volume},
                   {"snapshot", job->spec.snapshot},
                   {"parent", job->spec.parent},
                   {"store", job->spec.store},
                   {"state", job->state},
                   {"error", job->error},
                   {"percent", percent},
                   {"bytes_read", p.bytes_read},
                   {"rate", static_cast<uint64_t>(rate)},
                   {"eta_seconds", eta},
                   {"chunks_total", p.chunks_total},
                   {"chunks_done", p.chunks_done},
                   {"chunks_written", p.chunks_written}});
  }
  return out;
}

void BackupJobs::stop_using(const std::string& store) {
  for (auto& job : jobs_) {
    if (job->spec.store == store && job->thread.joinable()) {
      job->thread.request_stop();
      job->thread.join();
    }
  }
}

void BackupJobs::stop_all() {
  for (auto& job : jobs_) {
    job->thread.request_stop();
  }
  for (auto& job : jobs_) {
    if (job->thread.joinable()) {
      job->thread.join();
    }
  }
}

}  // namespace ublkvol::daemon
