// Remote replicas in the human output and in Prometheus (issue 16 item 2):
// volume show lists each remote replica's URI, state, connections, latency
// p50/p99, reconnects and last error; one not reached since start is
// counted and shown as connecting; `stats --prometheus` exports them.
#include <gtest/gtest.h>
#include <sstream>
#include <string>

#include "render.h"
#include "stats.h"

namespace ublkvol::cli {
namespace {

Json remote_volume() {
  return Json::parse(R"({"name": "vol0", "size_bytes": 1073741824, "generation": 1234,
    "min_replicas": 1, "in_sync": 2, "online": true, "device": null,
    "replicas": [
      {"index": 0, "store": "s0", "state": "in_sync", "generation": 1234, "last_error": ""},
      {"index": 1, "store": null, "state": "in_sync", "generation": 1234, "last_error": "",
       "remote": {"uri": "nbds://alice@hostB:10809/vol0r", "tls": "psk",
                  "tls_psk": "/etc/ublk-volumed/nbd.psk", "state": "in_sync",
                  "connections": 4, "live_connections": 4, "requests": 812, "failed_requests": 0,
                  "latency_p50_us": 128, "latency_p99_us": 1024, "reconnects": 1,
                  "attempts": 3, "retry_delay_ms": 100,
                  "last_error": "reconnected; the previous connection ended with: reset"}},
      {"index": 2, "store": null, "state": "failed", "generation": 1200,
       "last_error": "deadline missed",
       "remote": {"uri": "nbds://alice@hostC:10809/vol0r", "tls": "psk",
                  "tls_psk": "/etc/ublk-volumed/nbd.psk", "state": "connecting",
                  "connections": 4, "live_connections": 0, "requests": 5, "failed_requests": 2,
                  "latency_p50_us": 64, "latency_p99_us": 8192, "reconnects": 0,
                  "attempts": 4, "retry_delay_ms": 1600, "last_error": "connection refused"}}],
    "pending_remotes": [{"uri": "nbd+unix:///r?socket=/run/r.sock", "tls_psk": "",
                         "attempts": 2, "error": "no such file"}],
    "missing_stores": [],
    "rebuild": {"active": false, "percent": 0, "bytes_per_second": 0, "eta_seconds": 0,
                "done_bytes": 0, "total_bytes": 0, "full_from": 0, "completed": 1,
                "last_error": ""},
    "events": [], "snapshots": []})");
}

TEST(RemoteRender, VolumeShowListsRemoteReplicas) {
  std::ostringstream out;
  render_volume(out, remote_volume());
  EXPECT_EQ(
      out.str(),
      "Volume:       vol0\n"
      "Size:         1.0G\n"
      "State:        degraded (2/4 replicas in sync, min 1)\n"
      "Generation:   00000000000004d2\n"
      "Device:       not exposed\n"
      "Snapshots:    none\n"
      "Rebuild:      idle\n"
      "Replicas:\n"
      "INDEX  STORE                             STATE             GENERATION  LAST-ERROR\n"
      "    0  s0                                in_sync     00000000000004d2  -\n"
      "    1  nbds://alice@hostB:10809/vol0r    in_sync     00000000000004d2  -\n"
      "    2  nbds://alice@hostC:10809/vol0r    failed      00000000000004b0  deadline missed\n"
      "    -  nbd+unix:///r?socket=/run/r.sock  connecting                 -  no such file\n"
      "Remote replicas:\n"
      "INDEX  URI                               STATE       CONN    P50     P99  RECONNECTS  "
      "LAST-ERROR\n"
      "    1  nbds://alice@hostB:10809/vol0r    in_sync      4/4  128us  1024us           1  "
      "reconnected; the previous connection ended with: reset\n"
      "    2  nbds://alice@hostC:10809/vol0r    connecting   0/4   64us  8192us           0  "
      "connection refused\n"
      "    -  nbd+unix:///r?socket=/run/r.sock  connecting     -      -       -           -  "
      "no such file\n");
}

TEST(RemoteRender, VolumeListCountsUnreachedRemotes) {
  std::ostringstream out;
  render_volume_list(out, {{"volumes", {remote_volume()}}});
  EXPECT_NE(out.str().find("2/4"), std::string::npos) << out.str();
}

TEST(RemoteRender, PrometheusExportsRemoteReplicas) {
  Json bounds = Json::array();
  Json zeros = Json::array();
  for (int i = 0; i < 32; ++i) {
    bounds.push_back(uint64_t{1} << (10 + i));
    zeros.push_back(0);
  }
  const Json h = {{"buckets", zeros}, {"sum_ns", 0}};
  Json v = {{"name", "vol0"},    {"exposed", false},     {"reads", 0},
            {"writes", 0},       {"flushes", 0},         {"discards", 0},
            {"write_zeroes", 0}, {"bytes_read", 0},      {"bytes_written", 0},
            {"errors", 0},       {"read_latency_ns", h}, {"write_latency_ns", h}};
  Json remotes = Json::array();
  const Json shown = remote_volume();  // the loop below must not outlive it
  for (const auto& r : shown["replicas"]) {
    if (r.contains("remote")) {
      Json entry = r["remote"];
      entry["volume"] = "vol0";
      entry["index"] = r["index"];
      remotes.push_back(entry);
    }
  }
  remotes.push_back({{"volume", "vol0"},
                     {"index", nullptr},
                     {"uri", "nbd+unix:///r?socket=/run/r.sock"},
                     {"state", "connecting"}});
  v["remote_replicas"] = remotes;
  auto s = parse_stats({{"time_ns", 1}, {"latency_bucket_upper_ns", bounds}, {"volumes", {v}}});
  ASSERT_TRUE(s.ok()) << s.error().message();
  ASSERT_EQ(s->volumes[0].remotes.size(), 3U);
  const std::string text = prometheus_text(*s);
  auto has = [&](const std::string& line) {
    return text.find("\n" + line + "\n") != std::string::npos;
  };
  const std::string b = R"({volume="vol0",index="1",uri="nbds://alice@hostB:10809/vol0r")";
  const std::string c = R"({volume="vol0",index="2",uri="nbds://alice@hostC:10809/vol0r")";
  EXPECT_TRUE(has("# TYPE ublkvol_remote_replica_state gauge")) << text;
  EXPECT_TRUE(has("ublkvol_remote_replica_state" + b + R"(,state="in_sync"} 1)")) << text;
  EXPECT_TRUE(has("ublkvol_remote_replica_state" + c + R"(,state="connecting"} 1)")) << text;
  EXPECT_TRUE(has(
      R"(ublkvol_remote_replica_state{volume="vol0",index="",uri="nbd+unix:///r?socket=/run/r.sock",state="connecting"} 1)"))
      << text;
  EXPECT_TRUE(has("ublkvol_remote_replica_live_connections" + b + "} 4")) << text;
  EXPECT_TRUE(has("ublkvol_remote_replica_live_connections" + c + "} 0")) << text;
  EXPECT_TRUE(has("ublkvol_remote_replica_failed_requests_total" + c + "} 2")) << text;
  EXPECT_TRUE(has("ublkvol_remote_replica_latency_p99_seconds" + b + "} 0.001024")) << text;
  EXPECT_TRUE(has("ublkvol_remote_replica_reconnects_total" + b + "} 1")) << text;
  EXPECT_TRUE(has("# TYPE ublkvol_remote_replica_requests_total counter")) << text;
}

}  // namespace
}  // namespace ublkvol::cli
