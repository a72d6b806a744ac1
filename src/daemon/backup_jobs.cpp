// BackupJobs (backup_jobs.h).
#include "backup_jobs.h"

#include <cerrno>
#include <spdlog/spdlog.h>

#include "ublkvol/backup/hash.h"
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

Result<std::string> string_field(const Json& json, const char* key) {
  if (!json.contains(key) || !json.at(key).is_string()) {
    return Error(EINVAL, std::string("field '") + key + "' is missing or not a string");
  }
  return json.at(key).get<std::string>();
}

}  // namespace

Json backup_job_to_json(const BackupJobSpec& spec) {
  return {{"kind", "backup"},
          {"name", spec.name},
          {"target", spec.target},
          {"s3_endpoint", spec.s3.endpoint},
          {"s3_region", spec.s3.region},
          {"s3_credentials", spec.s3.credentials_file},
          {"volume", spec.volume},
          {"snapshot", spec.snapshot},
          {"parent", spec.parent},
          {"store", spec.store},
          {"rate", spec.rate_bytes_per_sec}};
}

Result<BackupJobSpec> backup_job_from_json(const Json& json) {
  if (!json.is_object() || json.value("kind", std::string()) != "backup") {
    return Error(EINVAL, "not a backup job");
  }
  BackupJobSpec spec;
  UBLKVOL_ASSIGN_OR_RETURN(spec.name, string_field(json, "name"));
  UBLKVOL_ASSIGN_OR_RETURN(spec.target, string_field(json, "target"));
  UBLKVOL_ASSIGN_OR_RETURN(spec.s3.endpoint, string_field(json, "s3_endpoint"));
  UBLKVOL_ASSIGN_OR_RETURN(spec.s3.region, string_field(json, "s3_region"));
  UBLKVOL_ASSIGN_OR_RETURN(spec.s3.credentials_file, string_field(json, "s3_credentials"));
  UBLKVOL_ASSIGN_OR_RETURN(spec.volume, string_field(json, "volume"));
  UBLKVOL_ASSIGN_OR_RETURN(spec.snapshot, string_field(json, "snapshot"));
  UBLKVOL_ASSIGN_OR_RETURN(spec.parent, string_field(json, "parent"));
  UBLKVOL_ASSIGN_OR_RETURN(spec.store, string_field(json, "store"));
  if (!json.contains("rate") || !json.at("rate").is_number_unsigned()) {
    return Error(EINVAL, "field 'rate' is missing or not an unsigned integer");
  }
  spec.rate_bytes_per_sec = json.at("rate").get<uint64_t>();
  return spec;
}

std::string BackupJobs::state_key(const BackupJobSpec& spec) {
  // One file per (target, name), as one job per (target, name) runs.
  const std::string id = spec.target + "\n" + spec.name;
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

void BackupJobs::add_waiting(const BackupJobSpec& spec, const std::string& why) {
  auto job = std::make_unique<Job>();
  job->spec = spec;
  job->resumed = true;
  {
    std::lock_guard lock(job->mutex);
    job->state = "waiting";
    job->error = why;
  }
  jobs_.push_back(std::move(job));
}

Status BackupJobs::start(const BackupJobSpec& spec, dbs::Store& store,
                         engine::StoreExecutor& executor, bool resumed) {
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
  if (states_) {
    const std::string text = backup_job_to_json(spec).dump();
    if (auto saved = states_->put(state_key(spec), std::as_bytes(std::span(text))); !saved) {
      return saved.error().with_context("backup '" + spec.name + "': cannot record the job");
    }
  }
  auto job = std::make_unique<Job>();
  job->spec = spec;
  job->resumed = resumed;
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
    // Done or failed: nothing to resume. Stopped: the file stays, and the
    // next daemon start resumes the job.
    if (state != "stopped") {
      remove_state(spec);
    }
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
                   {"resumed", job->resumed},
                   {"error", job->error},
                   {"percent", percent},
                   {"bytes_read", p.bytes_read},
                   {"rate", static_cast<uint64_t>(rate)},
                   {"eta_seconds", eta},
                   {"chunks_total", p.chunks_total},
                   {"chunks_done", p.chunks_done},
                   {"chunks_written", p.chunks_written},
                   {"chunks_reused", p.chunks_reused}});
  }
  return out;
}

void BackupJobs::stop_using(const std::string& store) {
  for (auto& job : jobs_) {
    if (job->spec.store == store && job->thread.joinable()) {
      job->thread.request_stop();
      job->thread.join();
    }
    // The store goes for good: nothing to resume at the next start (the
    // partial manifest stays on the target for a backup.create to resume).
    if (job->spec.store == store) {
      remove_state(job->spec);
    }
  }
}

void BackupJobs::forget(const std::string& target, const std::string& name) {
  std::erase_if(jobs_, [&](const auto& job) {
    if (job->spec.target != target || job->spec.name != name) {
      return false;
    }
    std::lock_guard lock(job->mutex);
    return job->state != "running";  // a finished thread: joined by the erase
  });
  BackupJobSpec spec;
  spec.target = target;
  spec.name = name;
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
