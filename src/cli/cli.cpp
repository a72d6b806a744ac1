#include "cli.h"

#include <fcntl.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "ublkvol/common/version.h"
#include "ublkvol/daemon/methods.h"

#include "exit_code.h"
#include "progress.h"
#include "render.h"
#include "size.h"
#include "stats.h"

namespace ublkvol::cli {
namespace {

using daemon::Method;

constexpr const char* kProgram = "ublk-volume";
constexpr double kPollSeconds = 0.5;

struct GlobalOptions {
  std::string socket = daemon::kDefaultSocketPath;
  bool json = false;
  // Seconds to wait for the daemon to accept and to answer (0 = forever).
  double timeout = 60;
};

// One invocation's connection to the daemon, opened on first use. Every
// failure is printed here, once, and remembered as the exit status.
class Session {
 public:
  Session(const CliEnvironment& env, const GlobalOptions& options) : env_(env), options_(options) {}

  // The result of `method`, or nullopt after printing why not (see status()).
  std::optional<Json> call(Method method, const Json& params = Json::object()) {
    if (!client_) {
      auto client = env_.connect(options_.socket);
      if (!client) {
        unreachable(client.error());
        return std::nullopt;
      }
      client_ = std::move(*client);
      client_->set_timeout(std::chrono::milliseconds(std::llround(options_.timeout * 1000)));
    }
    auto response = client_->call(daemon::method_name(method), params);
    if (!response) {
      unreachable(response.error());
      client_.reset();
      return std::nullopt;
    }
    if (!response->ok) {
      status_ = exit_code_for(response->code);
      const std::string code(daemon::to_string(response->code));
      if (options_.json) {
        env_.out << Json{{"ok", false}, {"error", {{"code", code}, {"message", response->message}}}}
                        .dump(2)
                 << '\n';
      }
      env_.err << kProgram << ": " << response->message << " [" << code << "]\n";
      if (response->code == daemon::ErrorCode::kPermissionDenied) {
        env_.err << "  (run as root or as a member of the 'ublk-volume' group)\n";
      }
      return std::nullopt;
    }
    return std::move(response->result);
  }

  // Prints `result` as JSON (--json) or through `human`; a result whose
  // shape the renderer does not expect is an error, not a crash.
  template <typename Render>
  ExitCode print(const Json& result, Render&& human) {
    if (options_.json) {
      env_.out << result.dump(2) << '\n';
      return ExitCode::kOk;
    }
    try {
      human(env_.out, result);
    } catch (const Json::exception& e) {
      env_.err << kProgram << ": unexpected answer from ublk-volumed: " << e.what() << '\n';
      return ExitCode::kFailed;
    }
    return ExitCode::kOk;
  }

  // A confirmation line for a successful change, or the result with --json.
  ExitCode done(const Json& result, const std::string& message) {
    return print(result, [&](std::ostream& out, const Json&) { out << message << '\n'; });
  }

  [[nodiscard]] ExitCode status() const { return status_; }
  [[nodiscard]] bool json() const { return options_.json; }
  [[nodiscard]] const CliEnvironment& env() const { return env_; }

 private:
  void unreachable(const Error& why) {
    if (why.errno_value() == ETIMEDOUT) {
      // Connected (or connecting) but no answer: a stuck or stopped daemon,
      // not a missing one.
      status_ = ExitCode::kTimeout;
      env_.err << kProgram << ": " << why.message()
               << "\n  (check the daemon: systemctl status ublk-volumed; wait longer: "
                  "--timeout SECONDS, 0 = forever)\n";
      return;
    }
    status_ = ExitCode::kUnreachable;
    env_.err << kProgram << ": cannot talk to ublk-volumed at " << options_.socket << ": "
             << why.message()
             << "\n  (is the service running? systemctl status ublk-volumed; another socket: "
                "--socket PATH or UBLK_VOLUME_SOCKET)\n";
  }

  const CliEnvironment& env_;
  const GlobalOptions& options_;
  std::unique_ptr<ControlClient> client_;
  ExitCode status_ = ExitCode::kFailed;
};

using Handler = std::function<ExitCode(Session&)>;

struct CommandTree {
  std::vector<std::pair<CLI::App*, Handler>> handlers;

  CLI::App* add(CLI::App* parent, const std::string& name, const std::string& description,
                const std::string& examples, Handler handler) {
    CLI::App* command = parent->add_subcommand(name, description);
    if (!examples.empty()) {
      command->footer("Examples:\n" + examples);
    }
    handlers.emplace_back(command, std::move(handler));
    return command;
  }
  // A command that calls `method`: described by the method's summary (methods.h).
  CLI::App* add(CLI::App* parent, const std::string& name, Method method,
                const std::string& examples, Handler handler) {
    return add(parent, name, std::string(daemon::method_info(method).summary), examples,
               std::move(handler));
  }
};

// Size arguments are strings until parse_size() has checked them, so the
// error names the argument and says what is wrong.
std::optional<uint64_t> size_argument(Session& s, const std::string& text, const char* argument,
                                      SizeRules rules = {}) {
  auto size = parse_size(text, argument, rules);
  if (!size) {
    s.env().err << kProgram << ": " << size.error().message() << '\n';
    return std::nullopt;
  }
  return *size;
}

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& item : items) {
    out += (out.empty() ? "" : ", ") + item;
  }
  return out;
}

// --- replica --wait ------------------------------------------------------

// Polls volume.show until replica `index` is in sync (0), failed or removed
// (1), or `timeout` seconds passed (1; 0 = no limit).
ExitCode wait_for_replica(Session& s, const std::string& volume, uint64_t index, double timeout) {
  const std::string label = "rebuild " + volume + " replica " + std::to_string(index);
  ProgressReporter reporter(s.env().out, s.env().stdout_is_tty, label);
  double waited = 0;
  for (;;) {
    auto v = s.call(Method::kVolumeShow, {{"name", volume}});
    if (!v) {
      return s.status();
    }
    try {
      const Json* replica = nullptr;
      const Json replicas = v->value("replicas", Json::array());  // outlives `replica`
      for (const auto& r : replicas) {
        if (r.value("index", uint64_t{~0ULL}) == index) {
          replica = &r;
        }
      }
      if (replica == nullptr) {
        if (!s.json()) {
          reporter.finish("failed: the replica is gone from the volume");
        }
        return ExitCode::kFailed;
      }
      const std::string state = replica->value("state", "");
      const Json rebuild = v->value("rebuild", Json::object());
      auto last_error = [&] {
        std::string e = replica->value("last_error", Json()).is_string()
                            ? replica->value("last_error", "")
                            : std::string();
        if (e.empty() && rebuild.value("last_error", Json()).is_string()) {
          e = rebuild.value("last_error", "");
        }
        return e.empty() ? std::string("no reason given") : e;
      };
      if (state == "in_sync") {
        if (s.json()) {
          s.env().out << replica->dump(2) << '\n';
        } else {
          reporter.update({100, -1, 0});
          reporter.finish("done, replica in sync (generation " +
                          format_generation(replica->value("generation", Json())) + ")");
        }
        return ExitCode::kOk;
      }
      if (state == "failed" || state == "removed") {
        if (s.json()) {
          s.env().out << replica->dump(2) << '\n';
        }
        s.env().err << kProgram << ": " << label << " " << state << ": " << last_error() << '\n';
        if (!s.json()) {
          reporter.finish(state);
        }
        return ExitCode::kFailed;
      }
      if (!s.json() && rebuild.value("active", false)) {
        reporter.update({rebuild.value("percent", 0.0), rebuild.value("bytes_per_second", -1.0),
                         rebuild.value("eta_seconds", -1.0)});
      }
    } catch (const Json::exception& e) {
      s.env().err << kProgram << ": unexpected answer from ublk-volumed: " << e.what() << '\n';
      return ExitCode::kFailed;
    }
    if (timeout > 0 && waited >= timeout) {
      s.env().err << kProgram << ": " << label << ": still not in sync after " << timeout
                  << " s (it continues in the daemon; watch it with: ublk-volume volume show "
                  << volume << ")\n";
      return ExitCode::kFailed;
    }
    s.env().sleep(kPollSeconds);
    waited += kPollSeconds;
  }
}

// Polls volume.show until the verify started after `runs_before` runs
// finished. 0: nothing left differing; 1: mismatches left (not repaired),
// the run stopped, or `timeout` seconds passed (0 = no limit).
ExitCode wait_for_verify(Session& s, const std::string& volume, uint64_t runs_before,
                         double timeout) {
  const std::string label = "verify " + volume;
  ProgressReporter reporter(s.env().out, s.env().stdout_is_tty, label);
  double waited = 0;
  for (;;) {
    auto v = s.call(Method::kVolumeShow, {{"name", volume}});
    if (!v) {
      return s.status();
    }
    try {
      const Json verify = v->value("verify", Json::object());
      const Json last = verify.value("last", Json());
      if (!verify.value("active", false) && verify.value("runs", uint64_t{0}) > runs_before &&
          last.is_object()) {
        const uint64_t left = last.value("repair", false) ? last.value("unrepaired_bytes", 0ULL)
                                                          : last.value("mismatched_bytes", 0ULL);
        const std::string error = last.value("error", "");
        if (s.json()) {
          s.env().out << verify.dump(2) << '\n';
        } else {
          reporter.finish(error.empty() ? "done" : "stopped: " + error);
          render_verify(s.env().out, verify);
        }
        return left == 0 && error.empty() ? ExitCode::kOk : ExitCode::kFailed;
      }
      if (!s.json() && verify.value("active", false)) {
        reporter.update({verify.value("percent", 0.0), verify.value("bytes_per_second", -1.0), -1});
      }
    } catch (const Json::exception& e) {
      s.env().err << kProgram << ": unexpected answer from ublk-volumed: " << e.what() << '\n';
      return ExitCode::kFailed;
    }
    if (timeout > 0 && waited >= timeout) {
      s.env().err << kProgram << ": " << label << ": not finished after " << timeout
                  << " s (it continues in the daemon; watch it with: ublk-volume volume show "
                  << volume << ")\n";
      return ExitCode::kFailed;
    }
    s.env().sleep(kPollSeconds);
    waited += kPollSeconds;
  }
}

// --- stats ---------------------------------------------------------------

struct StatsOptions {
  std::string volume;
  double interval = 1.0;
  uint64_t count = 0;  // 0: one report, or until Ctrl-C with --watch
  bool watch = false;
  bool prometheus = false;
  std::string output;
};

std::optional<StatsSample> sample_stats(Session& s, const StatsOptions& o) {
  Json params = Json::object();
  if (!o.volume.empty()) {
    params["volume"] = o.volume;
  }
  auto result = s.call(Method::kStats, params);
  if (!result) {
    return std::nullopt;
  }
  auto sample = parse_stats(*result);
  if (!sample) {
    s.env().err << kProgram << ": " << sample.error().message() << '\n';
    return std::nullopt;
  }
  return std::move(*sample);
}

// Writes `text` to `path` atomically (temp file + fsync + rename), so that
// node_exporter's textfile collector never reads a half-written file.
bool write_atomically(Session& s, const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream file(tmp, std::ios::trunc);
    file << text;
    file.flush();
    if (!file) {
      s.env().err << kProgram << ": --output: cannot write " << tmp << '\n';
      (void)std::remove(tmp.c_str());  // best effort: the failure is already reported
      return false;
    }
  }
  if (int fd = ::open(tmp.c_str(), O_RDONLY | O_CLOEXEC); fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    s.env().err << kProgram << ": --output: cannot rename " << tmp << " to " << path << '\n';
    (void)std::remove(tmp.c_str());  // best effort: the failure is already reported
    return false;
  }
  return true;
}

ExitCode run_stats(Session& s, const StatsOptions& o) {
  if (!(o.interval > 0) || !std::isfinite(o.interval)) {
    s.env().err << kProgram << ": --interval " << o.interval
                << ": must be a positive number of seconds\n";
    return ExitCode::kUsage;
  }
  if (!o.output.empty() && !o.prometheus) {
    s.env().err << kProgram << ": --output needs --prometheus\n";
    return ExitCode::kUsage;
  }
  const bool forever = o.watch && o.count == 0;
  const uint64_t reports = o.count == 0 ? 1 : o.count;
  if (o.prometheus) {
    // Cumulative values: Prometheus computes rates itself. With --watch the
    // file (or stdout) is refreshed every interval.
    for (uint64_t i = 0; forever || i < reports; ++i) {
      if (i > 0) {
        s.env().sleep(o.interval);
      }
      auto sample = sample_stats(s, o);
      if (!sample) {
        return s.status();
      }
      const std::string text = prometheus_text(*sample);
      if (o.output.empty()) {
        s.env().out << text;
        s.env().out.flush();
      } else if (!write_atomically(s, o.output, text)) {
        return ExitCode::kFailed;
      }
    }
    return ExitCode::kOk;
  }
  auto before = sample_stats(s, o);
  if (!before) {
    return s.status();
  }
  for (uint64_t i = 0; forever || i < reports; ++i) {
    s.env().sleep(o.interval);
    auto after = sample_stats(s, o);
    if (!after) {
      return s.status();
    }
    auto rates = compute_rates(*before, *after);
    // Without a volume name, volumes that are not exposed (all zeros) are
    // left out of the report.
    if (o.volume.empty()) {
      std::erase_if(rates, [](const VolumeRates& r) { return !r.exposed; });
    }
    if (s.json()) {
      s.env().out << rates_to_json(rates, after->time_ns).dump() << '\n';
    } else {
      if (i > 0) {
        s.env().out << '\n';
      }
      if (rates.empty()) {
        s.env().out << (o.volume.empty() ? "no exposed volumes\n" : "volume is not exposed\n");
      } else {
        print_rates_table(s.env().out, rates);
      }
    }
    s.env().out.flush();
    before = std::move(after);
  }
  return ExitCode::kOk;
}

// --- the command tree ----------------------------------------------------

void add_store_commands(CLI::App& app, CommandTree& tree) {
  CLI::App* store =
      app.add_subcommand("store", "Manage stores: devices or files that hold replicas");
  store->require_subcommand(1);
  store->footer(
      "Examples:\n"
      "  ublk-volume store add s0 /dev/nvme0n1 --format\n"
      "  ublk-volume store add s1 /var/lib/ublk-volumed/s1.img --format --size 100G\n"
      "  ublk-volume store list\n");

  struct AddArgs {
    std::string name, path, size, extent_size;
    bool format = false;
    bool force = false;
  };
  auto add = std::make_shared<AddArgs>();
  CLI::App* c = tree.add(
      store, "add", Method::kStoreAdd,
      "  ublk-volume store add s0 /dev/nvme0n1              # open a formatted store\n"
      "  ublk-volume store add s0 /dev/nvme0n1 --format     # format the device (erases it)\n"
      "  ublk-volume store add s1 /srv/s1.img --format --size 20G   # new file-backed store\n",
      [add](Session& s) {
        Json params = {{"name", add->name}, {"path", add->path}};
        if (add->format) {
          params["format"] = true;
        }
        if (add->force) {
          if (!add->format) {
            s.env().err << kProgram << ": --force only applies to --format\n";
            return ExitCode::kUsage;
          }
          params["force"] = true;
        }
        if (!add->size.empty()) {
          if (!add->format) {
            s.env().err << kProgram << ": --size creates a new store file and needs --format\n";
            return ExitCode::kUsage;
          }
          auto size = size_argument(s, add->size, "--size");
          if (!size) {
            return ExitCode::kUsage;
          }
          params["size"] = *size;
        }
        if (!add->extent_size.empty()) {
          auto extent = size_argument(s, add->extent_size, "--extent-size");
          if (!extent) {
            return ExitCode::kUsage;
          }
          params["extent_size"] = *extent;
        }
        auto r = s.call(Method::kStoreAdd, params);
        if (!r) {
          return s.status();
        }
        return s.done(*r, "added store '" + add->name + "' (" + add->path + ", " +
                              format_size(r->value("size_bytes", uint64_t{0})) + ")");
      });
  c->add_option("name", add->name, "Store name (letters, digits, . _ -)")->required();
  c->add_option("path", add->path, "Block device or file")->required();
  c->add_flag("--format", add->format, "Write a new, empty store (destroys what PATH holds)");
  c->add_flag("--force", add->force,
              "With --format: format even if PATH holds a DBS store or a filesystem (never a "
              "live store or a device in use)");
  c->add_option("--size", add->size,
                "Create PATH as a file of this size if it does not exist (with --format), "
                "e.g. 20G");
  c->add_option("--extent-size", add->extent_size,
                "Allocation unit of a new store (with --format), e.g. 1M");

  tree.add(store, "list", Method::kStoreList,
           "  ublk-volume store list\n  ublk-volume store list --json | jq '.stores[].name'\n",
           [](Session& s) {
             auto r = s.call(Method::kStoreList);
             return r ? s.print(*r, render_store_list) : s.status();
           });

  auto name = std::make_shared<std::string>();
  c = tree.add(store, "show", Method::kStoreShow, "  ublk-volume store show s0\n",
               [name](Session& s) {
                 auto r = s.call(Method::kStoreShow, {{"name", *name}});
                 return r ? s.print(*r, render_store) : s.status();
               });
  c->add_option("name", *name, "Store name")->required();

  c = tree.add(store, "remove", Method::kStoreRemove, "  ublk-volume store remove s0\n",
               [name](Session& s) {
                 auto r = s.call(Method::kStoreRemove, {{"name", *name}});
                 return r ? s.done(*r, "removed store '" + *name + "'") : s.status();
               });
  c->add_option("name", *name, "Store name")->required();

  c = tree.add(store, "check", Method::kStoreCheck, "  ublk-volume store check s0\n",
               [name](Session& s) {
                 auto r = s.call(Method::kStoreCheck, {{"name", *name}});
                 if (!r) {
                   return s.status();
                 }
                 const ExitCode printed = s.print(*r, [&](std::ostream& out, const Json& result) {
                   render_store_check(out, *name, result);
                 });
                 if (printed != ExitCode::kOk) {
                   return printed;
                 }
                 return r->value("ok", false) ? ExitCode::kOk : ExitCode::kFailed;
               });
  c->add_option("name", *name, "Store name")->required();

  auto gc_dry_run = std::make_shared<bool>(false);
  c = tree.add(store, "gc", Method::kStoreGc,
               "  ublk-volume store gc s0 --dry-run    # list them\n"
               "  ublk-volume store gc s0              # delete them\n",
               [name, gc_dry_run](Session& s) {
                 Json params = {{"name", *name}};
                 if (*gc_dry_run) {
                   params["dry_run"] = true;
                 }
                 auto r = s.call(Method::kStoreGc, params);
                 return r ? s.print(*r,
                                    [&](std::ostream& out, const Json& result) {
                                      render_store_gc(out, *name, result);
                                    })
                          : s.status();
               });
  c->add_option("name", *name, "Store name")->required();
  c->add_flag("--dry-run", *gc_dry_run, "Only list the orphans");
}

void add_volume_commands(CLI::App& app, CommandTree& tree) {
  CLI::App* volume = app.add_subcommand("volume", "Manage volumes: replicated block devices");
  volume->require_subcommand(1);
  volume->footer(
      "Examples:\n"
      "  ublk-volume volume create vol0 --size 10G --store s0 s1 s2\n"
      "  ublk-volume volume expose vol0          # -> /dev/ublkbN\n"
      "  ublk-volume volume show vol0\n");

  struct CreateArgs {
    std::string name, size;
    std::vector<std::string> stores;
    uint64_t min_replicas = 0;
  };
  auto create = std::make_shared<CreateArgs>();
  CLI::App* c = tree.add(
      volume, "create", Method::kVolumeCreate,
      "  ublk-volume volume create vol0 --size 10G --store s0 s1 s2\n"
      "  ublk-volume volume create db --size 1.5T --store s0,s1 --min-replicas 1\n",
      [create](Session& s) {
        auto size = size_argument(s, create->size, "--size");
        if (!size) {
          return ExitCode::kUsage;
        }
        Json params = {{"name", create->name}, {"size", *size}, {"stores", create->stores}};
        if (create->min_replicas > 0) {
          params["min_replicas"] = create->min_replicas;
        }
        auto r = s.call(Method::kVolumeCreate, params);
        if (!r) {
          return s.status();
        }
        return s.done(*r, "created volume '" + create->name + "' (" + format_size(*size) + ", " +
                              std::to_string(create->stores.size()) + " replica(s) on " +
                              join(create->stores) + ")");
      });
  c->add_option("name", create->name, "Volume name")->required();
  c->add_option("-s,--size", create->size, "Size, e.g. 10G, 512M, 1.5T (multiple of 4K)")
      ->required();
  c->add_option("--store", create->stores, "Stores for the replicas (1 to 4, distinct)")
      ->required()
      ->delimiter(',');
  c->add_option("--min-replicas", create->min_replicas,
                "Replicas that must stay in sync for the volume to stay online "
                "(default: the daemon's config)")
      ->check(CLI::PositiveNumber);

  auto adopt = std::make_shared<CreateArgs>();
  c = tree.add(volume, "import", Method::kVolumeImport,
               "  ublk-volume volume import vol0 --store s0 s1\n", [adopt](Session& s) {
                 Json params = {{"name", adopt->name}, {"stores", adopt->stores}};
                 if (adopt->min_replicas > 0) {
                   params["min_replicas"] = adopt->min_replicas;
                 }
                 auto r = s.call(Method::kVolumeImport, params);
                 if (!r) {
                   return s.status();
                 }
                 return s.done(*r, "imported volume '" + adopt->name + "' (" +
                                       format_size(r->value("size_bytes", uint64_t{0})) + ", " +
                                       std::to_string(adopt->stores.size()) + " replica(s) on " +
                                       join(adopt->stores) + ")");
               });
  c->add_option("name", adopt->name, "Name of the orphan replicas (becomes the volume name)")
      ->required();
  c->add_option("--store", adopt->stores, "Stores holding the replicas (1 to 4)")
      ->required()
      ->delimiter(',');
  c->add_option("--min-replicas", adopt->min_replicas,
                "Replicas that must stay in sync (default: the daemon's config)")
      ->check(CLI::PositiveNumber);

  tree.add(volume, "list", Method::kVolumeList, "  ublk-volume volume list\n", [](Session& s) {
    auto r = s.call(Method::kVolumeList);
    return r ? s.print(*r, render_volume_list) : s.status();
  });

  auto name = std::make_shared<std::string>();
  c = tree.add(volume, "show", Method::kVolumeShow, "  ublk-volume volume show vol0\n",
               [name](Session& s) {
                 auto r = s.call(Method::kVolumeShow, {{"name", *name}});
                 return r ? s.print(*r, render_volume) : s.status();
               });
  c->add_option("name", *name, "Volume name")->required();

  c = tree.add(volume, "delete", Method::kVolumeDelete,
               "  ublk-volume volume unexpose vol0 && ublk-volume volume delete vol0\n",
               [name](Session& s) {
                 auto r = s.call(Method::kVolumeDelete, {{"name", *name}});
                 return r ? s.done(*r, "deleted volume '" + *name + "'") : s.status();
               });
  c->add_option("name", *name, "Volume name")->required();

  struct ExposeArgs {
    std::string name;
    uint64_t queues = 0, queue_depth = 0;
  };
  auto expose = std::make_shared<ExposeArgs>();
  c = tree.add(volume, "expose", Method::kVolumeExpose,
               "  ublk-volume volume expose vol0\n"
               "  ublk-volume volume expose vol0 --queues 4 --queue-depth 128\n",
               [expose](Session& s) {
                 Json params = {{"name", expose->name}};
                 if (expose->queues > 0) {
                   params["queues"] = expose->queues;
                 }
                 if (expose->queue_depth > 0) {
                   params["queue_depth"] = expose->queue_depth;
                 }
                 auto r = s.call(Method::kVolumeExpose, params);
                 if (!r) {
                   return s.status();
                 }
                 std::string path = "?";
                 if (auto d = r->find("device"); d != r->end() && d->is_object()) {
                   path = d->value("path", "?");
                 }
                 return s.done(*r, "exposed volume '" + expose->name + "' as " + path);
               });
  c->add_option("name", expose->name, "Volume name")->required();
  c->add_option("--queues", expose->queues, "Hardware queues (default: the daemon's config)")
      ->check(CLI::PositiveNumber);
  c->add_option("--queue-depth", expose->queue_depth,
                "Requests in flight per queue (default: the daemon's config)")
      ->check(CLI::PositiveNumber);

  c = tree.add(volume, "unexpose", Method::kVolumeUnexpose,
               "  umount /mnt/vol0 && ublk-volume volume unexpose vol0\n", [name](Session& s) {
                 auto r = s.call(Method::kVolumeUnexpose, {{"name", *name}});
                 return r ? s.done(*r, "unexposed volume '" + *name + "'") : s.status();
               });
  c->add_option("name", *name, "Volume name")->required();

  struct ResizeArgs {
    std::string name, size;
  };
  auto resize = std::make_shared<ResizeArgs>();
  c = tree.add(volume, "resize", Method::kVolumeResize, "  ublk-volume volume resize vol0 20G\n",
               [resize](Session& s) {
                 auto size = size_argument(s, resize->size, "SIZE");
                 if (!size) {
                   return ExitCode::kUsage;
                 }
                 auto r = s.call(Method::kVolumeResize, {{"name", resize->name}, {"size", *size}});
                 if (!r) {
                   return s.status();
                 }
                 return s.done(*r,
                               "resized volume '" + resize->name + "' to " + format_size(*size));
               });
  c->add_option("name", resize->name, "Volume name")->required();
  c->add_option("size", resize->size, "New size, e.g. 20G")->required();
}

void add_snapshot_commands(CLI::App& app, CommandTree& tree) {
  CLI::App* snapshot = app.add_subcommand("snapshot", "Manage snapshots and clones of a volume");
  snapshot->require_subcommand(1);
  snapshot->footer(
      "Examples:\n"
      "  ublk-volume snapshot create vol0 before-upgrade\n"
      "  ublk-volume snapshot clone vol0 before-upgrade vol0-test\n");

  struct Args {
    std::string volume, name, clone;
  };
  auto a = std::make_shared<Args>();
  auto volume_and_name = [a](CLI::App* c) {
    c->add_option("volume", a->volume, "Volume name")->required();
    c->add_option("name", a->name, "Snapshot name")->required();
  };

  volume_and_name(tree.add(
      snapshot, "create", Method::kSnapshotCreate,
      "  ublk-volume snapshot create vol0 nightly-2026-11-21\n", [a](Session& s) {
        auto r = s.call(Method::kSnapshotCreate, {{"volume", a->volume}, {"name", a->name}});
        return r ? s.done(*r, "created snapshot '" + a->name + "' of volume '" + a->volume + "'")
                 : s.status();
      }));

  CLI::App* c = tree.add(snapshot, "list", Method::kSnapshotList,
                         "  ublk-volume snapshot list vol0\n", [a](Session& s) {
                           auto r = s.call(Method::kSnapshotList, {{"volume", a->volume}});
                           return r ? s.print(*r, render_snapshot_list) : s.status();
                         });
  c->add_option("volume", a->volume, "Volume name")->required();

  volume_and_name(tree.add(
      snapshot, "delete", Method::kSnapshotDelete,
      "  ublk-volume snapshot delete vol0 nightly-2026-11-21\n", [a](Session& s) {
        auto r = s.call(Method::kSnapshotDelete, {{"volume", a->volume}, {"name", a->name}});
        return r ? s.done(*r, "deleted snapshot '" + a->name + "' of volume '" + a->volume + "'")
                 : s.status();
      }));

  volume_and_name(tree.add(
      snapshot, "revert", Method::kSnapshotRevert,
      "  ublk-volume volume unexpose vol0\n  ublk-volume snapshot revert vol0 before-upgrade\n",
      [a](Session& s) {
        auto r = s.call(Method::kSnapshotRevert, {{"volume", a->volume}, {"name", a->name}});
        return r ? s.done(*r, "reverted volume '" + a->volume + "' to snapshot '" + a->name + "'")
                 : s.status();
      }));

  c = tree.add(snapshot, "clone", Method::kSnapshotClone,
               "  ublk-volume snapshot clone vol0 before-upgrade vol0-test\n", [a](Session& s) {
                 auto r =
                     s.call(Method::kSnapshotClone,
                            {{"volume", a->volume}, {"snapshot", a->name}, {"clone", a->clone}});
                 return r ? s.done(*r, "cloned snapshot '" + a->name + "' of volume '" + a->volume +
                                           "' as volume '" + a->clone + "'")
                          : s.status();
               });
  c->add_option("volume", a->volume, "Volume name")->required();
  c->add_option("snapshot", a->name, "Snapshot name")->required();
  c->add_option("clone", a->clone, "Name of the new volume")->required();
}

void add_replica_commands(CLI::App& app, CommandTree& tree) {
  CLI::App* replica = app.add_subcommand("replica", "Inspect and repair a volume's replicas");
  replica->require_subcommand(1);
  replica->footer(
      "Replace a failed replica:\n"
      "  ublk-volume replica list vol0\n"
      "  ublk-volume replica remove vol0 1\n"
      "  ublk-volume replica add vol0 s3 --wait\n");

  struct Args {
    std::string volume, store, reason;
    uint64_t index = 0;
    bool wait = false;
    bool force = false;
    bool repair = false;
    double rate = -1;  // replica verify --rate (MiB/s); < 0: the daemon's default
    double timeout = 0;
  };
  auto a = std::make_shared<Args>();
  auto add_wait = [a](CLI::App* c) {
    c->add_flag("-w,--wait", a->wait, "Wait until the replica is in sync, showing progress");
    c->add_option("--timeout", a->timeout, "With --wait: give up after this many seconds (exit 1)");
  };

  CLI::App* c = tree.add(replica, "list", Method::kReplicaList, "  ublk-volume replica list vol0\n",
                         [a](Session& s) {
                           auto r = s.call(Method::kReplicaList, {{"volume", a->volume}});
                           if (!r) {
                             return s.status();
                           }
                           return s.print(*r, [](std::ostream& out, const Json& result) {
                             render_replica_list(out, result.at("replicas"));
                           });
                         });
  c->add_option("volume", a->volume, "Volume name")->required();

  c = tree.add(replica, "add", Method::kReplicaAdd, "  ublk-volume replica add vol0 s3 --wait\n",
               [a](Session& s) {
                 auto r = s.call(Method::kReplicaAdd, {{"volume", a->volume}, {"store", a->store}});
                 if (!r) {
                   return s.status();
                 }
                 const uint64_t index = r->value("index", uint64_t{0});
                 if (a->wait) {
                   return wait_for_replica(s, a->volume, index, a->timeout);
                 }
                 return s.done(*r, "added replica " + std::to_string(index) + " of volume '" +
                                       a->volume + "' on store '" + a->store +
                                       "' (rebuilding; follow it with: ublk-volume volume show " +
                                       a->volume + ")");
               });
  c->add_option("volume", a->volume, "Volume name")->required();
  c->add_option("store", a->store, "Store for the new replica")->required();
  add_wait(c);

  c = tree.add(
      replica, "remove", Method::kReplicaRemove, "  ublk-volume replica remove vol0 1\n",
      [a](Session& s) {
        auto r = s.call(Method::kReplicaRemove, {{"volume", a->volume}, {"index", a->index}});
        return r ? s.done(*r, "removed replica " + std::to_string(a->index) + " of volume '" +
                                  a->volume + "'")
                 : s.status();
      });
  c->add_option("volume", a->volume, "Volume name")->required();
  c->add_option("index", a->index, "Replica index (see replica list)")
      ->required()
      ->check(CLI::NonNegativeNumber);

  c = tree.add(
      replica, "rebuild", Method::kReplicaRebuild, "  ublk-volume replica rebuild vol0 1 --wait\n",
      [a](Session& s) {
        auto r = s.call(Method::kReplicaRebuild, {{"volume", a->volume}, {"index", a->index}});
        if (!r) {
          return s.status();
        }
        if (a->wait) {
          return wait_for_replica(s, a->volume, a->index, a->timeout);
        }
        return s.done(*r, "rebuilding replica " + std::to_string(a->index) + " of volume '" +
                              a->volume + "' (follow it with: ublk-volume volume show " +
                              a->volume + ")");
      });
  c->add_option("volume", a->volume, "Volume name")->required();
  c->add_option("index", a->index, "Replica index (see replica list)")
      ->required()
      ->check(CLI::NonNegativeNumber);
  add_wait(c);

  c = tree.add(
      replica, "verify", Method::kReplicaVerify,
      "  ublk-volume replica verify vol0 --wait\n"
      "  ublk-volume replica verify vol0 --repair --rate 100 --wait\n",
      [a](Session& s) {
        auto before = s.call(Method::kVolumeShow, {{"name", a->volume}});
        if (!before) {
          return s.status();
        }
        const uint64_t runs = before->value("verify", Json::object()).value("runs", uint64_t{0});
        Json params = {{"volume", a->volume}, {"repair", a->repair}};
        if (a->rate >= 0) {
          params["rate"] = static_cast<uint64_t>(a->rate);
        }
        auto r = s.call(Method::kReplicaVerify, params);
        if (!r) {
          return s.status();
        }
        if (a->wait) {
          return wait_for_verify(s, a->volume, runs, a->timeout);
        }
        return s.done(*r, std::string(a->repair ? "verify + repair" : "verify") + " of volume '" +
                              a->volume + "' started (follow it with: ublk-volume volume show " +
                              a->volume + ")");
      });
  c->add_option("volume", a->volume, "Volume name")->required();
  c->add_flag("--repair", a->repair,
              "Rewrite blocks that differ on the replicas that disagree with a strict majority "
              "(with 2 replicas nothing is guessed: reported, not repaired)");
  c->add_option("--rate", a->rate,
                "Throttle in MiB/s (0 = unthrottled; default: the daemon's scrub_mb_per_s)")
      ->check(CLI::NonNegativeNumber);
  c->add_flag("-w,--wait", a->wait,
              "Wait for the result, showing progress; exit 1 if differences remain");
  c->add_option("--timeout", a->timeout, "With --wait: give up after this many seconds (exit 1)");

  c = tree.add(replica, "fail", Method::kReplicaFail,
               "  ublk-volume replica fail vol0 1 --reason 'disk replacement'\n", [a](Session& s) {
                 Json params = {{"volume", a->volume}, {"index", a->index}};
                 if (!a->reason.empty()) {
                   params["reason"] = a->reason;
                 }
                 if (a->force) {
                   params["force"] = true;
                 }
                 auto r = s.call(Method::kReplicaFail, params);
                 return r ? s.done(*r, "failed replica " + std::to_string(a->index) +
                                           " of volume '" + a->volume + "'")
                          : s.status();
               });
  c->add_option("volume", a->volume, "Volume name")->required();
  c->add_option("index", a->index, "Replica index (see replica list)")
      ->required()
      ->check(CLI::NonNegativeNumber);
  c->add_option("--reason", a->reason, "Why (kept in the volume's events)");
  c->add_flag("--force", a->force,
              "Fail it even if fewer than min_replicas replicas stay in sync (the volume goes "
              "offline: I/O fails until a replica is rebuilt)");
}

// After a parse error: if a command word names no command at its level,
// say which word and what the choices are (CLI11 only says "A subcommand is
// required").
std::string unknown_command(const CLI::App& app, int argc, const char* const* argv) {
  const CLI::App* level = &app;
  for (int i = 1; i < argc; ++i) {
    const std::string word = argv[i];
    if (word.starts_with("-")) {
      if (word == "--socket") {
        ++i;  // skip its value
      }
      continue;
    }
    auto visible =
        level->get_subcommands([](const CLI::App* sub) { return !sub->get_group().empty(); });
    if (visible.empty()) {
      return {};  // a leaf's positional argument
    }
    const CLI::App* next = nullptr;
    std::string choices;
    for (const CLI::App* sub : visible) {
      if (sub->get_name() == word) {
        next = sub;
      }
      choices += (choices.empty() ? "" : ", ") + sub->get_name();
    }
    if (next == nullptr) {
      const std::string where =
          level == &app ? std::string(kProgram) : std::string(kProgram) + " " + level->get_name();
      return std::string("unknown command '")
          .append(word)
          .append("' for '")
          .append(where)
          .append("' (one of: ")
          .append(choices)
          .append(")");
    }
    level = next;
  }
  return {};
}

}  // namespace

int run_cli(int argc, const char* const* argv, const CliEnvironment& env) {
  CLI::App app(
      "ublk-volume: manage ublk-volumed's stores, replicated volumes, snapshots and replicas.",
      kProgram);
  app.require_subcommand(1);
  app.fallthrough();  // global options may follow the subcommand
  app.set_help_all_flag("--help-all", "Help for every command");
  GlobalOptions options;
  app.add_option("--socket", options.socket, "ublk-volumed's control socket")
      ->envname("UBLK_VOLUME_SOCKET")
      ->capture_default_str();
  app.add_flag("--json", options.json,
               "Print the daemon's result as JSON (for scripts; errors as {\"ok\":false,...})");
  app.add_option("--timeout", options.timeout,
                 "Seconds to wait for the daemon to answer one request (0 = forever); "
                 "--wait commands poll, so this bounds each poll, not the wait. Put it before "
                 "the command for `replica add/rebuild`, whose own --timeout bounds the wait")
      ->envname("UBLK_VOLUME_TIMEOUT")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();

  CommandTree tree;
  add_store_commands(app, tree);
  add_volume_commands(app, tree);
  add_snapshot_commands(app, tree);
  add_replica_commands(app, tree);

  auto stats = std::make_shared<StatsOptions>();
  CLI::App* c = tree.add(
      &app, "stats", Method::kStats,
      "  ublk-volume stats                    # one 1-second report\n"
      "  ublk-volume stats vol0 --watch -i 2  # every 2 s until Ctrl-C\n"
      "  ublk-volume stats --count 5 --json   # 5 reports, one JSON object per line\n"
      "  ublk-volume stats --prometheus -o /var/lib/node_exporter/ublk.prom\n"
      "Columns: r/s w/s requests per second; rMB/s wMB/s 10^6 bytes per second;\n"
      "r_p50 r_p99 w_p50 w_p99 latency percentiles over the interval; errors in the interval.\n",
      [stats](Session& s) { return run_stats(s, *stats); });
  c->add_option("volume", stats->volume, "Only this volume");
  c->add_option("-i,--interval", stats->interval, "Seconds between samples")->capture_default_str();
  c->add_option("-c,--count", stats->count,
                "Number of reports (default: 1; with --watch: until Ctrl-C)")
      ->check(CLI::NonNegativeNumber);
  c->add_flag("-w,--watch", stats->watch, "Keep reporting until Ctrl-C (or --count reports)");
  c->add_flag("--prometheus", stats->prometheus,
              "Cumulative counters and histograms in Prometheus text format");
  c->add_option("-o,--output", stats->output,
                "With --prometheus: write to FILE atomically (node_exporter textfile collector)");

  tree.add(&app, "status", Method::kDaemonStatus, "  ublk-volume status\n", [](Session& s) {
    auto r = s.call(Method::kDaemonStatus);
    return r ? s.print(*r, render_status) : s.status();
  });

  tree.add(&app, "version", "Print the CLI's and the daemon's versions", "",
           [&env, &options](Session&) {
             // Needs no daemon: report it when it answers, say so when it does not.
             Json daemon_status;
             std::string daemon_problem;
             if (auto client = env.connect(options.socket); client) {
               auto response =
                   (*client)->call(daemon::method_name(Method::kDaemonStatus), Json::object());
               if (response && response->ok) {
                 daemon_status = response->result;
               } else {
                 daemon_problem = response ? response->message : response.error().message();
               }
             } else {
               daemon_problem = client.error().message();
             }
             if (options.json) {
               env.out << Json{{"cli", version_string()},
                               {"protocol", daemon::kProtocolVersion},
                               {"daemon", daemon_status.is_null()
                                              ? Json(nullptr)
                                              : Json(daemon_status.value("version", ""))}}
                              .dump(2)
                       << '\n';
             } else {
               env.out << "ublk-volume " << version_string() << " (control protocol v"
                       << daemon::kProtocolVersion << ")\n";
               if (daemon_problem.empty()) {
                 env.out << "ublk-volumed " << daemon_status.value("version", "?") << '\n';
               } else {
                 env.out << "ublk-volumed: not reachable at " << options.socket << " ("
                         << daemon_problem << ")\n";
               }
             }
             return ExitCode::kOk;
           });

  std::string shell;
  c = tree.add(&app, "completion", "Print the shell completion script",
               "  ublk-volume completion bash > /etc/bash_completion.d/ublk-volume\n"
               "  source <(ublk-volume completion bash)\n",
               [&env](Session&) {
                 env.out << kBashCompletionScript;
                 return ExitCode::kOk;
               });
  c->add_option("shell", shell, "Shell (bash)")->required()->check(CLI::IsMember({"bash"}));

  // Hidden: names for the bash completion script, one per line.
  auto names = std::make_shared<std::vector<std::string>>();
  c = tree.add(&app, "__names", "", "", [names](Session& s) {
    const std::string kind = names->empty() ? "" : (*names)[0];
    std::optional<Json> r;
    const char* key = nullptr;
    if (kind == "stores") {
      r = s.call(Method::kStoreList);
      key = "stores";
    } else if (kind == "volumes") {
      r = s.call(Method::kVolumeList);
      key = "volumes";
    } else if (kind == "snapshots" && names->size() == 2) {
      r = s.call(Method::kSnapshotList, {{"volume", (*names)[1]}});
      key = "snapshots";
    } else {
      return ExitCode::kUsage;
    }
    if (!r) {
      return s.status();
    }
    for (const auto& item : r->value(key, Json::array())) {
      if (item.is_string()) {
        s.env().out << item.get<std::string>() << '\n';
      } else if (item.is_object() && item.contains("name") && item["name"].is_string()) {
        s.env().out << item["name"].get<std::string>() << '\n';
      }
    }
    return ExitCode::kOk;
  });
  c->add_option("what", *names, "stores | volumes | snapshots VOLUME");
  c->group("");  // not listed in --help

  app.footer(
      std::string(
          "Every command has --help with examples, e.g. ublk-volume volume create --help.\n"
          "Sizes: binary units K M G T P (10G = 10 GiB), optional iB/B suffix, 1.5T allowed.\n"
          "Environment: UBLK_VOLUME_SOCKET overrides the default socket, UBLK_VOLUME_TIMEOUT\n"
          "the default --timeout.\n\n") +
      exit_code_help());

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (const std::string unknown = unknown_command(app, argc, argv); !unknown.empty()) {
      env.err << kProgram << ": " << unknown << '\n';
      return to_int(ExitCode::kUsage);
    }
    const int status = app.exit(e, env.out, env.err);
    return status == 0 ? to_int(ExitCode::kOk) : to_int(ExitCode::kUsage);
  }

  Session session(env, options);
  // The deepest parsed command is the one to run (groups require one).
  for (auto& [command, handler] : tree.handlers) {
    if (command->parsed()) {
      return to_int(handler(session));
    }
  }
  env.err << kProgram << ": no command given (try --help)\n";
  return to_int(ExitCode::kUsage);
}

}  // namespace ublkvol::cli
