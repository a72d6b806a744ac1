// Online verify / scrub in the daemon (scrub.h).
#include "scrub.h"

#include <chrono>
#include <ctime>

namespace ublkvol::daemon {

namespace {

std::string utc(std::chrono::system_clock::time_point t) {
  std::time_t secs = std::chrono::system_clock::to_time_t(t);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[32];
  size_t n = std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return {buf, n};
}

}  // namespace

Json verify_json(const engine::VerifyStatus& s) {
  Json out = {{"active", s.active},
              {"repair", s.repair},
              {"done_bytes", s.done_bytes},
              {"total_bytes", s.total_bytes},
              {"percent", s.percent},
              {"bytes_per_second", s.bytes_per_second},
              {"mismatched_bytes", s.mismatched_bytes},
              {"repaired_bytes", s.repaired_bytes},
              {"runs", s.runs},
              {"last", nullptr}};
  if (s.runs > 0) {
    Json mismatches = Json::array();
    for (const auto& [offset, length] : s.last_mismatches) {
      mismatches.push_back({{"offset", offset}, {"length", length}});
    }
    out["last"] = {{"time", utc(s.last_finished)},
                   {"time_unix", std::chrono::duration_cast<std::chrono::seconds>(
                                     s.last_finished.time_since_epoch())
                                     .count()},
                   {"repair", s.last_repair},
                   {"bytes", s.last_bytes},
                   {"mismatched_bytes", s.last_mismatched_bytes},
                   {"repaired_bytes", s.last_repaired_bytes},
                   {"unrepaired_bytes", s.last_unrepaired_bytes},
                   {"seconds", s.last_seconds},
                   {"error", s.last_error},
                   {"mismatches", mismatches}};
  }
  return out;
}

void apply_scrub_config(const DaemonConfig& config, engine::ReplicatedVolumeOptions& options) {
  options.scrub_interval = std::chrono::seconds(config.scrub_interval_s);
  options.scrub_bytes_per_second = config.scrub_mb_per_s << 20U;
  options.scrub_repair = config.scrub_repair;
}

}  // namespace ublkvol::daemon
