#include "cli.h"

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "ublkvol/common/version.h"

#include "commands.h"
#include "exit_code.h"
#include "render.h"
#include "session.h"

namespace ublkvol::cli {
namespace {

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
  add_export_commands(app, tree);
  add_snapshot_commands(app, tree);
  add_backup_commands(app, tree);
  add_replica_commands(app, tree);

  add_stats_command(app, tree);

  tree.add(&app, "status", Method::kDaemonStatus, "  ublk-volume status\n",
           [](Session& s) { return s.show(Method::kDaemonStatus, Json::object(), render_status); });

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
  CLI::App* c = tree.add(&app, "completion", "Print the shell completion script",
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
