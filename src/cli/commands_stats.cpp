// ublk-volume stats: rates and latency percentiles between two samples of
// the daemon's counters, or Prometheus text.
#include <fcntl.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>
#include <optional>
#include <string>

#include "commands.h"
#include "stats.h"

namespace ublkvol::cli {
namespace {

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

}  // namespace

void add_stats_command(CLI::App& app, CommandTree& tree) {
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
}

}  // namespace ublkvol::cli
