// Stats: parsing the daemon's sample, rates and percentiles between two
// samples, and the Prometheus text.
#include "stats.h"

#include <gtest/gtest.h>
#include <sstream>
#include <string>

namespace ublkvol::cli {
namespace {

// A `stats` result as docs/control-protocol.md describes it: 32 log2
// buckets, bucket i < 2^(10+i) ns.
Json bounds() {
  Json b = Json::array();
  for (int i = 0; i < 32; ++i) {
    b.push_back(uint64_t{1} << (10 + i));
  }
  return b;
}

Json histogram(std::initializer_list<std::pair<int, uint64_t>> counts, uint64_t sum_ns = 0) {
  Json buckets = Json::array();
  for (int i = 0; i < 32; ++i) {
    buckets.push_back(0);
  }
  for (auto [bucket, count] : counts) {
    buckets[bucket] = count;
  }
  return {{"buckets", buckets}, {"sum_ns", sum_ns}};
}

Json volume(const std::string& name, uint64_t reads, uint64_t writes, Json read_h, Json write_h,
            bool exposed = true) {
  return {{"name", name},      {"exposed", exposed},         {"reads", reads},
          {"writes", writes},  {"flushes", writes / 10},     {"discards", 0},
          {"write_zeroes", 0}, {"bytes_read", reads * 4096}, {"bytes_written", writes * 65536},
          {"errors", 0},       {"read_latency_ns", read_h},  {"write_latency_ns", write_h}};
}

Json sample(uint64_t time_ns, Json volumes) {
  return {{"time_ns", time_ns}, {"latency_bucket_upper_ns", bounds()}, {"volumes", volumes}};
}

TEST(Stats, ParsesTheProtocolsShape) {
  auto s = parse_stats(sample(5, {volume("v", 1, 2, histogram({{3, 1}}), histogram({}))}));
  ASSERT_TRUE(s.ok()) << s.error().message();
  ASSERT_EQ(s->volumes.size(), 1u);
  EXPECT_EQ(s->time_ns, 5u);
  EXPECT_EQ(s->volumes[0].name, "v");
  EXPECT_EQ(s->volumes[0].bytes_written, 2u * 65536);
  EXPECT_EQ(s->volumes[0].read_latency.counts[3], 1u);
  EXPECT_EQ(s->volumes[0].read_latency.upper_bounds_ns[0], 1024.0);
}

TEST(Stats, ReadsZeroCopyCountersWhenPresent) {
  Json v = volume("v", 1, 2, histogram({}), histogram({}));
  v["zero_copy_ios"] = 7;
  v["copied_ios"] = 3;
  auto s = parse_stats(sample(5, {v}));
  ASSERT_TRUE(s.ok()) << s.error().message();
  EXPECT_EQ(s->volumes[0].zero_copy_ios, 7u);
  EXPECT_EQ(s->volumes[0].copied_ios, 3u);
  EXPECT_TRUE(prometheus_text(*s).find("ublkvol_volume_zero_copy_ios_total{volume=\"v\"} 7\n") !=
              std::string::npos);
}

TEST(Stats, RefusesMalformedSamplesNamingTheField) {
  Json bad = sample(5, {volume("v", 1, 2, histogram({}), histogram({}))});
  bad["volumes"][0].erase("writes");
  auto s = parse_stats(bad);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().message(), "daemon's stats result: volume 'v': missing 'writes'");

  bad = sample(5, {volume("v", 1, 2, histogram({}), histogram({}))});
  bad["volumes"][0]["read_latency_ns"]["buckets"].erase(0);
  s = parse_stats(bad);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().message(),
            "daemon's stats result: volume 'v': 'read_latency_ns' has 31 buckets for 32 bounds");

  s = parse_stats({{"time_ns", 1}, {"volumes", Json::array()}});
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message().find("latency_bucket_upper_ns"), std::string::npos);
}

TEST(Stats, QuantileInterpolatesInsideTheBucketOfTheDifference) {
  auto before = parse_stats(sample(0, {volume("v", 0, 0, histogram({{8, 500}}), histogram({}))}));
  // 100 new requests, all in bucket 2: [2048, 4096) ns. The 500 old ones in
  // bucket 8 must not count.
  auto after =
      parse_stats(sample(1, {volume("v", 0, 0, histogram({{2, 100}, {8, 500}}), histogram({}))}));
  ASSERT_TRUE(before.ok() && after.ok());
  const auto& b = before->volumes[0].read_latency;
  const auto& a = after->volumes[0].read_latency;
  EXPECT_DOUBLE_EQ(histogram_quantile(b, a, 0.50), 2048 + 0.50 * 2048);
  EXPECT_DOUBLE_EQ(histogram_quantile(b, a, 0.99), 2048 + 0.99 * 2048);
  EXPECT_DOUBLE_EQ(histogram_quantile(b, a, 1.0), 4096);
  EXPECT_LT(histogram_quantile(a, a, 0.5), 0);  // nothing happened in between
}

TEST(Stats, QuantileAcrossBuckets) {
  // 90 requests < 1024 ns, 10 in [1 ms, 2 ms): p50 in bucket 0, p99 in the slow one.
  LatencyHistogram zero, h;
  for (int i = 0; i < 32; ++i) {
    h.upper_bounds_ns.push_back(double(uint64_t{1} << (10 + i)));
  }
  zero.upper_bounds_ns = h.upper_bounds_ns;
  zero.counts.assign(32, 0);
  h.counts.assign(32, 0);
  h.counts[0] = 90;
  h.counts[10] = 10;  // [2^19, 2^20) ns
  EXPECT_DOUBLE_EQ(histogram_quantile(zero, h, 0.5), 1024.0 * 50 / 90);
  EXPECT_DOUBLE_EQ(histogram_quantile(zero, h, 0.99), 524288 + 524288 * 0.9);
}

TEST(Stats, RatesOverTheInterval) {
  auto before =
      parse_stats(sample(1'000'000'000, {volume("v", 1000, 500, histogram({}), histogram({}))}));
  auto after = parse_stats(
      sample(3'000'000'000, {volume("v", 3000, 1500, histogram({}), histogram({{4, 10}}))}));
  ASSERT_TRUE(before.ok() && after.ok());
  auto rates = compute_rates(*before, *after);
  ASSERT_EQ(rates.size(), 1u);
  EXPECT_DOUBLE_EQ(rates[0].seconds, 2.0);
  EXPECT_DOUBLE_EQ(rates[0].read_iops, 1000.0);
  EXPECT_DOUBLE_EQ(rates[0].write_iops, 500.0);
  EXPECT_DOUBLE_EQ(rates[0].read_bytes_per_second, 1000.0 * 4096);
  EXPECT_DOUBLE_EQ(rates[0].write_bytes_per_second, 500.0 * 65536);
  EXPECT_DOUBLE_EQ(rates[0].flush_per_second, 50.0);
  EXPECT_LT(rates[0].read_p50_ns, 0);  // no read latencies recorded
  EXPECT_DOUBLE_EQ(rates[0].write_p50_ns, 8192 + 0.5 * 8192);
}

TEST(Stats, ACounterThatWentDownRestartedFromZero) {
  // The volume was re-exposed between the samples: its counters restarted.
  auto before = parse_stats(sample(0, {volume("v", 5000, 0, histogram({}), histogram({}))}));
  auto after =
      parse_stats(sample(1'000'000'000, {volume("v", 300, 0, histogram({}), histogram({}))}));
  auto rates = compute_rates(*before, *after);
  EXPECT_DOUBLE_EQ(rates[0].read_iops, 300.0);
}

TEST(Stats, NewVolumeCountsFromZero) {
  auto before = parse_stats(sample(0, Json::array()));
  auto after =
      parse_stats(sample(500'000'000, {volume("new", 100, 0, histogram({}), histogram({}))}));
  auto rates = compute_rates(*before, *after);
  ASSERT_EQ(rates.size(), 1u);
  EXPECT_DOUBLE_EQ(rates[0].read_iops, 200.0);
}

TEST(Stats, TableAndJson) {
  auto before = parse_stats(sample(0, {volume("vol0", 0, 0, histogram({}), histogram({}))}));
  auto after = parse_stats(sample(
      1'000'000'000, {volume("vol0", 2000, 1000, histogram({{2, 2000}}), histogram({{5, 1000}}))}));
  auto rates = compute_rates(*before, *after);
  std::ostringstream out;
  print_rates_table(out, rates);
  // 2000 reads of 4 KiB and 1000 writes of 64 KiB in 1 s; reads in [2, 4) us,
  // writes in [16, 32) us.
  EXPECT_EQ(out.str(),
            "VOLUME   r/s   w/s  rMB/s  wMB/s  r_p50  r_p99   w_p50   w_p99  flush/s  errors\n"
            "vol0    2000  1000    8.2   65.5  3.1us  4.1us  24.6us  32.6us      100       0\n");
  const Json j = rates_to_json(rates, after->time_ns);
  EXPECT_EQ(j["volumes"][0]["name"], "vol0");
  EXPECT_DOUBLE_EQ(j["volumes"][0]["read_iops"].get<double>(), 2000.0);
  EXPECT_DOUBLE_EQ(j["volumes"][0]["write_bytes_per_second"].get<double>(), 1000.0 * 65536);
  EXPECT_DOUBLE_EQ(j["volumes"][0]["read_latency_p50_ns"].get<double>(), 3072.0);
  EXPECT_DOUBLE_EQ(j["volumes"][0]["write_latency_p99_ns"].get<double>(), 16384 + 0.99 * 16384);
}

TEST(Stats, PrometheusText) {
  auto s = parse_stats(sample(
      7, {volume("vol0", 3, 2, histogram({{0, 1}, {2, 2}}, 5000), histogram({{31, 2}}, 9000)),
          volume("idle", 0, 0, histogram({}), histogram({}), false)}));
  ASSERT_TRUE(s.ok());
  const std::string text = prometheus_text(*s);
  auto has = [&](const std::string& line) {
    return text.find("\n" + line + "\n") != std::string::npos || text.starts_with(line + "\n");
  };
  EXPECT_TRUE(has("# TYPE ublkvol_volume_reads_total counter")) << text;
  EXPECT_TRUE(has("ublkvol_volume_reads_total{volume=\"vol0\"} 3")) << text;
  EXPECT_TRUE(has("ublkvol_volume_written_bytes_total{volume=\"vol0\"} 131072")) << text;
  EXPECT_TRUE(has("ublkvol_volume_exposed{volume=\"idle\"} 0")) << text;
  // Zero copy counters: reported by newer daemons, 0 when absent.
  EXPECT_TRUE(has("ublkvol_volume_zero_copy_ios_total{volume=\"vol0\"} 0")) << text;
  EXPECT_TRUE(has("ublkvol_volume_copied_ios_total{volume=\"vol0\"} 0")) << text;
  EXPECT_TRUE(has("# TYPE ublkvol_volume_read_latency_seconds histogram")) << text;
  // Buckets are cumulative, in seconds; the last one is +Inf.
  EXPECT_TRUE(
      has("ublkvol_volume_read_latency_seconds_bucket{volume=\"vol0\",le=\"0.000001024\"} 1"))
      << text;
  EXPECT_TRUE(
      has("ublkvol_volume_read_latency_seconds_bucket{volume=\"vol0\",le=\"0.000002048\"} 1"))
      << text;
  EXPECT_TRUE(
      has("ublkvol_volume_read_latency_seconds_bucket{volume=\"vol0\",le=\"0.000004096\"} 3"))
      << text;
  EXPECT_TRUE(has("ublkvol_volume_read_latency_seconds_bucket{volume=\"vol0\",le=\"+Inf\"} 3"))
      << text;
  EXPECT_TRUE(has("ublkvol_volume_read_latency_seconds_sum{volume=\"vol0\"} 5e-06")) << text;
  EXPECT_TRUE(has("ublkvol_volume_read_latency_seconds_count{volume=\"vol0\"} 3")) << text;
  // The daemon's last bucket (also everything slower) is exported as +Inf only.
  EXPECT_TRUE(has("ublkvol_volume_write_latency_seconds_bucket{volume=\"vol0\",le=\"+Inf\"} 2"))
      << text;
  EXPECT_TRUE(
      has("ublkvol_volume_write_latency_seconds_bucket{volume=\"vol0\",le=\"1099.511627776\"} 0"))
      << text;
  // Every sample line is "name{labels} value": no blank or malformed lines.
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    ASSERT_FALSE(line.empty());
    if (line[0] == '#') {
      continue;
    }
    EXPECT_TRUE(line.starts_with("ublkvol_volume_")) << line;
    EXPECT_NE(line.find("} "), std::string::npos) << line;
  }
}

// Reactors: cumulative busy time, uptime and messages per reactor.
TEST(Stats, PrometheusReactorMetrics) {
  Json result = sample(7, {volume("vol0", 0, 0, histogram({}), histogram({}))});
  result["reactors"] = Json::array({{{"name", "reactor0"},
                                     {"cpu", 0},
                                     {"busy_seconds", 1.5},
                                     {"uptime_seconds", 10.0},
                                     {"messages_sent", 42},
                                     {"busy_percent", 15.0},
                                     {"messages_per_second", 4.2}},
                                    {{"name", "reactor1"},
                                     {"cpu", nullptr},
                                     {"busy_seconds", 0.25},
                                     {"uptime_seconds", 10.0},
                                     {"messages_sent", 0}}});
  auto s = parse_stats(result);
  ASSERT_TRUE(s.ok()) << s.error().message();
  const std::string text = prometheus_text(*s);
  auto has = [&](const std::string& line) {
    return text.find("\n" + line + "\n") != std::string::npos;
  };
  EXPECT_TRUE(has("# TYPE ublkvol_reactor_busy_seconds_total counter")) << text;
  EXPECT_TRUE(has("ublkvol_reactor_busy_seconds_total{reactor=\"reactor0\",cpu=\"0\"} 1.5"))
      << text;
  EXPECT_TRUE(has("ublkvol_reactor_busy_seconds_total{reactor=\"reactor1\",cpu=\"\"} 0.25"))
      << text;
  EXPECT_TRUE(has("ublkvol_reactor_uptime_seconds_total{reactor=\"reactor0\",cpu=\"0\"} 10"))
      << text;
  EXPECT_TRUE(has("ublkvol_reactor_messages_sent_total{reactor=\"reactor0\",cpu=\"0\"} 42"))
      << text;
  // A malformed entry is named.
  result["reactors"][1].erase("messages_sent");
  auto bad = parse_stats(result);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message().find("reactor 'reactor1'"), std::string::npos)
      << bad.error().message();
}

// The last verify / scrub result of each volume (issue 12 item 7).
TEST(Stats, PrometheusVerifyMetrics) {
  Json scrubbed = volume("vol0", 0, 0, histogram({}), histogram({}));
  scrubbed["verify"] = {{"active", false},
                        {"runs", 3},
                        {"last",
                         {{"time_unix", 1800000000},
                          {"bytes", 1048576},
                          {"mismatched_bytes", 4096},
                          {"repaired_bytes", 4096},
                          {"unrepaired_bytes", 0}}}};
  auto s = parse_stats(sample(7, {scrubbed, volume("old", 0, 0, histogram({}), histogram({}))}));
  ASSERT_TRUE(s.ok()) << s.error().message();
  const std::string text = prometheus_text(*s);
  auto has = [&](const std::string& line) {
    return text.find("\n" + line + "\n") != std::string::npos;
  };
  EXPECT_TRUE(has("# TYPE ublkvol_volume_verify_runs_total counter")) << text;
  EXPECT_TRUE(has("ublkvol_volume_verify_runs_total{volume=\"vol0\"} 3")) << text;
  EXPECT_TRUE(has("ublkvol_volume_verify_last_timestamp_seconds{volume=\"vol0\"} 1800000000"))
      << text;
  EXPECT_TRUE(has("ublkvol_volume_verify_last_bytes{volume=\"vol0\"} 1048576")) << text;
  EXPECT_TRUE(has("ublkvol_volume_verify_last_mismatched_bytes{volume=\"vol0\"} 4096")) << text;
  EXPECT_TRUE(has("ublkvol_volume_verify_last_repaired_bytes{volume=\"vol0\"} 4096")) << text;
  EXPECT_TRUE(has("ublkvol_volume_verify_last_unrepaired_bytes{volume=\"vol0\"} 0")) << text;
  // A daemon without verify data gets no verify samples for that volume.
  EXPECT_EQ(text.find("ublkvol_volume_verify_runs_total{volume=\"old\"}"), std::string::npos);
}

}  // namespace
}  // namespace ublkvol::cli

namespace ublkvol::cli {
namespace {

TEST(Stats, FewRequestsStillShow) {
  VolumeRates r;
  r.name = "v";
  r.read_iops = 0.5;
  r.write_iops = 12.4;
  std::ostringstream out;
  print_rates_table(out, {r});
  EXPECT_EQ(out.str(),
            "VOLUME  r/s  w/s  rMB/s  wMB/s  r_p50  r_p99  w_p50  w_p99  flush/s  errors\n"
            "v       0.5   12    0.0    0.0      -      -      -      -        0       0\n");
}

}  // namespace
}  // namespace ublkvol::cli
