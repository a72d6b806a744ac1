// BackupJobs (backup_jobs.h).
#include "backup_jobs.h"

#include <algorithm>
#include <cerrno>
#include <spdlog/spdlog.h>

#include "ublkvol/backup/gc.h"
#include "ublkvol/backup/hash.h"
#include "ublkvol/backup/repository.h"
#include "ublkvol/backup/restore.h"
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

Result<std::string> string_field(const Json& json, const char* key) {
  if (!json.contains(key) || !json.at(key).is_string()) {
    return Error(EINVAL, std::string("field '") + key + "' is missing or not a string");
  }
  return json.at(key).get<std::string>();
}

Result<uint64_t> uint_field(const Json& json, const char* key) {
  if (!json.contains(key) || !json.at(key).is_number_unsigned()) {
    return Error(EINVAL, std::string("field '") + key + "' is missing or not an unsigned integer");
  }
  return json.at(key).get<uint64_t>();
}

// Writes a restore into the DBS volume of every replica (each through its
// store's thread): every replica receives the same bytes, so they agree;
// nothing else writes to the volume while it is restoring (restoring()).
class ReplicasWriter final : public backup::VolumeWriter {
 public:
  ReplicasWriter(const std::vector<RestoreReplica>& replicas, std::vector<dbs::VolumeId> ids)
      : replicas_(replicas), ids_(std::move(ids)) {}
  Status write(uint64_t offset, std::span<const std::byte> data) override {
    for (size_t i = 0; i < replicas_.size(); ++i) {
      const RestoreReplica& r = replicas_[i];
      if (auto written = r.executor->call([&] { return r.store->write(ids_[i], offset, data); });
          !written) {
        return written.error().with_context("store '" + r.store_name + "'");
      }
    }
    return ok_status();
  }
  // The writes so far are durable on every replica.
  Status commit() {
    for (const RestoreReplica& r : replicas_) {
      if (auto committed = r.executor->call([&] { return r.store->commit(); }); !committed) {
        return committed.error().with_context("store '" + r.store_name + "': commit");
      }
    }
    return ok_status();
  }

 private:
  const std::vector<RestoreReplica>& replicas_;
  std::vector<dbs::VolumeId> ids_;
};

}  // namespace

const char* to_string(BackupJobKind kind) {
  switch (kind) {
    case BackupJobKind::kBackup:
      return "backup";
    case BackupJobKind::kRestore:
      return "restore";
    case BackupJobKind::kDelete:
      return "delete";
  }
  return "?";
}

Json backup_job_to_json(const BackupJobSpec& spec) {
  Json out{{"kind", to_string(spec.kind)},
           {"name", spec.name},
           {"target", spec.target},
           {"s3_endpoint", spec.s3.endpoint},
           {"s3_region", spec.s3.region},
           {"s3_credentials", spec.s3.credentials_file},
           {"rate", spec.rate}};
  switch (spec.kind) {
    case BackupJobKind::kBackup:
      out.update(Json{{"volume", spec.volume},
                      {"snapshot", spec.snapshot},
                      {"parent", spec.parent},
                      {"store", spec.store}});
      break;
    case BackupJobKind::kRestore:
      out.update(Json{{"volume", spec.volume},
                      {"snapshot", spec.snapshot},
                      {"stores", spec.stores},
                      {"resume_offset", spec.resume_offset},
                      {"failed", spec.failed}});
      break;
    case BackupJobKind::kDelete:
      break;
  }
  return out;
}

Result<BackupJobSpec> backup_job_from_json(const Json& json) {
  if (!json.is_object() || !json.contains("kind") || !json.at("kind").is_string()) {
    return Error(EINVAL, "not a backup job");
  }
  BackupJobSpec spec;
  const std::string kind = json.at("kind").get<std::string>();
  if (kind == "backup") {
    spec.kind = BackupJobKind::kBackup;
  } else if (kind == "restore") {
    spec.kind = BackupJobKind::kRestore;
  } else if (kind == "delete") {
    spec.kind = BackupJobKind::kDelete;
  } else {
    return Error(EINVAL, "unknown job kind '" + kind + "'");
  }
  UBLKVOL_ASSIGN_OR_RETURN(spec.name, string_field(json, "name"));
  UBLKVOL_ASSIGN_OR_RETURN(spec.target, string_field(json, "target"));
  UBLKVOL_ASSIGN_OR_RETURN(spec.s3.endpoint, string_field(json, "s3_endpoint"));
  UBLKVOL_ASSIGN_OR_RETURN(spec.s3.region, string_field(json, "s3_region"));
  UBLKVOL_ASSIGN_OR_RETURN(spec.s3.credentials_file, string_field(json, "s3_credentials"));
  UBLKVOL_ASSIGN_OR_RETURN(spec.rate, uint_field(json, "rate"));
  if (spec.kind == BackupJobKind::kBackup) {
    UBLKVOL_ASSIGN_OR_RETURN(spec.volume, string_field(json, "volume"));
    UBLKVOL_ASSIGN_OR_RETURN(spec.snapshot, string_field(json, "snapshot"));
    UBLKVOL_ASSIGN_OR_RETURN(spec.parent, string_field(json, "parent"));
    UBLKVOL_ASSIGN_OR_RETURN(spec.store, string_field(json, "store"));
  } else if (spec.kind == BackupJobKind::kRestore) {
    UBLKVOL_ASSIGN_OR_RETURN(spec.volume, string_field(json, "volume"));
    UBLKVOL_ASSIGN_OR_RETURN(spec.resume_offset, uint_field(json, "resume_offset"));
    UBLKVOL_ASSIGN_OR_RETURN(spec.failed, string_field(json, "failed"));
    if (json.contains("snapshot")) {  // absent in files of older builds
      UBLKVOL_ASSIGN_OR_RETURN(spec.snapshot, string_field(json, "snapshot"));
    }
    if (!json.contains("stores") || !json.at("stores").is_array() || json.at("stores").empty()) {
      return Error(EINVAL, "field 'stores' is missing or not a non-empty array");
    }
    for (const auto& store : json.at("stores")) {
      if (!store.is_string()) {
        return Error(EINVAL, "field 'stores' holds something else than a name");
      }
      spec.stores.push_back(store.get<std::string>());
    }
  }
  return spec;
}

std::string BackupJobs::state_key(const BackupJobSpec& spec) {
  // One file per (target, name) for a backup (one backup job of a name runs
  // on a target), per volume for a restore (one restore into a volume), per
  // (target, name) for a delete.
  std::string id;
  switch (spec.kind) {
    case BackupJobKind::kBackup:
      id = spec.target + "\n" + spec.name;
      break;
    case BackupJobKind::kRestore:
      id = "restore\n" + spec.volume;
      break;
    case BackupJobKind::kDelete:
      id = "delete\n" + spec.target + "\n" + spec.name;
      break;
  }
  return "jobs/" + backup::sha256({std::as_bytes(std::span(id))}).hex().substr(0, 32) + ".json";
}

Status BackupJobs::persist_in(const std::string& state_dir) {
  UBLKVOL_ASSIGN_OR_RETURN(states_, backup::open_directory_target(state_dir + "/backup-jobs"));
  // Temporaries of a put the last daemon did not finish.
  return states_->remove_temporaries();
}

std::vector<BackupJobSpec> BackupJobs::persisted() const {
  std::vector<BackupJobSpec> out;
  if (!states_) {
    return out;
  }
  auto keys = states_->list("jobs/");
  if (!keys) {
    spdlog::error("backup jobs: {}", keys.error().to_string());
    return out;
  }
  for (const auto& key : *keys) {
    auto bytes = states_->get(key);
    Result<BackupJobSpec> spec = Error(EINVAL, "unreadable");
    if (bytes) {
      const std::string text(reinterpret_cast<const char*>(bytes->data()), bytes->size());
      const Json json = Json::parse(text, nullptr, /*allow_exceptions=*/false);
      spec = json.is_discarded() ? Result<BackupJobSpec>(Error(EINVAL, "not JSON"))
                                 : backup_job_from_json(json);
    } else {
      spec = bytes.error();
    }
    if (!spec) {
      spdlog::error("backup job state file {}/{}: {}: left alone, not resumed", states_->describe(),
                    key, spec.error().message());
      continue;
    }
    out.push_back(std::move(*spec));
  }
  return out;
}

Status BackupJobs::save_state(const BackupJobSpec& spec) {
  if (!states_) {
    return ok_status();
  }
  const std::string text = backup_job_to_json(spec).dump();
  if (auto saved = states_->put(state_key(spec), std::as_bytes(std::span(text))); !saved) {
    return saved.error().with_context(std::string(to_string(spec.kind)) + " of backup '" +
                                      spec.name + "': cannot record the job");
  }
  return ok_status();
}

void BackupJobs::add_waiting(const BackupJobSpec& spec, const std::string& why,
                             const std::string& state) {
  Job& job = add_job(spec, /*resumed=*/true);
  std::lock_guard lock(job.mutex);
  job.state = state;
  job.error = why;
}

bool BackupJobs::running(BackupJobKind kind, const std::string& target,
                         const std::string& name) const {
  return std::any_of(jobs_.begin(), jobs_.end(), [&](const auto& job) {
    std::lock_guard lock(job->mutex);
    return job->state == "running" && job->spec.kind == kind && job->spec.name == name &&
           job->spec.target == target;
  });
}

BackupJobs::Job& BackupJobs::add_job(const BackupJobSpec& spec, bool resumed) {
  // Finished jobs of the same file make way for the new one.
  std::erase_if(jobs_, [&](const auto& job) {
    std::lock_guard lock(job->mutex);
    return job->state != "running" && state_key(job->spec) == state_key(spec);
  });
  auto job = std::make_unique<Job>();
  job->spec = spec;
  job->resumed = resumed;
  Job& j = *job;
  jobs_.push_back(std::move(job));
  return j;
}

void BackupJobs::finish(Job& job, const std::string& state, const std::string& error) {
  std::lock_guard lock(job.mutex);
  job.state = state;
  job.error = error;
}

Status BackupJobs::start(const BackupJobSpec& spec, dbs::Store& store,
                         engine::StoreExecutor& executor, bool resumed) {
  if (running(BackupJobKind::kBackup, spec.target, spec.name)) {
    return Error(EBUSY, "backup '" + spec.name + "' to " + spec.target + " is running");
  }
  if (running(BackupJobKind::kDelete, spec.target, spec.name)) {
    return Error(EBUSY, "backup '" + spec.name + "' on " + spec.target + " is being deleted");
  }
  UBLKVOL_TRY(save_state(spec));
  Job& j = add_job(spec, resumed);
  j.thread = std::jthread([this, &j, &store, &executor](const std::stop_token& stop) {
    run_backup(j, store, executor, stop);
  });
  return ok_status();
}

backup::RestoreOptions BackupJobs::restore_job_options(Job& job, BackupJobSpec& spec,
                                                       const std::stop_token& stop,
                                                       std::function<Status()> commit) {
  backup::RestoreOptions options;
  options.rate_bytes_per_sec = spec.rate;
  options.stop = stop;
  options.resume_offset = spec.resume_offset;
  options.checkpoint = [this, &spec, commit = std::move(commit)](uint64_t next_offset) -> Status {
    UBLKVOL_TRY(commit());
    spec.resume_offset = next_offset;
    return save_state(spec);
  };
  options.on_progress = [&job](const backup::RestoreProgress& p) {
    std::lock_guard lock(job.mutex);
    job.progress.chunks_total = p.chunks_total;
    job.progress.chunks_done = p.chunks_done;
    job.progress.chunks_skipped = p.chunks_skipped;
    job.progress.bytes = p.bytes_written;
  };
  return options;
}

Status BackupJobs::record_restore(const BackupJobSpec& spec) {
  if (running(BackupJobKind::kDelete, spec.target, spec.name)) {
    return Error(EBUSY, "backup '" + spec.name + "' on " + spec.target + " is being deleted");
  }
  if (auto why = restoring(spec.volume)) {
    return Error(EBUSY, "volume '" + spec.volume + "' is " + *why);
  }
  if (auto snapshot = restoring_snapshot(spec.volume)) {
    return Error(EBUSY, "a backup is being restored as snapshot '" + *snapshot + "' of volume '" +
                            spec.volume + "' (one restore into a volume at a time)");
  }
  return save_state(spec);
}

Status BackupJobs::start_restore(const BackupJobSpec& spec, std::vector<RestoreReplica> replicas,
                                 bool resumed) {
  Job& j = add_job(spec, resumed);
  j.thread = std::jthread([this, &j, replicas = std::move(replicas)](const std::stop_token& stop) {
    run_restore(j, replicas, stop);
  });
  return ok_status();
}

Status BackupJobs::may_delete(const std::string& target, const std::string& name) const {
  if (running(BackupJobKind::kBackup, target, name)) {
    return Error(EBUSY,
                 "backup '" + name + "' to " + target + " is running (wait for it to finish)");
  }
  if (running(BackupJobKind::kDelete, target, name)) {
    return Error(EBUSY, "backup '" + name + "' on " + target + " is being deleted");
  }
  for (const auto& job : jobs_) {
    std::lock_guard lock(job->mutex);
    if (job->state == "running" && job->spec.kind == BackupJobKind::kRestore &&
        job->spec.name == name && job->spec.target == target) {
      std::string why = "backup '";
      why.append(name).append("' on ").append(target).append(" is being restored into volume '");
      why.append(job->spec.volume).append("' (wait for it to finish)");
      return Error(EBUSY, why);
    }
  }
  return ok_status();
}

Status BackupJobs::start_delete(const BackupJobSpec& spec, bool resumed) {
  UBLKVOL_TRY(may_delete(spec.target, spec.name));
  UBLKVOL_TRY(save_state(spec));
  Job& j = add_job(spec, resumed);
  j.thread = std::jthread([this, &j](const std::stop_token& stop) { run_delete(j, stop); });
  return ok_status();
}

void BackupJobs::run_backup(Job& job, dbs::Store& store, engine::StoreExecutor& executor,
                            const std::stop_token& stop) {
  const BackupJobSpec& spec = job.spec;
  auto done_with = [&](const std::string& state, const std::string& error) {
    // Done or failed: nothing to resume. Stopped: the file stays, and the
    // next daemon start resumes the job.
    if (state != "stopped") {
      remove_state(spec);
    }
    finish(job, state, error);
  };
  auto target = backup::open_target(spec.target, spec.s3);
  if (!target) {
    done_with("failed", target.error().to_string());
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
    done_with("failed", prepared.error().to_string());
    return;
  }
  backup::BackupOptions options;
  options.name = spec.name;
  options.parent = spec.parent;
  options.rate_bytes_per_sec = spec.rate;
  options.stop = stop;
  options.on_progress = [&](const backup::BackupProgress& p) {
    std::lock_guard lock(job.mutex);
    job.progress.chunks_total = p.chunks_total;
    job.progress.chunks_done = p.chunks_done;
    job.progress.bytes = p.bytes_read;
    job.progress.chunks_written = p.chunks_written;
    job.progress.chunks_reused = p.chunks_reused;
  };
  ExecutorReader reader(store, executor, source->snapshot_id);
  auto done = backup::run_backup(repo, reader, *source, options);
  if (done.ok()) {
    spdlog::info("backup '{}' of volume '{}' snapshot '{}' to {} done: {} chunks", spec.name,
                 spec.volume, spec.snapshot, spec.target, done->entries.size());
    done_with("done", "");
  } else if (done.error().errno_value() == ECANCELED) {
    done_with("stopped", done.error().message());
  } else {
    spdlog::error("backup '{}' failed: {}", spec.name, done.error().to_string());
    done_with("failed", done.error().to_string());
  }
}

void BackupJobs::run_restore(Job& job, const std::vector<RestoreReplica>& replicas,
                             const std::stop_token& stop) {
  if (!job.spec.snapshot.empty()) {
    run_restore_snapshot(job, replicas, stop);
    return;
  }
  // The thread's own copy: its resume_offset moves with each checkpoint.
  BackupJobSpec spec = job.spec;
  auto failed = [&](const Error& error) {
    // The state file stays, marked failed: the volume holds part of the
    // backup and stays unusable until it is deleted.
    spec.failed = error.to_string();
    if (auto saved = save_state(spec); !saved) {
      spdlog::error("restore of backup '{}' into volume '{}': {}", spec.name, spec.volume,
                    saved.error().to_string());
    }
    spdlog::error("restore of backup '{}' into volume '{}' failed: {}", spec.name, spec.volume,
                  spec.failed);
    finish(job, "failed", spec.failed);
  };
  auto target = backup::open_target(spec.target, spec.s3);
  if (!target) {
    failed(target.error());
    return;
  }
  std::vector<dbs::VolumeId> ids;
  for (const RestoreReplica& r : replicas) {
    dbs::VolumeId id = 0;
    Status found = r.executor->call([&]() -> Status {
      UBLKVOL_ASSIGN_OR_RETURN(id, r.store->find_volume(spec.volume));
      return ok_status();
    });
    if (!found) {
      failed(found.error().with_context("store '" + r.store_name + "'"));
      return;
    }
    ids.push_back(id);
  }
  backup::Repository repo(**target);
  ReplicasWriter writer(replicas, std::move(ids));
  const backup::RestoreOptions options =
      restore_job_options(job, spec, stop, [&writer] { return writer.commit(); });
  auto done = backup::run_restore(repo, spec.name, writer, options);
  Status committed = done.ok() ? writer.commit() : Status(done.error());
  if (committed.ok()) {
    spdlog::info("backup '{}' on {} restored into volume '{}' ({} chunks)", spec.name, spec.target,
                 spec.volume, done->entries.size());
    // The volume becomes usable with this removal (restoring()).
    remove_state(spec);
    finish(job, "done", "");
  } else if (committed.error().errno_value() == ECANCELED) {
    finish(job, "stopped", committed.error().message());  // resumed at the next start
  } else {
    failed(committed.error());
  }
}

void BackupJobs::run_delete(Job& job, const std::stop_token& stop) {
  const BackupJobSpec& spec = job.spec;
  auto target = backup::open_target(spec.target, spec.s3);
  if (!target) {
    // Kept: the next start tries again (the manifest may be gone already).
    finish(job, "failed", target.error().to_string());
    return;
  }
  backup::Repository repo(**target);
  backup::GcOptions options;
  options.rate_removals_per_sec = spec.rate;
  options.stop = stop;
  // Resumed: the manifest may be gone already; the collection is what is left.
  options.missing_ok = job.resumed;
  options.on_progress = [&](const backup::GcProgress& p) {
    std::lock_guard lock(job.mutex);
    job.progress.chunks_total = p.chunks_total;
    job.progress.chunks_done = p.chunks_checked;
    job.progress.chunks_removed = p.chunks_removed;
  };
  auto done = backup::delete_backup(repo, spec.name, options);
  if (done.ok()) {
    spdlog::info("backup '{}' on {} deleted: {} chunks removed", spec.name, spec.target,
                 done->chunks_removed);
    remove_state(spec);
    finish(job, "done", "");
  } else if (done.error().errno_value() == ECANCELED) {
    finish(job, "stopped", done.error().message());
  } else {
    // The state file stays: the next start finishes the collection (the
    // manifest is removed first, so nothing of the backup is usable now).
    spdlog::error("delete of backup '{}' on {} failed: {}", spec.name, spec.target,
                  done.error().to_string());
    finish(job, "failed", done.error().to_string());
  }
}

Json BackupJobs::list() const {
  Json out = Json::array();
  const auto now = std::chrono::steady_clock::now();
  for (const auto& job : jobs_) {
    std::lock_guard lock(job->mutex);
    const auto& p = job->progress;
    const double seconds = std::chrono::duration<double>(now - job->started).count();
    const bool is_delete = job->spec.kind == BackupJobKind::kDelete;
    // A delete's rate is in chunks removed per second (its throttle's unit).
    const double amount = static_cast<double>(is_delete ? p.chunks_removed : p.bytes);
    const double rate = seconds > 0 ? amount / seconds : 0;
    const double percent = p.chunks_total == 0 ? (job->state == "done" ? 100.0 : 0.0)
                                               : 100.0 * static_cast<double>(p.chunks_done) /
                                                     static_cast<double>(p.chunks_total);
    // ETA from the chunk rate of this run (chunks, not bytes: what is left
    // is known in chunks before it is read; skipped chunks took no time).
    const double chunk_rate =
        seconds > 0 ? static_cast<double>(p.chunks_done - p.chunks_skipped) / seconds : 0;
    Json eta = nullptr;
    if (job->state == "running" && chunk_rate > 0) {
      eta = static_cast<uint64_t>(static_cast<double>(p.chunks_total - p.chunks_done) / chunk_rate);
    }
    out.push_back({{"kind", to_string(job->spec.kind)},
                   {"name", job->spec.name},
                   {"target", job->spec.target},
                   {"volume", job->spec.volume},
                   {"snapshot", job->spec.snapshot},
                   {"parent", job->spec.parent},
                   {"store", job->spec.store},
                   {"stores", job->spec.stores},
                   {"state", job->state},
                   {"resumed", job->resumed},
                   {"error", job->error},
                   {"percent", percent},
                   {"bytes_read", job->spec.kind == BackupJobKind::kBackup ? p.bytes : 0},
                   {"bytes_written", job->spec.kind == BackupJobKind::kRestore ? p.bytes : 0},
                   {"rate", static_cast<uint64_t>(rate)},
                   {"eta_seconds", eta},
                   {"chunks_total", p.chunks_total},
                   {"chunks_done", p.chunks_done},
                   {"chunks_written", p.chunks_written},
                   {"chunks_reused", p.chunks_reused},
                   {"chunks_skipped", p.chunks_skipped},
                   {"chunks_removed", p.chunks_removed}});
  }
  return out;
}

std::optional<std::string> BackupJobs::restoring(const std::string& volume) const {
  for (const auto& job : jobs_) {
    if (job->spec.kind != BackupJobKind::kRestore || job->spec.volume != volume ||
        !job->spec.snapshot.empty()) {
      continue;
    }
    std::lock_guard lock(job->mutex);
    if (job->state == "done") {
      continue;
    }
    std::string why = "being restored from backup '" + job->spec.name + "' on " + job->spec.target +
                      " (" + job->state;
    if (job->progress.chunks_total > 0) {
      why +=
          ", " + std::to_string(100 * job->progress.chunks_done / job->progress.chunks_total) + "%";
    }
    if (!job->error.empty()) {
      why += ": " + job->error;
    }
    return why + ")";
  }
  return std::nullopt;
}

void BackupJobs::stop_using(const std::string& store) {
  for (auto& job : jobs_) {
    const auto& stores = job->spec.stores;
    const bool uses =
        job->spec.store == store || std::find(stores.begin(), stores.end(), store) != stores.end();
    if (!uses) {
      continue;
    }
    if (job->thread.joinable()) {
      job->thread.request_stop();
      job->thread.join();
    }
    // A backup's store goes for good: nothing to resume at the next start
    // (the partial manifest stays on the target for a backup.create to
    // resume). A restore's state file stays: its volume stays blocked.
    if (job->spec.kind == BackupJobKind::kBackup) {
      remove_state(job->spec);
    }
  }
}

void BackupJobs::forget(const std::string& target, const std::string& name) {
  std::vector<BackupJobSpec> gone;
  std::erase_if(jobs_, [&](const auto& job) {
    if (job->spec.kind == BackupJobKind::kRestore || job->spec.target != target ||
        job->spec.name != name) {
      return false;
    }
    std::lock_guard lock(job->mutex);
    return job->state != "running";  // a finished thread: joined by the erase
  });
  for (const BackupJobKind kind : {BackupJobKind::kBackup, BackupJobKind::kDelete}) {
    BackupJobSpec spec;
    spec.kind = kind;
    spec.target = target;
    spec.name = name;
    remove_state(spec);
  }
}

void BackupJobs::forget_restore(const std::string& volume) {
  std::erase_if(jobs_, [&](auto& job) {
    if (job->spec.kind != BackupJobKind::kRestore || job->spec.volume != volume) {
      return false;
    }
    if (job->thread.joinable()) {
      job->thread.request_stop();
      job->thread.join();
    }
    return true;
  });
  BackupJobSpec spec;
  spec.kind = BackupJobKind::kRestore;
  spec.volume = volume;
  remove_state(spec);
}

void BackupJobs::remove_state(const BackupJobSpec& spec) {
  if (!states_) {
    return;
  }
  if (auto removed = states_->remove(state_key(spec)); !removed) {
    spdlog::error("backup '{}': {}", spec.name, removed.error().to_string());
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
