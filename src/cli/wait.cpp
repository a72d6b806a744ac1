// --wait: polling volume.show until a background job of the daemon is done.
#include <functional>
#include <optional>
#include <string>

#include "commands.h"
#include "progress.h"
#include "render.h"

namespace ublkvol::cli {
namespace {

// What one look at volume.show decided: nullopt = keep polling.
using PollStep = std::function<std::optional<ExitCode>(const Json& volume, ProgressReporter&)>;

// Polls volume.show of `volume` every kPollSeconds until `step` decides, the
// daemon does not answer, or `timeout` seconds passed (0 = no limit; then
// "<label>: <still> after N s" and exit status 1).
ExitCode poll_volume(Session& s, const std::string& volume, const std::string& label,
                     double timeout, const char* still, const PollStep& step) {
  ProgressReporter reporter(s.env().out, s.env().stdout_is_tty, label);
  double waited = 0;
  for (;;) {
    auto v = s.call(Method::kVolumeShow, {{"name", volume}});
    if (!v) {
      return s.status();
    }
    try {
      if (std::optional<ExitCode> done = step(*v, reporter)) {
        return *done;
      }
    } catch (const Json::exception& e) {
      s.env().err << kProgram << ": unexpected answer from ublk-volumed: " << e.what() << '\n';
      return ExitCode::kFailed;
    }
    if (timeout > 0 && waited >= timeout) {
      s.env().err << kProgram << ": " << label << ": " << still << " after " << timeout
                  << " s (it continues in the daemon; watch it with: ublk-volume volume show "
                  << volume << ")\n";
      return ExitCode::kFailed;
    }
    s.env().sleep(kPollSeconds);
    waited += kPollSeconds;
  }
}

}  // namespace

// Polls volume.show until replica `index` is in sync (0), failed or removed
// (1), or `timeout` seconds passed (1; 0 = no limit).
ExitCode wait_for_replica(Session& s, const std::string& volume, uint64_t index, double timeout) {
  const std::string label = "rebuild " + volume + " replica " + std::to_string(index);
  return poll_volume(
      s, volume, label, timeout, "still not in sync",
      [&](const Json& v, ProgressReporter& reporter) -> std::optional<ExitCode> {
        const Json* replica = nullptr;
        const Json replicas = v.value("replicas", Json::array());  // outlives `replica`
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
        const Json rebuild = v.value("rebuild", Json::object());
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
        return std::nullopt;
      });
}

// Polls volume.show until the verify started after `runs_before` runs
// finished. 0: nothing left differing; 1: mismatches left (not repaired),
// the run stopped, or `timeout` seconds passed (0 = no limit).
ExitCode wait_for_verify(Session& s, const std::string& volume, uint64_t runs_before,
                         double timeout) {
  return poll_volume(s, volume, "verify " + volume, timeout, "not finished",
                     [&](const Json& v, ProgressReporter& reporter) -> std::optional<ExitCode> {
                       const Json verify = v.value("verify", Json::object());
                       const Json last = verify.value("last", Json());
                       if (!verify.value("active", false) &&
                           verify.value("runs", uint64_t{0}) > runs_before && last.is_object()) {
                         const uint64_t left = last.value("repair", false)
                                                   ? last.value("unrepaired_bytes", 0ULL)
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
                         reporter.update({verify.value("percent", 0.0),
                                          verify.value("bytes_per_second", -1.0), -1});
                       }
                       return std::nullopt;
                     });
}

}  // namespace ublkvol::cli
