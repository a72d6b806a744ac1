// ublk-volume backup create/list/show/verify/delete/restore (docs/backup-format.md).
#include <filesystem>
#include <memory>
#include <sstream>
#include <string>

#include "commands.h"
#include "progress.h"
#include "render.h"
#include "table.h"

namespace ublkvol::cli {
namespace {

std::string text(const Json& j, const char* key) {
  const Json& v = j.contains(key) ? j.at(key) : Json();
  if (v.is_string()) {
    return v.get<std::string>();
  }
  return v.is_null() ? "-" : v.dump();
}

void render_backup_list(std::ostream& out, const Json& result) {
  const Json backups = result.value("backups", Json::array());
  if (backups.empty()) {
    out << "no backups\n";
  } else {
    Table table({{"NAME"}, {"VOLUME"}, {"SNAPSHOT"}, {"PARENT"}, {"SIZE"}, {"DATA"}, {"CHUNKS"}});
    for (const auto& b : backups) {
      table.add_row({text(b, "name"), text(b, "volume"), text(b, "snapshot"),
                     b.value("parent", std::string()).empty() ? "-" : text(b, "parent"),
                     text(b, "size"), text(b, "data_bytes"), text(b, "chunks")});
    }
    table.print(out);
  }
  const Json jobs = result.value("jobs", Json::array());
  if (!jobs.empty()) {
    out << "\njobs:\n";
    Table table({{"KIND"}, {"NAME"}, {"VOLUME"}, {"SNAPSHOT"}, {"STATE"}, {"PROGRESS"}, {"ERROR"}});
    for (const auto& j : jobs) {
      Progress p;
      p.percent = j.value("percent", 0.0);
      p.bytes_per_second = static_cast<double>(j.value("rate", uint64_t{0}));
      p.eta_seconds = j["eta_seconds"].is_number() ? j["eta_seconds"].get<double>() : -1;
      table.add_row({j.value("kind", std::string("backup")), text(j, "name"), text(j, "volume"),
                     text(j, "snapshot"), text(j, "state"), render_progress(p, 20),
                     j.value("error", std::string())});
    }
    table.print(out);
  }
}

void render_backup_show(std::ostream& out, const Json& result) {
  if (result.contains("backup")) {
    const Json& b = result["backup"];
    for (const char* key :
         {"name", "volume", "snapshot", "parent", "size", "data_bytes", "chunks", "create_time"}) {
      out << key << ": " << text(b, key) << '\n';
    }
  }
  for (const auto& j : result.value("jobs", Json::array())) {
    out << j.value("kind", std::string("backup")) << " job";
    if (j.value("kind", std::string()) == "restore") {
      out << " into volume " << text(j, "volume");
      if (!j.value("snapshot", std::string()).empty()) {
        out << " as snapshot " << text(j, "snapshot");
      }
    }
    out << ": " << text(j, "state") << ", " << j.value("percent", 0.0) << "% ("
        << text(j, "chunks_done") << "/" << text(j, "chunks_total") << " chunks)";
    if (!j.value("error", std::string()).empty()) {
      out << ": " << text(j, "error");
    }
    out << '\n';
  }
}

// --wait: polls backup.show until the job of `kind` ("backup", "restore",
// "delete"; into `volume` for a restore) is no longer running.
ExitCode wait_for_job(Session& s, Json target, const std::string& name, const std::string& kind,
                      const std::string& volume = "") {
  ProgressReporter reporter(s.env().out, s.env().stdout_is_tty, kind + " " + name);
  target["name"] = name;
  for (;;) {
    auto r = s.call(Method::kBackupShow, target);
    if (!r) {
      return s.status();
    }
    Json job;
    for (const auto& j : r->value("jobs", Json::array())) {
      if (j.value("kind", std::string("backup")) == kind &&
          (volume.empty() || j.value("volume", std::string()) == volume)) {
        job = j;
      }
    }
    if (job.is_null()) {
      reporter.finish("done");
      return ExitCode::kOk;
    }
    Progress p;
    p.percent = job.value("percent", 0.0);
    p.bytes_per_second = static_cast<double>(job.value("rate", uint64_t{0}));
    p.eta_seconds = job["eta_seconds"].is_number() ? job["eta_seconds"].get<double>() : -1;
    reporter.update(p);
    const std::string state = job.value("state", std::string());
    if (state == "done") {
      reporter.finish("done");
      return ExitCode::kOk;
    }
    if (state != "running") {
      reporter.finish(state + ": " + job.value("error", std::string()));
      return ExitCode::kFailed;
    }
    s.env().sleep(kPollSeconds);
  }
}

}  // namespace

void add_backup_commands(CLI::App& app, CommandTree& tree) {
  CLI::App* backup =
      app.add_subcommand("backup", "Back up snapshots to a directory or S3 and restore");
  backup->require_subcommand(1);
  backup->footer(
      "Examples:\n"
      "  ublk-volume backup create vol0 --snapshot nightly-1 --to /mnt/backup --wait\n"
      "  ublk-volume backup create vol0 --snapshot nightly-2 --to /mnt/backup "
      "--parent vol0-nightly-1\n"
      "  ublk-volume backup verify vol0-nightly-2 --target /mnt/backup\n"
      "  ublk-volume backup create vol0 --snapshot nightly-1 --to s3://backups/host1 "
      "--s3-endpoint http://10.0.0.5:9000 --s3-credentials /etc/ublk-volumed/s3-credentials\n");

  struct Args {
    std::string volume, snapshot, target, name, parent;
    std::string to_volume, as_snapshot;  // restore as a snapshot of an existing volume
    std::string s3_endpoint, s3_region, s3_credentials;
    std::vector<std::string> stores;
    int64_t min_replicas = -1;
    double rate = -1;
    bool wait = false;

    // The target and how to reach it (s3://), as the daemon's params.
    [[nodiscard]] Json target_params() const {
      Json params{{"target", target}};
      if (!s3_endpoint.empty()) {
        params["s3_endpoint"] = s3_endpoint;
      }
      if (!s3_region.empty()) {
        params["s3_region"] = s3_region;
      }
      if (!s3_credentials.empty()) {
        // The daemon has its own working directory.
        std::error_code ec;
        const auto absolute = std::filesystem::absolute(s3_credentials, ec);
        params["s3_credentials"] = ec ? s3_credentials : absolute.string();
      }
      return params;
    }
    Json with_name() const {
      Json params = target_params();
      params["name"] = name;
      return params;
    }
  };
  auto a = std::make_shared<Args>();
  // --target/--to and the S3 options, on every subcommand.
  auto add_target = [a](CLI::App* c, const char* flag) {
    c->add_option(flag, a->target,
                  "Target: an absolute directory path (or dir:/path), or s3://bucket/prefix")
        ->required();
    c->add_option("--s3-endpoint", a->s3_endpoint,
                  "S3 endpoint URL, e.g. http://10.0.0.5:9000 (default: AWS, from the region)");
    c->add_option("--s3-region", a->s3_region, "S3 region (default: us-east-1)");
    c->add_option("--s3-credentials", a->s3_credentials,
                  "File with aws_access_key_id / aws_secret_access_key, mode 600 "
                  "(default: /etc/ublk-volumed/s3-credentials)");
  };

  CLI::App* c = tree.add(
      backup, "create", Method::kBackupCreate,
      "  ublk-volume backup create vol0 --snapshot nightly-1 --to /mnt/backup --rate 200 --wait\n",
      [a](Session& s) {
        Json params = a->target_params();
        params["volume"] = a->volume;
        params["snapshot"] = a->snapshot;
        if (!a->name.empty()) {
          params["name"] = a->name;
        }
        if (!a->parent.empty()) {
          params["parent"] = a->parent;
        }
        if (a->rate >= 0) {
          params["rate"] = static_cast<uint64_t>(a->rate);
        }
        auto r = s.call(Method::kBackupCreate, params);
        if (!r) {
          return s.status();
        }
        const std::string name = r->value("name", a->name);
        if (a->wait) {
          return wait_for_job(s, a->target_params(), name, "backup");
        }
        return s.done(*r, "backup '" + name +
                              "' started (follow it with: ublk-volume backup show " + name +
                              " --target " + a->target + ")");
      });
  c->add_option("volume", a->volume, "Volume name")->required();
  c->add_option("--snapshot", a->snapshot, "Snapshot to back up")->required();
  add_target(c, "--to");
  c->add_option("--name", a->name, "Backup name (default: VOLUME-SNAPSHOT)");
  c->add_option("--parent", a->parent,
                "Incremental: the backup of an older snapshot of the volume on the same target");
  c->add_option("--rate", a->rate, "Read at most this many MB/s (default: unthrottled)")
      ->check(CLI::NonNegativeNumber);
  c->add_flag("--wait", a->wait, "Wait for the backup to finish, showing progress");

  c = tree.add(backup, "list", Method::kBackupList,
               "  ublk-volume backup list --target /mnt/backup\n", [a](Session& s) {
                 return s.show(Method::kBackupList, a->target_params(), render_backup_list);
               });
  add_target(c, "--target");

  c = tree.add(backup, "show", Method::kBackupShow,
               "  ublk-volume backup show vol0-nightly-1 --target /mnt/backup\n", [a](Session& s) {
                 return s.show(Method::kBackupShow, a->with_name(), render_backup_show);
               });
  c->add_option("name", a->name, "Backup name")->required();
  add_target(c, "--target");

  c = tree.add(backup, "verify", Method::kBackupVerify,
               "  ublk-volume backup verify vol0-nightly-1 --target /mnt/backup\n",
               [a](Session& s) {
                 auto r = s.call(Method::kBackupVerify, a->with_name());
                 if (!r) {
                   return s.status();
                 }
                 const Json problems = r->value("problems", Json::array());
                 ExitCode printed = s.print(*r, [&](std::ostream& out, const Json&) {
                   if (problems.empty()) {
                     out << "backup '" << a->name << "': every chunk verified\n";
                   }
                   for (const auto& p : problems) {
                     out << p.get<std::string>() << '\n';
                   }
                 });
                 return problems.empty() ? printed : ExitCode::kFailed;
               });
  c->add_option("name", a->name, "Backup name")->required();
  add_target(c, "--target");

  c = tree.add(backup, "delete", Method::kBackupDelete,
               "  ublk-volume backup delete vol0-nightly-1 --target /mnt/backup\n",
               [a](Session& s) {
                 Json params = a->with_name();
                 if (a->rate >= 0) {
                   params["rate"] = static_cast<uint64_t>(a->rate);
                 }
                 auto r = s.call(Method::kBackupDelete, params);
                 if (!r) {
                   return s.status();
                 }
                 if (a->wait) {
                   return wait_for_job(s, a->target_params(), a->name, "delete");
                 }
                 return s.done(*r, "deleting backup '" + a->name +
                                       "' (follow it with: ublk-volume backup show " + a->name +
                                       " --target " + a->target + ")");
               });
  c->add_option("name", a->name, "Backup name")->required();
  add_target(c, "--target");
  c->add_option("--rate", a->rate,
                "Remove at most this many chunk objects per second (default: unthrottled)")
      ->check(CLI::NonNegativeNumber);
  c->add_flag("--wait", a->wait, "Wait for the delete to finish, showing progress");

  c = tree.add(
      backup, "restore", Method::kBackupRestore,
      "  ublk-volume backup restore vol0-nightly-1 --target /mnt/backup --volume vol0-copy "
      "--store a --store b\n"
      "  ublk-volume backup restore vol0-nightly-1 --target /mnt/backup --to-volume vol0 "
      "--as-snapshot nightly-1-restored\n",
      [a](Session& s) {
        Json params = a->with_name();
        const bool as_snapshot = !a->to_volume.empty() || !a->as_snapshot.empty();
        if (as_snapshot) {
          if (a->to_volume.empty() || a->as_snapshot.empty() || !a->volume.empty() ||
              !a->stores.empty() || a->min_replicas >= 0) {
            s.env().err << kProgram
                        << ": --to-volume and --as-snapshot go together, without --volume, "
                           "--store and --min-replicas\n";
            return ExitCode::kUsage;
          }
          params["volume"] = a->to_volume;
          params["snapshot"] = a->as_snapshot;
        } else if (a->volume.empty() || a->stores.empty()) {
          s.env().err << kProgram
                      << ": give --volume and --store (a new volume), or --to-volume and "
                         "--as-snapshot (a new snapshot of an existing volume)\n";
          return ExitCode::kUsage;
        } else {
          params["volume"] = a->volume;
          params["stores"] = a->stores;
        }
        if (a->min_replicas >= 0) {
          params["min_replicas"] = a->min_replicas;
        }
        if (a->rate >= 0) {
          params["rate"] = static_cast<uint64_t>(a->rate);
        }
        auto r = s.call(Method::kBackupRestore, params);
        if (!r) {
          return s.status();
        }
        if (a->wait) {
          return wait_for_job(s, a->target_params(), a->name, "restore",
                              as_snapshot ? a->to_volume : a->volume);
        }
        if (as_snapshot) {
          return s.done(*r, "restoring backup '" + a->name + "' as snapshot '" + a->as_snapshot +
                                "' of volume '" + a->to_volume +
                                "' (listed once done; follow it with: ublk-volume backup show " +
                                a->name + " --target " + a->target + ")");
        }
        return s.done(*r, "restoring backup '" + a->name + "' into new volume '" + a->volume +
                              "' (usable once done; follow it with: ublk-volume backup show " +
                              a->name + " --target " + a->target + ")");
      });
  c->add_option("name", a->name, "Backup name")->required();
  add_target(c, "--target");
  c->add_option("--volume", a->volume, "Name of the new volume");
  c->add_option("--store", a->stores, "A store for a replica (repeat for more replicas)");
  c->add_option("--to-volume", a->to_volume,
                "Restore as a new snapshot of this existing volume (with --as-snapshot; the "
                "volume stays in use)");
  c->add_option("--as-snapshot", a->as_snapshot, "Name of the new snapshot (with --to-volume)");
  c->add_option("--min-replicas", a->min_replicas, "Replicas that must stay in sync");
  c->add_option("--rate", a->rate, "Write at most this many MB/s (default: unthrottled)")
      ->check(CLI::NonNegativeNumber);
  c->add_flag("--wait", a->wait, "Wait for the restore to finish, showing progress");
}

}  // namespace ublkvol::cli
