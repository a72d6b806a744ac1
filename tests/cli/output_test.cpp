// Human output: tables, number formatting, progress lines, and the
// renderers of the daemon's results (canned results as the protocol doc
// shows them).
#include <gtest/gtest.h>
#include <sstream>
#include <string>

#include "progress.h"
#include "render.h"
#include "table.h"

namespace ublkvol::cli {
namespace {

TEST(Table, AlignsColumnsAndFillsEmptyCells) {
  Table table({{"NAME"}, {"SIZE", Table::Align::kRight}, {"PATH"}});
  table.add_row({"s0", "10.0G", "/dev/nvme0n1"});
  table.add_row({"store-long", "512.0M", ""});
  std::ostringstream out;
  table.print(out);
  EXPECT_EQ(out.str(),
            "NAME          SIZE  PATH\n"
            "s0           10.0G  /dev/nvme0n1\n"
            "store-long  512.0M  -\n");
}

TEST(Table, IndentAndMissingCells) {
  Table table({{"A"}, {"B"}});
  table.add_row({"x"});
  std::ostringstream out;
  table.print(out, 2);
  EXPECT_EQ(out.str(), "  A  B\n  x  -\n");
}

TEST(Format, DurationsRatesLatencies) {
  EXPECT_EQ(format_duration(-1), "-");
  EXPECT_EQ(format_duration(0), "0s");
  EXPECT_EQ(format_duration(45.4), "45s");
  EXPECT_EQ(format_duration(185), "3m05s");
  EXPECT_EQ(format_duration(7260), "2h01m");
  EXPECT_EQ(format_rate(0), "0B/s");
  EXPECT_EQ(format_rate(512), "512B/s");
  EXPECT_EQ(format_rate(120.5 * 1024 * 1024), "120.5M/s");
  EXPECT_EQ(format_latency_ns(850), "850ns");
  EXPECT_EQ(format_latency_ns(12345), "12.3us");
  EXPECT_EQ(format_latency_ns(456000), "456us");
  EXPECT_EQ(format_latency_ns(4.56e6), "4.56ms");
  EXPECT_EQ(format_latency_ns(1.2e9), "1.20s");
}

TEST(Progress, BarPercentRateEta) {
  EXPECT_EQ(render_progress({50, 120.0 * 1024 * 1024, 12}, 10),
            "[#####-----]   50.0%  120.0M/s  ETA 12s");
  EXPECT_EQ(render_progress({0, -1, -1}, 4), "[----]    0.0%  -  ETA -");
  EXPECT_EQ(render_progress({100, 0, 0}, 4), "[####]  100.0%  0B/s  ETA 0s");
  EXPECT_EQ(render_progress({250, -1, -1}, 4), "[####]  100.0%  -  ETA -");  // clamped
}

TEST(Progress, PlainModePrintsEachTenPercentOnce) {
  std::ostringstream out;
  ProgressReporter reporter(out, /*tty=*/false, "rebuild v replica 1");
  for (double p : {0.0, 1.0, 5.0, 10.0, 12.0, 55.0, 56.0, 100.0}) {
    reporter.update({p, -1, -1});
  }
  reporter.finish("done");
  const std::string text = out.str();
  EXPECT_EQ(text.find('\r'), std::string::npos);
  std::istringstream lines(text);
  std::string line;
  std::vector<std::string> all;
  while (std::getline(lines, line)) {
    all.push_back(line);
  }
  ASSERT_EQ(all.size(), 5u) << text;  // 0%, 10%, 55%, 100%, done
  EXPECT_NE(all[0].find("0.0%"), std::string::npos);
  EXPECT_NE(all[1].find("10.0%"), std::string::npos);
  EXPECT_NE(all[2].find("55.0%"), std::string::npos);
  EXPECT_NE(all[3].find("100.0%"), std::string::npos);
  EXPECT_EQ(all[4], "rebuild v replica 1: done");
}

TEST(Progress, TtyModeRedrawsOneLine) {
  std::ostringstream out;
  ProgressReporter reporter(out, /*tty=*/true, "r");
  reporter.update({10, -1, -1});
  reporter.update({20, -1, -1});
  reporter.finish("done");
  const std::string text = out.str();
  EXPECT_EQ(std::count(text.begin(), text.end(), '\r'), 2);
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 2);  // end of bar line + done
  EXPECT_TRUE(text.ends_with("\nr: done\n")) << text;
}

Json sample_volume() {
  return Json::parse(R"({"name": "vol0", "size_bytes": 10737418240, "generation": 1234,
    "min_replicas": 2, "in_sync": 2, "online": true,
    "device": {"path": "/dev/ublkb0", "dev_id": 0, "queues": 2, "queue_depth": 128},
    "replicas": [
      {"index": 0, "store": "s0", "state": "in_sync", "generation": 1234, "last_error": ""},
      {"index": 1, "store": "s1", "state": "rebuilding", "generation": 1200, "last_error": ""},
      {"index": 2, "store": "s2", "state": "in_sync", "generation": 1234, "last_error": ""}],
    "rebuild": {"active": true, "percent": 42.5, "bytes_per_second": 104857600,
                "eta_seconds": 30, "done_bytes": 4563402752, "total_bytes": 10737418240,
                "last_error": ""},
    "events": [{"time": "2026-11-21T22:10:03Z", "replica": 1, "message": "failed by operator"},
               {"time": "2026-11-21T22:10:04Z", "replica": -1, "message": "2 of 3 replicas in sync"}],
    "snapshots": ["a", "b"]})");
}

TEST(Render, VolumeShow) {
  std::ostringstream out;
  render_volume(out, sample_volume());
  EXPECT_EQ(out.str(),
            "Volume:       vol0\n"
            "Size:         10.0G\n"
            "State:        degraded (2/3 replicas in sync, min 2)\n"
            "Generation:   00000000000004d2\n"
            "Device:       /dev/ublkb0 (dev_id 0, 2 queue(s) x depth 128)\n"
            "Snapshots:    a, b\n"
            "Rebuild:      42.5% (4.2G of 10.0G, 100.0M/s, ETA 30s)\n"
            "Replicas:\n"
            "INDEX  STORE  STATE             GENERATION  LAST-ERROR\n"
            "    0  s0     in_sync     00000000000004d2  -\n"
            "    1  s1     rebuilding  00000000000004b0  -\n"
            "    2  s2     in_sync     00000000000004d2  -\n"
            "Events:\n"
            "  2026-11-21T22:10:03Z  replica 1  failed by operator\n"
            "  2026-11-21T22:10:04Z  volume  2 of 3 replicas in sync\n");
}

TEST(Render, VolumeListAndHealth) {
  Json healthy = sample_volume();
  healthy["name"] = "ok";
  healthy["replicas"][1]["state"] = "in_sync";
  healthy["rebuild"]["active"] = false;
  healthy["device"] = nullptr;
  healthy["snapshots"] = Json::array();
  Json offline = healthy;
  offline["name"] = "down";
  offline["online"] = false;
  EXPECT_EQ(volume_health(healthy), "online");
  EXPECT_EQ(volume_health(sample_volume()), "degraded");
  EXPECT_EQ(volume_health(offline), "offline");
  std::ostringstream out;
  render_volume_list(out, {{"volumes", {sample_volume(), healthy, offline}}});
  EXPECT_EQ(out.str(),
            "NAME   SIZE  STATE     IN-SYNC  MIN  REBUILD  DEVICE       SNAPSHOTS\n"
            "vol0  10.0G  degraded      2/3    2    42.5%  /dev/ublkb0          2\n"
            "ok    10.0G  online        3/3    2        -  -                    0\n"
            "down  10.0G  offline       3/3    2        -  -                    0\n");
}

// A replica on a store that is not available is shown in the human output
// (not only in --json): counted, listed, and the volume is degraded.
TEST(Render, MissingStoreIsShown) {
  Json v = sample_volume();
  v["replicas"][1]["state"] = "in_sync";
  v["rebuild"]["active"] = false;
  v["events"] = Json::array();
  v["device"] = nullptr;
  v["missing_stores"] = {"s3"};
  EXPECT_EQ(volume_health(v), "degraded");
  std::ostringstream show;
  render_volume(show, v);
  EXPECT_EQ(show.str(),
            "Volume:       vol0\n"
            "Size:         10.0G\n"
            "State:        degraded (3/4 replicas in sync, min 2)\n"
            "Missing:      replica(s) on unavailable store(s) s3 (see ublk-volume store show)\n"
            "Generation:   00000000000004d2\n"
            "Device:       not exposed\n"
            "Snapshots:    a, b\n"
            "Rebuild:      idle\n"
            "Replicas:\n"
            "INDEX  STORE  STATE          GENERATION  LAST-ERROR\n"
            "    0  s0     in_sync  00000000000004d2  -\n"
            "    1  s1     in_sync  00000000000004b0  -\n"
            "    2  s2     in_sync  00000000000004d2  -\n"
            "    -  s3     missing                 -  store unavailable\n");
  std::ostringstream list;
  render_volume_list(list, {{"volumes", {v}}});
  EXPECT_EQ(list.str(),
            "NAME   SIZE  STATE     IN-SYNC  MIN  REBUILD  DEVICE  SNAPSHOTS\n"
            "vol0  10.0G  degraded      3/4    2        -  -               2\n");
}

TEST(Render, OrphansAreWarnedAbout) {
  std::ostringstream status;
  render_status(status, Json::parse(R"json({"version": "0.1.0", "pid": 42, "uptime_seconds": 1,
      "state_dir": "/s", "ublk": {"available": true, "message": ""}, "stores": 1, "volumes": 0,
      "exposed": 0, "orphans": [{"store": "a", "volume": "v9", "size_bytes": 8388608,
      "complete": true}], "pending_intents": 0})json"));
  EXPECT_EQ(status.str(),
            "Daemon:       ublk-volumed 0.1.0 (pid 42, up 1s)\n"
            "State dir:    /s\n"
            "ublk:         available\n"
            "Stores:       1\n"
            "Volumes:      0 (0 exposed)\n"
            "WARNING: 1 orphan volume(s) no volume owns, left by an interrupted operation: a/v9\n"
            "  adopt: ublk-volume volume import NAME --store S...; delete: ublk-volume store gc "
            "STORE\n");
  std::ostringstream gc;
  render_store_gc(gc, "a",
                  Json::parse(R"({"orphans": [{"store": "a", "volume": "v9", "size_bytes": 8388608,
                      "complete": true}], "removed": true})"));
  EXPECT_EQ(gc.str(), "store 'a': deleted 1 orphan volume(s):\n  v9 (8.0M)\n");
}

TEST(Render, StatusShowsTheKernelItsFeaturesAndAWarning) {
  std::ostringstream status;
  render_status(status, Json::parse(R"json({"version": "0.1.0", "pid": 42, "uptime_seconds": 1,
      "state_dir": "/s", "ublk": {"available": true, "message": ""},
      "kernel": {"release": "6.18.4-1", "ublk_features": "0x1fffff",
                 "features_enabled": "UPDATE_SIZE", "features_off": "QUIESCE",
                 "warning": "Linux 6.18.4-1 has known ublk_drv regressions"},
      "stores": 0, "volumes": 0, "exposed": 0, "orphans": [], "pending_intents": 0})json"));
  EXPECT_EQ(status.str(),
            "Daemon:       ublk-volumed 0.1.0 (pid 42, up 1s)\n"
            "State dir:    /s\n"
            "ublk:         available\n"
            "Kernel:       6.18.4-1, ublk features 0x1fffff; enabled: UPDATE_SIZE; turned off: "
            "QUIESCE\n"
            "WARNING: Linux 6.18.4-1 has known ublk_drv regressions\n"
            "Stores:       0\n"
            "Volumes:      0 (0 exposed)\n");
  std::ostringstream unknown;
  render_status(unknown, Json::parse(R"json({"version": "0.1.0", "pid": 42, "uptime_seconds": 1,
      "state_dir": "/s", "kernel": {"release": "6.1.0", "ublk_features": null,
      "features_enabled": null, "features_off": "none", "warning": ""}, "stores": 0,
      "volumes": 0, "exposed": 0, "orphans": [], "pending_intents": 0})json"));
  EXPECT_NE(
      unknown.str().find("Kernel:       6.1.0, ublk features unknown (ublk_drv not loaded)\n"),
      std::string::npos)
      << unknown.str();
}

TEST(Render, StatusListsTheReactorsTheirLoadAndStores) {
  std::ostringstream status;
  render_status(status, Json::parse(R"json({"version": "0.1.0", "pid": 42, "uptime_seconds": 1,
      "state_dir": "/s", "stores": 3, "volumes": 0, "exposed": 0, "orphans": [],
      "pending_intents": 0, "reactors": [
        {"index": 0, "name": "reactor0", "cpu": 0, "stores": ["a", "c"],
         "queues": ["v0:0", "v0:1"], "busy_percent": 12.34,
         "messages_per_second": 3400.4, "busy_seconds": 1.0, "uptime_seconds": 9.0,
         "messages_sent": 17, "sleeps": 5},
        {"index": 1, "name": "reactor1", "cpu": null, "stores": [], "busy_percent": 0,
         "messages_per_second": 0, "busy_seconds": 0, "uptime_seconds": 9.0,
         "messages_sent": 0, "sleeps": 1}]})json"));
  EXPECT_EQ(status.str(),
            "Daemon:       ublk-volumed 0.1.0 (pid 42, up 1s)\n"
            "State dir:    /s\n"
            "Stores:       3\n"
            "Volumes:      0 (0 exposed)\n"
            "Reactors:     2 (busy and messages to other threads: last second)\n"
            "  reactor0  CPU 0  busy  12.3%       3400 msg/s  stores: a, c  queues: v0:0, v0:1\n"
            "  reactor1  CPU -  busy   0.0%          0 msg/s  stores: -  queues: -\n");
  std::ostringstream threads;
  render_status(threads, Json::parse(R"json({"version": "0.1.0", "pid": 42, "uptime_seconds": 1,
      "state_dir": "/s", "stores": 0, "volumes": 0, "exposed": 0, "orphans": [],
      "pending_intents": 0, "reactors": []})json"));
  EXPECT_NE(threads.str().find("Reactors:     none (config \"reactors\": null: a thread per "
                               "store and per queue)\n"),
            std::string::npos)
      << threads.str();
}

TEST(Render, EmptyListsSayHowToStart) {
  std::ostringstream out;
  render_volume_list(out, {{"volumes", Json::array()}});
  render_store_list(out, {{"stores", Json::array()}});
  render_snapshot_list(out, {{"snapshots", Json::array()}});
  EXPECT_EQ(out.str(),
            "no volumes (create one: ublk-volume volume create NAME --size 10G --store S1 S2 S3)\n"
            "no stores (add one: ublk-volume store add NAME PATH --format --size 10G)\n"
            "no snapshots\n");
}

TEST(Render, StoreListShowAndCheck) {
  const Json store = Json::parse(R"({"name": "a", "path": "/dev/shm/a.img", "uuid": "u-1",
    "size_bytes": 1073741824, "extent_size": 1048576, "used_bytes": 268435456,
    "free_bytes": 805306368, "state": "online", "error": null,
    "replicas": [{"volume": "vol0", "replica": 0}]})");
  std::ostringstream list;
  render_store_list(list, {{"stores", {store}}});
  EXPECT_EQ(list.str(),
            "NAME  SIZE    USED    FREE  USE%  STATE   REPLICAS  PATH\n"
            "a     1.0G  256.0M  768.0M   25%  online         1  /dev/shm/a.img\n");
  std::ostringstream show;
  render_store(show, store);
  EXPECT_EQ(show.str(),
            "Store:        a\n"
            "Path:         /dev/shm/a.img\n"
            "UUID:         u-1\n"
            "State:        online\n"
            "Size:         1.0G\n"
            "Used:         256.0M\n"
            "Free:         768.0M\n"
            "Extent size:  1.0M\n"
            "Replicas:\n"
            "  VOLUME  REPLICA\n"
            "  vol0          0\n");
  std::ostringstream check;
  render_store_check(check, "a", {{"ok", false}, {"problems", {"extent 3 mapped twice"}}});
  EXPECT_EQ(check.str(), "store 'a': check FAILED, 1 problem(s):\n  - extent 3 mapped twice\n");
}

TEST(Render, StatusShowsUblkAvailability) {
  std::ostringstream out;
  render_status(out, Json::parse(R"json({"version": "0.1.0", "pid": 42, "uptime_seconds": 61,
      "state_dir": "/var/lib/ublk-volumed", "ublk": {"available": false,
      "message": "ublk_drv is not loaded (modprobe ublk_drv)"}, "stores": 3, "volumes": 1,
      "exposed": 0})json"));
  EXPECT_EQ(out.str(),
            "Daemon:       ublk-volumed 0.1.0 (pid 42, up 1m01s)\n"
            "State dir:    /var/lib/ublk-volumed\n"
            "ublk:         NOT available: ublk_drv is not loaded (modprobe ublk_drv)\n"
            "Stores:       3\n"
            "Volumes:      1 (0 exposed)\n");
}

}  // namespace
}  // namespace ublkvol::cli
