// What every ublk-volume command shares: the global options, the Session
// (one invocation's connection to the daemon; prints refusals and results)
// and the CommandTree the command files (commands.h) add to.
#pragma once

// GCC 12 reports a null dereference inside CLI11's split() once it is
// inlined into a small translation unit (a false positive; see also
// src/ublk/replica_check_main.cpp): off for CLI11's own lines only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wnull-dereference"
#include <CLI/CLI.hpp>
#pragma GCC diagnostic pop
#include <cerrno>
#include <chrono>
#include <cmath>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "ublkvol/daemon/methods.h"

#include "cli.h"
#include "exit_code.h"
#include "size.h"

namespace ublkvol::cli {

using daemon::Method;

inline constexpr const char* kProgram = "ublk-volume";
inline constexpr double kPollSeconds = 0.5;

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

  // Calls `method` and prints its result through `human` (see print()).
  template <typename Render>
  ExitCode show(Method method, const Json& params, Render&& human) {
    auto result = call(method, params);
    return result ? print(*result, std::forward<Render>(human)) : status();
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
inline std::optional<uint64_t> size_argument(Session& s, const std::string& text,
                                             const char* argument, SizeRules rules = {}) {
  auto size = parse_size(text, argument, rules);
  if (!size) {
    s.env().err << kProgram << ": " << size.error().message() << '\n';
    return std::nullopt;
  }
  return *size;
}

inline std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& item : items) {
    out += (out.empty() ? "" : ", ") + item;
  }
  return out;
}

}  // namespace ublkvol::cli
