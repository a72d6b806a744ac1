// `ublk-volume stats`: iostat-like rates from the daemon's cumulative counters.
//
// The daemon's `stats` method returns, per exposed volume, counters that only
// grow (requests, bytes, errors since expose) and latency histograms with
// fixed bucket bounds and per-bucket counts. The CLI takes two samples an
// interval apart and divides the differences by the elapsed time, so the
// daemon keeps no per-client state and any number of observers can watch.
// Percentiles come from the difference of the two histograms: the bucket that
// holds the q-th request, linearly interpolated inside it (the way
// Prometheus' histogram_quantile does), so a p99 is accurate to within its
// bucket's width.
//
// `--prometheus` needs no interval: it prints the cumulative counters and
// histograms in the Prometheus text format (node_exporter's textfile
// collector), and Prometheus computes the rates itself.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "ublkvol/common/result.h"

#include "control_client.h"

namespace ublkvol::cli {

// Latency histogram (docs/control-protocol.md, "stats"): bucket i counts
// requests with latency below upper_bounds_ns[i] and not below the previous
// bound; the last bucket also takes everything above its bound.
struct LatencyHistogram {
  std::vector<double> upper_bounds_ns;
  std::vector<uint64_t> counts;
  double sum_ns = -1;  // total latency, if the daemon reports it (else < 0)
};

struct VolumeCounters {
  std::string name;
  bool exposed = true;
  uint64_t reads = 0, writes = 0, flushes = 0, discards = 0;
  uint64_t bytes_read = 0, bytes_written = 0, errors = 0;
  // Zero copy: data requests served on their own pages / by copy on a
  // zero-copy device (0 from daemons that do not report them).
  uint64_t zero_copy_ios = 0, copied_ios = 0;
  LatencyHistogram read_latency, write_latency;
  // Online verify / scrub (the "verify" object; absent from older daemons).
  struct Verify {
    bool present = false;
    bool active = false;
    uint64_t runs = 0;
    // The last finished run (runs > 0).
    uint64_t last_time_unix = 0;
    uint64_t last_bytes = 0, last_mismatched_bytes = 0, last_repaired_bytes = 0;
    uint64_t last_unrepaired_bytes = 0;
  } verify;
  // Replicas on NBD exports (the "remote_replicas" list; absent from older
  // daemons). index is "" while the replica was not reached since start.
  struct Remote {
    std::string index, uri, state;
    uint64_t connections = 0, live_connections = 0, requests = 0, failed_requests = 0;
    uint64_t latency_p50_us = 0, latency_p99_us = 0, reconnects = 0;
  };
  std::vector<Remote> remotes;
};

// A reactor's cumulative counters (the "reactors" list; absent from older
// daemons and empty with `"reactors": null`).
struct ReactorCounters {
  std::string name;
  std::string cpu;  // "" when not pinned
  double busy_seconds = 0, uptime_seconds = 0;
  uint64_t messages_sent = 0;
};

struct StatsSample {
  uint64_t time_ns = 0;  // the daemon's monotonic clock at sampling time
  std::vector<VolumeCounters> volumes;
  std::vector<ReactorCounters> reactors;
};

// Reads the daemon's `stats` result; the error names the missing/bad field.
Result<StatsSample> parse_stats(const Json& result);

// Rates over one interval. Latencies are < 0 when no request completed.
struct VolumeRates {
  std::string name;
  bool exposed = true;
  double seconds = 0;
  double read_iops = 0, write_iops = 0, flush_per_second = 0, discard_per_second = 0;
  double read_bytes_per_second = 0, write_bytes_per_second = 0;
  uint64_t errors = 0;  // new errors in the interval
  double read_p50_ns = -1, read_p99_ns = -1, write_p50_ns = -1, write_p99_ns = -1;
};

// Differences `after - before` per volume (matched by name). A counter that
// went down (the volume was re-exposed) counts from zero, as Prometheus does.
std::vector<VolumeRates> compute_rates(const StatsSample& before, const StatsSample& after);

// The q-quantile (0 < q <= 1) of the requests counted between two histograms
// with the same bounds; < 0 when none were. Exposed for tests.
double histogram_quantile(const LatencyHistogram& before, const LatencyHistogram& after, double q);

// iostat-like table: VOLUME r/s w/s rMB/s wMB/s r_p50 r_p99 w_p50 w_p99 ERR.
void print_rates_table(std::ostream& out, const std::vector<VolumeRates>& rates);
Json rates_to_json(const std::vector<VolumeRates>& rates, uint64_t time_ns);

// Prometheus text exposition format (version 0.0.4) of one sample.
std::string prometheus_text(const StatsSample& sample);

}  // namespace ublkvol::cli
