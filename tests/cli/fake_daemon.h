// A scripted stand-in for ublk-volumed: records every request the CLI sends
// and answers from a per-method list of canned responses (the last one
// repeats). Lets tests check argv -> request params, result -> output, and
// error code -> exit status without a daemon.
#pragma once

#include <deque>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "cli.h"
#include "control_client.h"

namespace ublkvol::cli::testing {

struct Call {
  std::string method;
  Json params;
};

struct FakeDaemon {
  std::vector<Call> calls;
  std::map<std::string, std::deque<daemon::Response>> answers;
  bool reachable = true;
  std::vector<double> sleeps;  // what the CLI asked to wait

  void ok(const std::string& method, Json result) {
    daemon::Response r;
    r.ok = true;
    r.result = std::move(result);
    answers[method].push_back(std::move(r));
  }
  void error(const std::string& method, daemon::ErrorCode code, std::string message) {
    daemon::Response r;
    r.ok = false;
    r.code = code;
    r.message = std::move(message);
    answers[method].push_back(std::move(r));
  }
};

class FakeClient final : public ControlClient {
 public:
  explicit FakeClient(FakeDaemon& daemon) : daemon_(daemon) {}
  Result<daemon::Response> call(std::string_view method, const Json& params) override {
    daemon_.calls.push_back({std::string(method), params});
    auto it = daemon_.answers.find(std::string(method));
    if (it == daemon_.answers.end() || it->second.empty()) {
      return Error(ECONNRESET, "fake daemon has no answer for " + std::string(method));
    }
    daemon::Response r = it->second.front();
    if (it->second.size() > 1) {
      it->second.pop_front();
    }
    return r;
  }

 private:
  FakeDaemon& daemon_;
};

// Runs `ublk-volume ARGS...` against `daemon`; stdout/stderr captured.
struct Run {
  int status = -1;
  std::string out, err;
};

inline Run run(FakeDaemon& daemon, std::vector<std::string> args, bool tty = false) {
  std::ostringstream out, err;
  CliEnvironment env{
      .out = out,
      .err = err,
      .stdout_is_tty = tty,
      .connect = [&daemon](const std::string& socket) -> Result<std::unique_ptr<ControlClient>> {
        if (!daemon.reachable) {
          return Error(ENOENT, "cannot connect to " + socket +
                                   ": No such file or directory (is ublk-volumed running?)");
        }
        return std::unique_ptr<ControlClient>(std::make_unique<FakeClient>(daemon));
      },
      .sleep = [&daemon](double seconds) { daemon.sleeps.push_back(seconds); },
  };
  args.insert(args.begin(), "ublk-volume");
  std::vector<const char*> argv;
  argv.reserve(args.size());
  for (const auto& a : args) {
    argv.push_back(a.c_str());
  }
  Run r;
  r.status = run_cli(static_cast<int>(argv.size()), argv.data(), env);
  r.out = out.str();
  r.err = err.str();
  return r;
}

}  // namespace ublkvol::cli::testing
