// Results of the fio benchmark matrix (bench/run.sh): reads the raw fio JSON
// files of one run, pairs every workload's target and baseline samples, and
// turns them into the results JSON, the markdown table and the gnuplot data.
//
// A run directory written by bench/lib/matrix.sh holds
//   meta.env                          KEY=VALUE lines: environment, backend, ...
//   workloads.list                    "<name> <group> <description>" in run order
//   raw/<workload>/<side>-<rep>.json  fio --output-format=json, side = target|baseline
//   raw/<workload>/<side>-<rep>.cpu   busy_ns= server_ns= (or busy_jiffies= server_jiffies= hz=)
//   inproc/<bench>.json               optional: in-process benchmark output (--json)
//
// Figures per run: IOPS, MiB/s, completion latency p50/p99 (the worse of read
// and write when a job does both), CPU per I/O (whole machine, and the ublk
// server process alone). Per side the median over the repeats is reported;
// ratios are target / baseline of those medians, and the spread of the
// per-repeat ratios (the runs are interleaved, so repeat r of the target ran
// next to repeat r of the baseline) shows how noisy the pair was.
#pragma once

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "ublkvol/common/result.h"

namespace ublkvol::bench {

// One fio invocation, summed over its jobs and directions.
struct FioRun {
  double iops = 0;
  double mib_s = 0;
  double lat_p50_us = 0;  // worse direction
  double lat_p99_us = 0;
  double ios = 0;  // completed I/Os (read + write + trim) after the ramp
  double fio_usr_pct = 0;
  double fio_sys_pct = 0;
};

// CPU time used while that fio invocation ran.
struct CpuUse {
  double busy_s = 0;    // whole machine (all CPUs, /proc/stat)
  double server_s = 0;  // the ublk server process (utime + stime), 0 for the baseline
};

// One sample: a fio run plus its CPU use.
struct Sample {
  FioRun fio;
  CpuUse cpu;
  double cpu_us_per_io() const { return fio.ios > 0 ? cpu.busy_s * 1e6 / fio.ios : 0; }
  double server_cpu_us_per_io() const { return fio.ios > 0 ? cpu.server_s * 1e6 / fio.ios : 0; }
};

// Medians of one side (target or baseline) of a workload.
struct SideSummary {
  std::vector<Sample> samples;  // in repeat order
  double iops = 0;
  double mib_s = 0;
  double lat_p50_us = 0;
  double lat_p99_us = 0;
  double cpu_us_per_io = 0;
  double server_cpu_us_per_io = 0;
  double fio_usr_pct = 0;
  double fio_sys_pct = 0;
};

struct WorkloadResult {
  std::string name;
  std::string group;  // "raw" or "ext4"
  std::string description;
  SideSummary target;
  SideSummary baseline;
  // target / baseline of the medians (0 when the baseline figure is 0).
  double iops_ratio = 0;
  double mib_s_ratio = 0;
  double lat_p50_ratio = 0;
  double lat_p99_ratio = 0;
  double cpu_per_io_ratio = 0;
  // Smallest and largest per-repeat IOPS ratio (target r / baseline r).
  double iops_ratio_min = 0;
  double iops_ratio_max = 0;
};

struct RunResults {
  std::map<std::string, std::string> meta;  // meta.env
  std::vector<WorkloadResult> workloads;    // in run order
  std::map<std::string, nlohmann::json> inproc;
};

// Parses one fio --output-format=json document.
Result<FioRun> parse_fio_json(const nlohmann::json& doc);
// Parses "busy_ns=.. server_ns=.." or "busy_jiffies=.. server_jiffies=.. hz=.."
// (whitespace or newlines).
Result<CpuUse> parse_cpu_use(const std::string& text);
// KEY=VALUE lines; '#' comments and blank lines skipped.
std::map<std::string, std::string> parse_env_lines(const std::string& text);

// Median of the values (mean of the middle two for an even count; 0 if empty).
double median(std::vector<double> values);

// Builds a workload's summary and ratios from its samples.
WorkloadResult summarize(std::string name, std::string group, std::string description,
                         std::vector<Sample> target, std::vector<Sample> baseline);

// Reads a run directory (layout above); it must hold a workload or an
// in-process result. Fails, naming the file, on a missing or
// malformed file; a workload must have the same number (>= 1) of target and
// baseline samples.
Result<RunResults> load_run(const std::filesystem::path& dir);

nlohmann::json to_json(const RunResults& results);
std::string to_markdown(const RunResults& results);
// gnuplot data: one line per workload with the IOPS ratio and its spread,
// and one with target/baseline p50 and p99 latencies.
std::string ratio_plot_data(const RunResults& results);
std::string latency_plot_data(const RunResults& results);

}  // namespace ublkvol::bench
