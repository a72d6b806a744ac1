#include "stats.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <sstream>

#include "table.h"

namespace ublkvol::cli {
namespace {

Error bad_field(const std::string& where, const std::string& what) {
  return Error(ErrorKind::kInternal, EBADMSG, "daemon's stats result: " + where + ": " + what);
}

Result<uint64_t> read_uint(const Json& object, const std::string& key, const std::string& where) {
  auto it = object.find(key);
  if (it == object.end()) {
    return bad_field(where, "missing '" + key + "'");
  }
  // Unsigned on the wire; a non-negative signed JSON integer is the same number.
  if (!it->is_number_integer() || (!it->is_number_unsigned() && it->get<int64_t>() < 0)) {
    return bad_field(where, "'" + key + "' is not an unsigned integer");
  }
  return it->get<uint64_t>();
}

Result<LatencyHistogram> read_histogram(const Json& volume, const std::string& key,
                                        const std::vector<double>& bounds,
                                        const std::string& where) {
  auto it = volume.find(key);
  if (it == volume.end() || !it->is_object()) {
    return bad_field(where, "missing object '" + key + "'");
  }
  const Json& h = *it;
  LatencyHistogram histogram;
  histogram.upper_bounds_ns = bounds;
  auto counts = h.find("buckets");
  if (counts == h.end() || !counts->is_array()) {
    return bad_field(where, "'" + key + ".buckets' is not an array");
  }
  for (const auto& c : *counts) {
    if (!c.is_number_integer() || (!c.is_number_unsigned() && c.get<int64_t>() < 0)) {
      return bad_field(where, "'" + key + ".buckets' holds a non-count");
    }
    histogram.counts.push_back(c.get<uint64_t>());
  }
  if (histogram.counts.size() != bounds.size()) {
    return bad_field(where, "'" + key + "' has " + std::to_string(histogram.counts.size()) +
                                " buckets for " + std::to_string(bounds.size()) + " bounds");
  }
  if (auto sum = h.find("sum_ns"); sum != h.end() && sum->is_number()) {
    histogram.sum_ns = sum->get<double>();
  }
  return histogram;
}

// Counter difference; a counter that went down restarted from zero.
uint64_t delta(uint64_t before, uint64_t after) { return after >= before ? after - before : after; }

}  // namespace

Result<StatsSample> parse_stats(const Json& result) {
  StatsSample sample;
  if (!result.is_object()) {
    return bad_field("result", "not an object");
  }
  UBLKVOL_ASSIGN_OR_RETURN(sample.time_ns, read_uint(result, "time_ns", "result"));
  auto bounds_json = result.find("latency_bucket_upper_ns");
  if (bounds_json == result.end() || !bounds_json->is_array()) {
    return bad_field("result", "'latency_bucket_upper_ns' is not an array");
  }
  std::vector<double> bounds;
  for (const auto& b : *bounds_json) {
    if (!b.is_number()) {
      return bad_field("result", "'latency_bucket_upper_ns' holds a non-number");
    }
    bounds.push_back(b.get<double>());
  }
  auto volumes = result.find("volumes");
  if (volumes == result.end() || !volumes->is_array()) {
    return bad_field("result", "'volumes' is not an array");
  }
  for (const auto& v : *volumes) {
    VolumeCounters c;
    if (!v.is_object() || !v.contains("name") || !v["name"].is_string()) {
      return bad_field("volumes[]", "entry without a 'name'");
    }
    c.name = v["name"].get<std::string>();
    c.exposed = v.value("exposed", true);
    const std::string where = "volume '" + c.name + "'";
    struct Field {
      const char* key;
      uint64_t* value;
    };
    for (Field f :
         {Field{"reads", &c.reads}, Field{"writes", &c.writes}, Field{"flushes", &c.flushes},
          Field{"discards", &c.discards}, Field{"bytes_read", &c.bytes_read},
          Field{"bytes_written", &c.bytes_written}, Field{"errors", &c.errors}}) {
      UBLKVOL_ASSIGN_OR_RETURN(*f.value, read_uint(v, f.key, where));
    }
    for (Field f : {Field{"zero_copy_ios", &c.zero_copy_ios}, Field{"copied_ios", &c.copied_ios}}) {
      if (v.contains(f.key)) {  // newer daemons only
        UBLKVOL_ASSIGN_OR_RETURN(*f.value, read_uint(v, f.key, where));
      }
    }
    UBLKVOL_ASSIGN_OR_RETURN(c.read_latency, read_histogram(v, "read_latency_ns", bounds, where));
    UBLKVOL_ASSIGN_OR_RETURN(c.write_latency, read_histogram(v, "write_latency_ns", bounds, where));
    if (auto verify = v.find("verify"); verify != v.end() && verify->is_object()) {
      c.verify.present = true;
      c.verify.active = verify->value("active", false);
      c.verify.runs = verify->value("runs", uint64_t{0});
      if (auto last = verify->find("last"); last != verify->end() && last->is_object()) {
        c.verify.last_time_unix = last->value("time_unix", uint64_t{0});
        c.verify.last_bytes = last->value("bytes", uint64_t{0});
        c.verify.last_mismatched_bytes = last->value("mismatched_bytes", uint64_t{0});
        c.verify.last_repaired_bytes = last->value("repaired_bytes", uint64_t{0});
        c.verify.last_unrepaired_bytes = last->value("unrepaired_bytes", uint64_t{0});
      }
    }
    if (auto remotes = v.find("remote_replicas"); remotes != v.end() && remotes->is_array()) {
      for (const auto& r : *remotes) {
        if (!r.is_object()) {
          return bad_field(where, "'remote_replicas' holds a non-object");
        }
        VolumeCounters::Remote remote;
        const Json index = r.value("index", Json());
        remote.index = index.is_number_unsigned() ? std::to_string(index.get<uint64_t>()) : "";
        remote.uri = r.value("uri", "");
        remote.state = r.value("state", "");
        remote.connections = r.value("connections", uint64_t{0});
        remote.live_connections = r.value("live_connections", uint64_t{0});
        remote.requests = r.value("requests", uint64_t{0});
        remote.failed_requests = r.value("failed_requests", uint64_t{0});
        remote.latency_p50_us = r.value("latency_p50_us", uint64_t{0});
        remote.latency_p99_us = r.value("latency_p99_us", uint64_t{0});
        remote.reconnects = r.value("reconnects", uint64_t{0});
        c.remotes.push_back(std::move(remote));
      }
    }
    sample.volumes.push_back(std::move(c));
  }
  if (auto reactors = result.find("reactors"); reactors != result.end()) {
    if (!reactors->is_array()) {
      return bad_field("result", "'reactors' is not an array");
    }
    for (const auto& r : *reactors) {
      if (!r.is_object() || !r.contains("name") || !r["name"].is_string()) {
        return bad_field("reactors[]", "entry without a 'name'");
      }
      ReactorCounters c;
      c.name = r["name"].get<std::string>();
      const std::string where = "reactor '" + c.name + "'";
      if (auto cpu = r.find("cpu"); cpu != r.end() && cpu->is_number_integer()) {
        c.cpu = std::to_string(cpu->get<int64_t>());
      }
      for (auto [key, value] : {std::pair{"busy_seconds", &c.busy_seconds},
                                std::pair{"uptime_seconds", &c.uptime_seconds}}) {
        auto it = r.find(key);
        if (it == r.end() || !it->is_number()) {
          return bad_field(where, std::string("'") + key + "' is not a number");
        }
        *value = it->get<double>();
      }
      UBLKVOL_ASSIGN_OR_RETURN(c.messages_sent, read_uint(r, "messages_sent", where));
      sample.reactors.push_back(std::move(c));
    }
  }
  return sample;
}

double histogram_quantile(const LatencyHistogram& before, const LatencyHistogram& after, double q) {
  const bool comparable = before.counts.size() == after.counts.size() &&
                          before.upper_bounds_ns == after.upper_bounds_ns;
  std::vector<uint64_t> counts(after.counts.size());
  uint64_t total = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    counts[i] = comparable ? delta(before.counts[i], after.counts[i]) : after.counts[i];
    total += counts[i];
  }
  if (total == 0) {
    return -1;
  }
  // Rank of the request we want (1-based): the smallest one with at least q of
  // all requests at or below it.
  const double rank = q * static_cast<double>(total);
  uint64_t seen = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    if (counts[i] == 0) {
      continue;
    }
    if (static_cast<double>(seen + counts[i]) >= rank) {
      const double lower = i == 0 ? 0.0 : after.upper_bounds_ns[i - 1];
      // The last bucket also holds everything above its bound; its bound is
      // still the best value to report.
      const double upper = after.upper_bounds_ns[i];
      const double fraction = (rank - static_cast<double>(seen)) / static_cast<double>(counts[i]);
      return lower + (upper - lower) * std::clamp(fraction, 0.0, 1.0);
    }
    seen += counts[i];
  }
  return after.upper_bounds_ns.empty() ? -1 : after.upper_bounds_ns.back();
}

std::vector<VolumeRates> compute_rates(const StatsSample& before, const StatsSample& after) {
  std::map<std::string, const VolumeCounters*> previous;
  for (const auto& v : before.volumes) {
    previous[v.name] = &v;
  }
  const VolumeCounters zero;
  const double seconds = after.time_ns > before.time_ns
                             ? static_cast<double>(after.time_ns - before.time_ns) / 1e9
                             : 0;
  std::vector<VolumeRates> rates;
  for (const auto& now : after.volumes) {
    auto it = previous.find(now.name);
    const VolumeCounters& then = it == previous.end() ? zero : *it->second;
    VolumeRates r;
    r.name = now.name;
    r.exposed = now.exposed;
    r.seconds = seconds;
    auto per_second = [&](uint64_t b, uint64_t a) {
      return seconds > 0 ? static_cast<double>(delta(b, a)) / seconds : 0.0;
    };
    r.read_iops = per_second(then.reads, now.reads);
    r.write_iops = per_second(then.writes, now.writes);
    r.flush_per_second = per_second(then.flushes, now.flushes);
    r.discard_per_second = per_second(then.discards, now.discards);
    r.read_bytes_per_second = per_second(then.bytes_read, now.bytes_read);
    r.write_bytes_per_second = per_second(then.bytes_written, now.bytes_written);
    r.errors = delta(then.errors, now.errors);
    r.read_p50_ns = histogram_quantile(then.read_latency, now.read_latency, 0.50);
    r.read_p99_ns = histogram_quantile(then.read_latency, now.read_latency, 0.99);
    r.write_p50_ns = histogram_quantile(then.write_latency, now.write_latency, 0.50);
    r.write_p99_ns = histogram_quantile(then.write_latency, now.write_latency, 0.99);
    rates.push_back(std::move(r));
  }
  return rates;
}

void print_rates_table(std::ostream& out, const std::vector<VolumeRates>& rates) {
  using A = Table::Align;
  Table table({{"VOLUME", A::kLeft},
               {"r/s", A::kRight},
               {"w/s", A::kRight},
               {"rMB/s", A::kRight},
               {"wMB/s", A::kRight},
               {"r_p50", A::kRight},
               {"r_p99", A::kRight},
               {"w_p50", A::kRight},
               {"w_p99", A::kRight},
               {"flush/s", A::kRight},
               {"errors", A::kRight}});
  auto latency = [](double ns) { return ns < 0 ? std::string("-") : format_latency_ns(ns); };
  // Requests per second: a few requests in an interval still show (0.5, not 0).
  auto per_second = [](double v) {
    if (v == 0) {
      return std::string("0");
    }
    return format_fixed(v, v < 10 ? 1 : 0);
  };
  for (const auto& r : rates) {
    table.add_row({r.name, per_second(r.read_iops), per_second(r.write_iops),
                   format_fixed(r.read_bytes_per_second / 1e6, 1),
                   format_fixed(r.write_bytes_per_second / 1e6, 1), latency(r.read_p50_ns),
                   latency(r.read_p99_ns), latency(r.write_p50_ns), latency(r.write_p99_ns),
                   per_second(r.flush_per_second), std::to_string(r.errors)});
  }
  table.print(out);
}

Json rates_to_json(const std::vector<VolumeRates>& rates, uint64_t time_ns) {
  Json volumes = Json::array();
  auto latency = [](double ns) { return ns < 0 ? Json(nullptr) : Json(ns); };
  for (const auto& r : rates) {
    volumes.push_back({{"name", r.name},
                       {"interval_seconds", r.seconds},
                       {"read_iops", r.read_iops},
                       {"write_iops", r.write_iops},
                       {"flushes_per_second", r.flush_per_second},
                       {"discards_per_second", r.discard_per_second},
                       {"read_bytes_per_second", r.read_bytes_per_second},
                       {"write_bytes_per_second", r.write_bytes_per_second},
                       {"errors", r.errors},
                       {"read_latency_p50_ns", latency(r.read_p50_ns)},
                       {"read_latency_p99_ns", latency(r.read_p99_ns)},
                       {"write_latency_p50_ns", latency(r.write_p50_ns)},
                       {"write_latency_p99_ns", latency(r.write_p99_ns)}});
  }
  return {{"time_ns", time_ns}, {"volumes", std::move(volumes)}};
}

namespace {

// Label values: backslash, double quote and newline escaped (names are
// restricted by the daemon, but the format must hold for any string).
std::string label(const std::string& value) {
  std::string out;
  for (char c : value) {
    if (c == '\\' || c == '"') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string number(double value) {
  if (std::isinf(value)) {
    return value > 0 ? "+Inf" : "-Inf";
  }
  std::ostringstream s;
  s.precision(12);
  s << value;
  return s.str();
}

// Exact decimal seconds for an integral nanosecond bound: 1024 ->
// "0.000001024" (no rounding, so bucket labels stay distinct and stable).
std::string seconds_from_ns(double ns) {
  const auto value = static_cast<uint64_t>(ns);
  std::string fraction = std::to_string(value % 1'000'000'000);
  fraction.insert(0, 9 - fraction.size(), '0');
  while (!fraction.empty() && fraction.back() == '0') {
    fraction.pop_back();
  }
  std::string text = std::to_string(value / 1'000'000'000);
  if (!fraction.empty()) {
    text += "." + fraction;
  }
  return text;
}

}  // namespace

std::string prometheus_text(const StatsSample& sample) {
  std::ostringstream out;
  struct Counter {
    const char* name;
    const char* help;
    uint64_t VolumeCounters::*field;
  };
  static const Counter kCounters[] = {
      {"reads_total", "Read requests completed since the volume was exposed.",
       &VolumeCounters::reads},
      {"writes_total", "Write requests completed since the volume was exposed.",
       &VolumeCounters::writes},
      {"flushes_total", "Flush requests completed since the volume was exposed.",
       &VolumeCounters::flushes},
      {"discards_total", "Discard requests completed since the volume was exposed.",
       &VolumeCounters::discards},
      {"read_bytes_total", "Bytes read since the volume was exposed.", &VolumeCounters::bytes_read},
      {"written_bytes_total", "Bytes written since the volume was exposed.",
       &VolumeCounters::bytes_written},
      {"errors_total", "Requests completed with an error since the volume was exposed.",
       &VolumeCounters::errors},
      {"zero_copy_ios_total", "Data requests served on their own pages (zero copy).",
       &VolumeCounters::zero_copy_ios},
      {"copied_ios_total", "Data requests of a zero-copy device served by copy.",
       &VolumeCounters::copied_ios},
  };
  for (const auto& counter : kCounters) {
    out << "# HELP ublkvol_volume_" << counter.name << ' ' << counter.help << '\n';
    out << "# TYPE ublkvol_volume_" << counter.name << " counter\n";
    for (const auto& v : sample.volumes) {
      out << "ublkvol_volume_" << counter.name << "{volume=\"" << label(v.name) << "\"} "
          << v.*counter.field << '\n';
    }
  }
  out << "# HELP ublkvol_volume_exposed 1 if the volume is exposed as a block device.\n";
  out << "# TYPE ublkvol_volume_exposed gauge\n";
  for (const auto& v : sample.volumes) {
    out << "ublkvol_volume_exposed{volume=\"" << label(v.name) << "\"} " << (v.exposed ? 1 : 0)
        << '\n';
  }
  // Online verify / scrub (replica verify, scheduled scrub): the last run.
  struct VerifyMetric {
    const char* name;
    const char* type;
    const char* help;
    uint64_t VolumeCounters::Verify::*field;
  };
  static const VerifyMetric kVerify[] = {
      {"verify_runs_total", "counter", "Verify/scrub runs finished since the volume was opened.",
       &VolumeCounters::Verify::runs},
      {"verify_last_timestamp_seconds", "gauge", "When the last verify/scrub run finished.",
       &VolumeCounters::Verify::last_time_unix},
      {"verify_last_bytes", "gauge", "Bytes the last verify/scrub run compared.",
       &VolumeCounters::Verify::last_bytes},
      {"verify_last_mismatched_bytes", "gauge",
       "Bytes where replicas differed in the last verify/scrub run.",
       &VolumeCounters::Verify::last_mismatched_bytes},
      {"verify_last_repaired_bytes", "gauge", "Bytes the last verify/scrub run repaired.",
       &VolumeCounters::Verify::last_repaired_bytes},
      {"verify_last_unrepaired_bytes", "gauge",
       "Differing bytes the last verify/scrub run could not repair (no majority).",
       &VolumeCounters::Verify::last_unrepaired_bytes},
  };
  for (const auto& metric : kVerify) {
    out << "# HELP ublkvol_volume_" << metric.name << ' ' << metric.help << '\n';
    out << "# TYPE ublkvol_volume_" << metric.name << ' ' << metric.type << '\n';
    for (const auto& v : sample.volumes) {
      if (v.verify.present) {
        out << "ublkvol_volume_" << metric.name << "{volume=\"" << label(v.name) << "\"} "
            << v.verify.*metric.field << '\n';
      }
    }
  }
  struct HistogramMetric {
    const char* name;
    const char* help;
    LatencyHistogram VolumeCounters::*field;
  };
  static const HistogramMetric kHistograms[] = {
      {"read_latency_seconds", "Read request latency.", &VolumeCounters::read_latency},
      {"write_latency_seconds", "Write request latency.", &VolumeCounters::write_latency},
  };
  for (const auto& metric : kHistograms) {
    out << "# HELP ublkvol_volume_" << metric.name << ' ' << metric.help << '\n';
    out << "# TYPE ublkvol_volume_" << metric.name << " histogram\n";
    for (const auto& v : sample.volumes) {
      const LatencyHistogram& h = v.*metric.field;
      const std::string prefix = std::string("ublkvol_volume_") + metric.name;
      const std::string volume = "volume=\"" + label(v.name) + "\"";
      // The daemon's last bucket also counts everything above its bound, so
      // it is exported as the +Inf bucket.
      uint64_t cumulative = 0;
      for (size_t i = 0; i < h.counts.size(); ++i) {
        cumulative += h.counts[i];
        const bool last = i + 1 == h.counts.size();
        out << prefix << "_bucket{" << volume << ",le=\""
            << (last ? std::string("+Inf") : seconds_from_ns(h.upper_bounds_ns[i])) << "\"} "
            << cumulative << '\n';
      }
      if (h.counts.empty()) {
        out << prefix << "_bucket{" << volume << ",le=\"+Inf\"} 0\n";
      }
      if (h.sum_ns >= 0) {
        out << prefix << "_sum{" << volume << "} " << number(h.sum_ns / 1e9) << '\n';
      }
      out << prefix << "_count{" << volume << "} " << cumulative << '\n';
    }
  }
  // Remote replicas: one series per replica (labels volume, index, uri);
  // the state is a label of ublkvol_remote_replica_state, 1 for the current.
  bool any_remote = false;
  for (const auto& v : sample.volumes) {
    any_remote = any_remote || !v.remotes.empty();
  }
  if (any_remote) {
    struct RemoteMetric {
      const char* name;
      const char* type;
      const char* help;
      uint64_t VolumeCounters::Remote::*field;
      double scale;
    };
    static const RemoteMetric kRemote[] = {
        {"connections", "gauge", "NBD connections opened to the remote replica's export.",
         &VolumeCounters::Remote::connections, 1},
        {"live_connections", "gauge", "NBD connections to the export still alive.",
         &VolumeCounters::Remote::live_connections, 1},
        {"requests_total", "counter", "Requests completed by the current connection set.",
         &VolumeCounters::Remote::requests, 1},
        {"failed_requests_total", "counter", "Requests completed with an error.",
         &VolumeCounters::Remote::failed_requests, 1},
        {"latency_p50_seconds", "gauge", "Median request latency (upper bound of its bucket).",
         &VolumeCounters::Remote::latency_p50_us, 1e-6},
        {"latency_p99_seconds", "gauge", "99th percentile request latency (bucket upper bound).",
         &VolumeCounters::Remote::latency_p99_us, 1e-6},
        {"reconnects_total", "counter", "Reconnects (each followed by a resync or rebuild).",
         &VolumeCounters::Remote::reconnects, 1},
    };
    auto labels = [](const VolumeCounters& v, const VolumeCounters::Remote& r) {
      return "{volume=\"" + label(v.name) + "\",index=\"" + label(r.index) + "\",uri=\"" +
             label(r.uri) + "\"";
    };
    out << "# HELP ublkvol_remote_replica_state The remote replica's state (in_sync, resyncing, "
           "out, connecting) as a label; 1 for the current one.\n"
           "# TYPE ublkvol_remote_replica_state gauge\n";
    for (const auto& v : sample.volumes) {
      for (const auto& r : v.remotes) {
        out << "ublkvol_remote_replica_state" << labels(v, r) << ",state=\"" << label(r.state)
            << "\"} 1\n";
      }
    }
    for (const auto& metric : kRemote) {
      out << "# HELP ublkvol_remote_replica_" << metric.name << ' ' << metric.help << '\n';
      out << "# TYPE ublkvol_remote_replica_" << metric.name << ' ' << metric.type << '\n';
      for (const auto& v : sample.volumes) {
        for (const auto& r : v.remotes) {
          out << "ublkvol_remote_replica_" << metric.name << labels(v, r) << "} ";
          if (metric.scale == 1) {
            out << r.*metric.field << '\n';
          } else {
            out << number(static_cast<double>(r.*metric.field) * metric.scale) << '\n';
          }
        }
      }
    }
  }
  // Reactors: rate(busy_seconds_total) is the share of a CPU each one used.
  if (!sample.reactors.empty()) {
    auto labels = [](const ReactorCounters& r) {
      return "{reactor=\"" + label(r.name) + "\",cpu=\"" + label(r.cpu) + "\"} ";
    };
    out << "# HELP ublkvol_reactor_busy_seconds_total Time the reactor spent awake (polling, "
           "running handlers).\n# TYPE ublkvol_reactor_busy_seconds_total counter\n";
    for (const auto& r : sample.reactors) {
      out << "ublkvol_reactor_busy_seconds_total" << labels(r) << number(r.busy_seconds) << '\n';
    }
    out << "# HELP ublkvol_reactor_uptime_seconds_total Time since the reactor started.\n"
           "# TYPE ublkvol_reactor_uptime_seconds_total counter\n";
    for (const auto& r : sample.reactors) {
      out << "ublkvol_reactor_uptime_seconds_total" << labels(r) << number(r.uptime_seconds)
          << '\n';
    }
    out << "# HELP ublkvol_reactor_messages_sent_total Wake-ups sent to other threads for "
           "data-path work.\n# TYPE ublkvol_reactor_messages_sent_total counter\n";
    for (const auto& r : sample.reactors) {
      out << "ublkvol_reactor_messages_sent_total" << labels(r) << r.messages_sent << '\n';
    }
  }
  return out.str();
}

}  // namespace ublkvol::cli
