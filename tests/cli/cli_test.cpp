// ublk-volume end to end against a fake daemon: argv -> request, result ->
// output, daemon error -> exit status, and the usage errors that never
// reach the daemon.
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <gtest/gtest.h>
#include <regex>

#include "exit_code.h"
#include "fake_daemon.h"

namespace ublkvol::cli {
namespace {

using daemon::ErrorCode;
using testing::FakeDaemon;
using testing::run;

constexpr int kOk = 0, kFailed = 1, kUsage = 2, kUnreachable = 3, kNotFound = 4, kConflict = 5,
              kUnavailable = 6, kCorrupt = 8;

Json volume_json(const std::string& name, const std::string& state1 = "in_sync", double percent = 0,
                 bool rebuilding = false) {
  return {
      {"name", name},
      {"size_bytes", 1ull << 30},
      {"generation", 7},
      {"min_replicas", 2},
      {"in_sync", 2},
      {"online", true},
      {"device", nullptr},
      {"replicas",
       {{{"index", 0}, {"store", "a"}, {"state", "in_sync"}, {"generation", 7}, {"last_error", ""}},
        {{"index", 1},
         {"store", "b"},
         {"state", state1},
         {"generation", 5},
         {"last_error", state1 == "failed" ? "I/O error on b" : ""}},
        {{"index", 2},
         {"store", "c"},
         {"state", "in_sync"},
         {"generation", 7},
         {"last_error", ""}}}},
      {"rebuild",
       {{"active", rebuilding},
        {"percent", percent},
        {"bytes_per_second", 50 << 20},
        {"eta_seconds", 9},
        {"done_bytes", 0},
        {"total_bytes", 1ull << 30},
        {"last_error", ""}}},
      {"events", Json::array()},
      {"snapshots", Json::array()}};
}

TEST(Cli, HelpAtEveryLevelWithExamples) {
  FakeDaemon d;
  auto top = run(d, {"--help"});
  EXPECT_EQ(top.status, kOk);
  EXPECT_NE(top.out.find("Exit status:"), std::string::npos);
  for (const char* group : {"store", "volume", "snapshot", "replica"}) {
    auto help = run(d, {group, "--help"});
    EXPECT_EQ(help.status, kOk) << group;
    EXPECT_NE(help.out.find("Subcommands:"), std::string::npos) << group;
  }
  for (std::vector<std::string> cmd : {std::vector<std::string>{"store", "add"},
                                       {"volume", "create"},
                                       {"volume", "expose"},
                                       {"snapshot", "clone"},
                                       {"replica", "rebuild"},
                                       {"stats"},
                                       {"status"}}) {
    cmd.push_back("--help");
    auto help = run(d, cmd);
    EXPECT_EQ(help.status, kOk) << cmd[0];
    EXPECT_NE(help.out.find("Examples:\n  ublk-volume "), std::string::npos) << cmd[0] << help.out;
  }
  EXPECT_TRUE(d.calls.empty());
}

TEST(Cli, UsageErrorsExit2WithoutTalkingToTheDaemon) {
  FakeDaemon d;
  const std::vector<std::vector<std::string>> bad = {
      {},
      {"frobnicate"},
      {"volume"},
      {"volume", "create", "v", "--store", "a"},             // no --size
      {"volume", "create", "v", "--size", "1G"},             // no --store
      {"volume", "create", "--size", "1G", "--store", "a"},  // no name
      {"replica", "rebuild", "v", "one"},                    // index not a number
      {"replica", "fail", "v", "-1"},
      {"volume", "show", "a", "b"},  // extra argument
      {"completion", "zsh"},
      {"stats", "--interval", "fast"},
  };
  for (const auto& args : bad) {
    auto r = run(d, args);
    std::string joined;
    for (const auto& a : args) {
      joined += a + " ";
    }
    EXPECT_EQ(r.status, kUsage) << joined << "\n" << r.err << r.out;
    EXPECT_FALSE(r.err.empty()) << joined;
  }
  EXPECT_TRUE(d.calls.empty());
}

TEST(Cli, BadSizesNameTheArgument) {
  FakeDaemon d;
  struct Case {
    std::vector<std::string> args;
    std::string message;
  };
  const Case cases[] = {
      {{"volume", "create", "v", "--size", "10X", "--store", "a"},
       "ublk-volume: --size '10X': unknown unit 'X' (use K, M, G, T or P, optionally followed by "
       "iB or B)\n"},
      {{"volume", "create", "v", "--size=-1G", "--store", "a"},
       "ublk-volume: --size '-1G': a size cannot be negative\n"},
      {{"volume", "create", "v", "--size", "0", "--store", "a"},
       "ublk-volume: --size '0': must be greater than zero\n"},
      {{"volume", "create", "v", "--size", "1000", "--store", "a"},
       "ublk-volume: --size '1000': not a multiple of 4096 bytes (4.0K)\n"},
      {{"volume", "create", "v", "--size", "99999999P", "--store", "a"},
       "ublk-volume: --size '99999999P': too large (the limit is 2^64-1 bytes)\n"},
      {{"volume", "resize", "v", "1.5"}, "ublk-volume: SIZE '1.5': not a whole number of bytes\n"},
      {{"store", "add", "s", "/tmp/x", "--format", "--size", "1G", "--extent-size", "3K"},
       "ublk-volume: --extent-size '3K': not a multiple of 4096 bytes (4.0K)\n"},
      {{"store", "add", "s", "/tmp/x", "--size", "1G"},
       "ublk-volume: --size creates a new store file and needs --format\n"},
  };
  for (const auto& c : cases) {
    auto r = run(d, c.args);
    EXPECT_EQ(r.status, kUsage) << c.message;
    EXPECT_EQ(r.err, c.message);
  }
  EXPECT_TRUE(d.calls.empty());
}

TEST(Cli, VolumeCreateSendsBytesAndStores) {
  FakeDaemon d;
  d.ok("volume.create", volume_json("v"));
  auto r = run(d, {"volume", "create", "v", "--size", "1.5G", "--store", "a", "b", "c",
                   "--min-replicas", "2"});
  EXPECT_EQ(r.status, kOk) << r.err;
  ASSERT_EQ(d.calls.size(), 1u);
  EXPECT_EQ(d.calls[0].method, "volume.create");
  EXPECT_EQ(d.calls[0].params, (Json{{"name", "v"},
                                     {"size", 1536ull << 20},
                                     {"stores", {"a", "b", "c"}},
                                     {"min_replicas", 2}}));
  EXPECT_EQ(r.out, "created volume 'v' (1.5G, 3 replica(s) on a, b, c)\n");

  // Comma-separated stores and a global option after the command.
  auto j = run(d, {"volume", "create", "w", "-s", "4096", "--store", "a,b", "--json"});
  EXPECT_EQ(j.status, kOk);
  EXPECT_EQ(d.calls[1].params["stores"], (Json{"a", "b"}));
  EXPECT_EQ(d.calls[1].params["size"], 4096);
  EXPECT_FALSE(d.calls[1].params.contains("min_replicas"));
  EXPECT_EQ(Json::parse(j.out), volume_json("v"));  // the daemon's result, verbatim
}

TEST(Cli, EveryCommandSendsTheDocumentedRequest) {
  struct Case {
    std::vector<std::string> args;
    std::string method;
    Json params;
  };
  const Case cases[] = {
      {{"store", "add", "s0", "/dev/nvme0n1"},
       "store.add",
       {{"name", "s0"}, {"path", "/dev/nvme0n1"}}},
      {{"store", "add", "s1", "/srv/s1.img", "--format", "--size", "20G", "--extent-size", "256K"},
       "store.add",
       {{"name", "s1"},
        {"path", "/srv/s1.img"},
        {"format", true},
        {"size", 20ull << 30},
        {"extent_size", 256 << 10}}},
      {{"store", "list"}, "store.list", Json::object()},
      {{"store", "show", "s0"}, "store.show", {{"name", "s0"}}},
      {{"store", "remove", "s0"}, "store.remove", {{"name", "s0"}}},
      {{"store", "check", "s0"}, "store.check", {{"name", "s0"}}},
      {{"store", "gc", "s0"}, "store.gc", {{"name", "s0"}}},
      {{"store", "gc", "s0", "--dry-run"}, "store.gc", {{"name", "s0"}, {"dry_run", true}}},
      {{"store", "add", "s2", "/dev/sdb", "--format", "--force"},
       "store.add",
       {{"name", "s2"}, {"path", "/dev/sdb"}, {"format", true}, {"force", true}}},
      {{"volume", "import", "v", "--store", "s0", "s1"},
       "volume.import",
       {{"name", "v"}, {"stores", {"s0", "s1"}}}},
      {{"volume", "list"}, "volume.list", Json::object()},
      {{"volume", "show", "v"}, "volume.show", {{"name", "v"}}},
      {{"volume", "delete", "v"}, "volume.delete", {{"name", "v"}}},
      {{"volume", "expose", "v", "--queues", "2", "--queue-depth", "64"},
       "volume.expose",
       {{"name", "v"}, {"queues", 2}, {"queue_depth", 64}}},
      {{"volume", "unexpose", "v"}, "volume.unexpose", {{"name", "v"}}},
      {{"volume", "resize", "v", "2G"}, "volume.resize", {{"name", "v"}, {"size", 2ull << 30}}},
      {{"snapshot", "create", "v", "s"}, "snapshot.create", {{"volume", "v"}, {"name", "s"}}},
      {{"snapshot", "list", "v"}, "snapshot.list", {{"volume", "v"}}},
      {{"snapshot", "delete", "v", "s"}, "snapshot.delete", {{"volume", "v"}, {"name", "s"}}},
      {{"snapshot", "revert", "v", "s"}, "snapshot.revert", {{"volume", "v"}, {"name", "s"}}},
      {{"snapshot", "clone", "v", "s", "c"},
       "snapshot.clone",
       {{"volume", "v"}, {"snapshot", "s"}, {"clone", "c"}}},
      {{"replica", "list", "v"}, "replica.list", {{"volume", "v"}}},
      {{"replica", "add", "v", "d"}, "replica.add", {{"volume", "v"}, {"store", "d"}}},
      {{"replica", "remove", "v", "1"}, "replica.remove", {{"volume", "v"}, {"index", 1}}},
      {{"replica", "rebuild", "v", "1"}, "replica.rebuild", {{"volume", "v"}, {"index", 1}}},
      {{"replica", "fail", "v", "1", "--reason", "disk swap"},
       "replica.fail",
       {{"volume", "v"}, {"index", 1}, {"reason", "disk swap"}}},
      {{"status"}, "daemon.status", Json::object()},
  };
  for (const auto& c : cases) {
    FakeDaemon d;
    // Each method gets a result of the documented shape.
    d.ok("store.add", {{"name", "s0"}, {"size_bytes", 1 << 30}});
    d.ok("store.list", {{"stores", Json::array()}});
    d.ok("store.show", {{"name", "s0"}});
    d.ok("store.remove", Json::object());
    d.ok("store.check", {{"ok", true}, {"problems", Json::array()}});
    d.ok("volume.list", {{"volumes", Json::array()}});
    d.ok("volume.show", volume_json("v"));
    d.ok("volume.delete", Json::object());
    d.ok("volume.expose", volume_json("v"));
    d.ok("volume.unexpose", Json::object());
    d.ok("volume.resize", volume_json("v"));
    d.ok("snapshot.create", Json::object());
    d.ok("snapshot.list", {{"snapshots", {{{"name", "s"}}}}});
    d.ok("snapshot.delete", Json::object());
    d.ok("snapshot.revert", Json::object());
    d.ok("snapshot.clone", volume_json("c"));
    d.ok("replica.list", {{"replicas", volume_json("v")["replicas"]}});
    d.ok("replica.add", {{"index", 3}});
    d.ok("replica.remove", Json::object());
    d.ok("replica.rebuild", Json::object());
    d.ok("replica.fail", Json::object());
    d.ok("daemon.status", {{"version", "0.1.0"}});
    d.ok("store.gc", {{"orphans", Json::array()}, {"removed", true}});
    d.ok("volume.import", volume_json("v"));
    auto r = run(d, c.args);
    EXPECT_EQ(r.status, kOk) << c.method << ": " << r.err;
    ASSERT_EQ(d.calls.size(), 1u) << c.method;
    EXPECT_EQ(d.calls[0].method, c.method);
    EXPECT_EQ(d.calls[0].params, c.params) << c.method;
    EXPECT_FALSE(r.out.empty()) << c.method;
    EXPECT_TRUE(r.err.empty()) << c.method << ": " << r.err;
  }
}

TEST(Cli, BackupS3OptionsReachTheDaemon) {
  FakeDaemon d;
  d.ok("backup.list", {{"backups", Json::array()}, {"partial", Json::array()}});
  d.ok("backup.create", {{"name", "v-s"}});
  auto r = run(
      d, {"backup", "list", "--target", "s3://bk/host1", "--s3-endpoint", "http://127.0.0.1:9000",
          "--s3-region", "eu-west-1", "--s3-credentials", "/etc/creds"});
  EXPECT_EQ(r.status, kOk) << r.err;
  ASSERT_EQ(d.calls.size(), 1u);
  EXPECT_EQ(d.calls[0].params, (Json{{"target", "s3://bk/host1"},
                                     {"s3_endpoint", "http://127.0.0.1:9000"},
                                     {"s3_region", "eu-west-1"},
                                     {"s3_credentials", "/etc/creds"}}));
  // A relative credentials file is made absolute: the daemon has its own
  // working directory.
  r = run(d, {"backup", "create", "v", "--snapshot", "s", "--to", "s3://bk", "--s3-credentials",
              "creds"});
  EXPECT_EQ(r.status, kOk) << r.err;
  ASSERT_EQ(d.calls.size(), 2u);
  EXPECT_EQ(d.calls[1].params["s3_credentials"],
            (std::filesystem::current_path() / "creds").string());
  EXPECT_FALSE(d.calls[1].params.contains("s3_endpoint"));
}

// backup restore / delete --rate --wait: the rate reaches the daemon, and
// --wait follows the job of that kind (and volume), not another job of the
// same backup.
TEST(Cli, BackupRestoreAndDeleteWaitForTheirJob) {
  FakeDaemon d;
  d.ok("backup.restore", {{"volume", "copy"}, {"state", "running"}});
  d.ok("backup.delete", {{"name", "b"}, {"state", "running"}});
  d.ok("backup.show",
       {{"name", "b"},
        {"jobs",
         {{{"kind", "backup"}, {"volume", "v"}, {"state", "running"}, {"percent", 5.0}},
          {{"kind", "restore"}, {"volume", "copy"}, {"state", "done"}, {"percent", 100.0}},
          {{"kind", "delete"}, {"volume", ""}, {"state", "failed"}, {"error", "disk on fire"}}}}});
  auto r = run(d, {"backup", "restore", "b", "--target", "/t", "--volume", "copy", "--store", "a",
                   "--rate", "5", "--wait"});
  EXPECT_EQ(r.status, kOk) << r.err;
  ASSERT_EQ(d.calls.size(), 2u);
  EXPECT_EQ(d.calls[0].params["rate"], 5);
  EXPECT_EQ(d.calls[1].method, "backup.show");
  r = run(d, {"backup", "delete", "b", "--target", "/t", "--rate", "20", "--wait"});
  EXPECT_NE(r.status, kOk);
  EXPECT_NE(r.out.find("disk on fire"), std::string::npos) << r.out;
  ASSERT_EQ(d.calls.size(), 4u);
  EXPECT_EQ(d.calls[2].params["rate"], 20);
}

// backup restore --to-volume V --as-snapshot S sends volume + snapshot (no
// stores); mixing it with --volume/--store, or half of it, is a usage error
// that reaches no daemon.
TEST(Cli, BackupRestoreAsSnapshot) {
  FakeDaemon d;
  d.ok("backup.restore", {{"volume", "v"}, {"snapshot", "s"}, {"state", "running"}});
  auto r = run(
      d, {"backup", "restore", "b", "--target", "/t", "--to-volume", "v", "--as-snapshot", "s"});
  EXPECT_EQ(r.status, kOk) << r.err;
  ASSERT_EQ(d.calls.size(), 1u);
  EXPECT_EQ(d.calls[0].params["volume"], "v");
  EXPECT_EQ(d.calls[0].params["snapshot"], "s");
  EXPECT_FALSE(d.calls[0].params.contains("stores"));
  EXPECT_NE(r.out.find("as snapshot 's' of volume 'v'"), std::string::npos) << r.out;
  for (const std::vector<std::string>& bad :
       {std::vector<std::string>{"--to-volume", "v"},
        std::vector<std::string>{"--to-volume", "v", "--as-snapshot", "s", "--store", "a"},
        std::vector<std::string>{"--volume", "copy"}}) {
    std::vector<std::string> args{"backup", "restore", "b", "--target", "/t"};
    args.insert(args.end(), bad.begin(), bad.end());
    r = run(d, args);
    EXPECT_EQ(r.status, kUsage) << bad[0];
    EXPECT_NE(r.err.find("--as-snapshot"), std::string::npos) << r.err;
  }
  EXPECT_EQ(d.calls.size(), 1u);
}

TEST(Cli, DaemonErrorsMapToExitStatuses) {
  struct Case {
    ErrorCode code;
    int status;
  };
  const Case cases[] = {
      {ErrorCode::kNotFound, kNotFound},
      {ErrorCode::kAlreadyExists, kConflict},
      {ErrorCode::kBusy, kConflict},
      {ErrorCode::kInvalidArgument, kUsage},
      {ErrorCode::kUnavailable, kUnavailable},
      {ErrorCode::kIoError, kFailed},
      {ErrorCode::kCorruption, kCorrupt},
      {ErrorCode::kTimeout, kFailed},
      {ErrorCode::kInternal, kFailed},
      {ErrorCode::kPermissionDenied, kUnreachable},
      {ErrorCode::kUnsupportedVersion, kUnreachable},
      {ErrorCode::kUnknownMethod, kFailed},
  };
  for (const auto& c : cases) {
    FakeDaemon d;
    d.error("volume.expose", c.code, "the daemon's message");
    auto r = run(d, {"volume", "expose", "v"});
    EXPECT_EQ(r.status, c.status) << daemon::to_string(c.code);
    EXPECT_EQ(r.err.substr(0, r.err.find('\n')),
              "ublk-volume: the daemon's message [" + std::string(daemon::to_string(c.code)) + "]");
    EXPECT_TRUE(r.out.empty());
  }
}

TEST(Cli, UblkUnavailableIsReportedWithTheDaemonsReason) {
  FakeDaemon d;
  d.error("volume.expose", ErrorCode::kUnavailable,
          "cannot expose volume 'v': ublk_drv is not loaded (modprobe ublk_drv)");
  auto r = run(d, {"volume", "expose", "v"});
  EXPECT_EQ(r.status, kUnavailable);
  EXPECT_EQ(r.err,
            "ublk-volume: cannot expose volume 'v': ublk_drv is not loaded (modprobe ublk_drv) "
            "[unavailable]\n");
}

TEST(Cli, JsonErrorsGoToStdoutToo) {
  FakeDaemon d;
  d.error("volume.show", ErrorCode::kNotFound, "volume 'x' does not exist");
  auto r = run(d, {"--json", "volume", "show", "x"});
  EXPECT_EQ(r.status, kNotFound);
  EXPECT_EQ(Json::parse(r.out),
            (Json{{"ok", false},
                  {"error", {{"code", "not_found"}, {"message", "volume 'x' does not exist"}}}}));
}

TEST(Cli, UnreachableDaemonExits3NamingTheSocket) {
  FakeDaemon d;
  d.reachable = false;
  auto r = run(d, {"--socket", "/tmp/nowhere.sock", "volume", "list"});
  EXPECT_EQ(r.status, kUnreachable);
  EXPECT_TRUE(
      r.err.starts_with("ublk-volume: cannot talk to ublk-volumed at /tmp/nowhere.sock: "
                        "cannot connect to /tmp/nowhere.sock"))
      << r.err;

  // The environment is only touched from this (the test's only) thread.
  ::setenv("UBLK_VOLUME_SOCKET", "/tmp/from-env.sock", 1);  // NOLINT(concurrency-mt-unsafe)
  r = run(d, {"status"});
  ::unsetenv("UBLK_VOLUME_SOCKET");  // NOLINT(concurrency-mt-unsafe)
  EXPECT_EQ(r.status, kUnreachable);
  EXPECT_NE(r.err.find("/tmp/from-env.sock"), std::string::npos) << r.err;

  // version works without a daemon and says it is not reachable.
  r = run(d, {"version"});
  EXPECT_EQ(r.status, kOk);
  EXPECT_NE(r.out.find("ublk-volumed: not reachable"), std::string::npos) << r.out;
}

TEST(Cli, ConnectionLostMidCallExits3) {
  FakeDaemon d;  // no answer scripted: the fake reports a reset connection
  auto r = run(d, {"volume", "list"});
  EXPECT_EQ(r.status, kUnreachable);
  EXPECT_NE(r.err.find("fake daemon has no answer for volume.list"), std::string::npos);
}

TEST(Cli, StoreCheckWithProblemsExits1) {
  FakeDaemon d;
  d.ok("store.check", {{"ok", false}, {"problems", {"extent 7 is mapped twice"}}});
  auto r = run(d, {"store", "check", "s0"});
  EXPECT_EQ(r.status, kFailed);
  EXPECT_EQ(r.out, "store 's0': check FAILED, 1 problem(s):\n  - extent 7 is mapped twice\n");
}

TEST(Cli, UnexpectedResultShapeIsAnErrorNotACrash) {
  FakeDaemon d;
  d.ok("volume.show", {{"name", "v"}, {"size_bytes", "big"}});
  auto r = run(d, {"volume", "show", "v"});
  EXPECT_EQ(r.status, kFailed);
  EXPECT_TRUE(r.err.starts_with("ublk-volume: unexpected answer from ublk-volumed: ")) << r.err;
}

// --- stats ---------------------------------------------------------------

Json stats_sample(uint64_t time_ns, uint64_t reads, uint64_t writes, bool exposed = true) {
  Json bounds = Json::array(), zeros = Json::array(), reads_h = Json::array();
  for (int i = 0; i < 32; ++i) {
    bounds.push_back(uint64_t{1} << (10 + i));
    zeros.push_back(0);
    reads_h.push_back(i == 4 ? reads : 0);  // [8, 16) us
  }
  Json v = {{"name", "vol0"},
            {"exposed", exposed},
            {"reads", reads},
            {"writes", writes},
            {"flushes", 0},
            {"discards", 0},
            {"write_zeroes", 0},
            {"bytes_read", reads * 4096},
            {"bytes_written", writes * 4096},
            {"errors", 0},
            {"read_latency_ns", {{"buckets", reads_h}, {"sum_ns", 0}}},
            {"write_latency_ns", {{"buckets", zeros}, {"sum_ns", 0}}}};
  return {{"time_ns", time_ns}, {"latency_bucket_upper_ns", bounds}, {"volumes", {v}}};
}

TEST(Cli, StatsSamplesTwiceAndDiffs) {
  FakeDaemon d;
  d.ok("stats", stats_sample(1'000'000'000, 100, 0));
  d.ok("stats", stats_sample(3'000'000'000, 20100, 4000));
  auto r = run(d, {"stats", "--interval", "2"});
  EXPECT_EQ(r.status, kOk) << r.err;
  EXPECT_EQ(d.calls.size(), 2u);
  EXPECT_EQ(d.sleeps, (std::vector<double>{2.0}));
  EXPECT_EQ(r.out,
            "VOLUME    r/s   w/s  rMB/s  wMB/s   r_p50   r_p99  w_p50  w_p99  flush/s  errors\n"
            "vol0    10000  2000   41.0    8.2  12.3us  16.3us      -      -        0       0\n");
}

TEST(Cli, StatsCountWatchAndJson) {
  FakeDaemon d;
  for (uint64_t i = 0; i < 4; ++i) {
    d.ok("stats", stats_sample(i * 1'000'000'000, i * 10, 0));
  }
  auto r = run(d, {"stats", "vol0", "--count", "3", "--json"});
  EXPECT_EQ(r.status, kOk) << r.err;
  EXPECT_EQ(d.calls.size(), 4u);
  EXPECT_EQ(d.calls[0].params, (Json{{"volume", "vol0"}}));
  std::istringstream lines(r.out);
  std::string line;
  int reports = 0;
  while (std::getline(lines, line)) {
    const Json j = Json::parse(line);
    EXPECT_DOUBLE_EQ(j["volumes"][0]["read_iops"].get<double>(), 10.0);
    ++reports;
  }
  EXPECT_EQ(reports, 3);
}

TEST(Cli, StatsWatchKeepsReportingUntilItCannot) {
  FakeDaemon d;
  for (uint64_t i = 0; i < 5; ++i) {
    d.ok("stats", stats_sample(i * 1'000'000'000, i * 10, 0));
  }
  // The daemon goes away after 5 samples: --watch reported 4 intervals, then
  // stops with the daemon's error.
  d.error("stats", ErrorCode::kNotFound, "volume 'vol0' does not exist");
  auto r = run(d, {"stats", "vol0", "--watch", "-i", "0.5"});
  EXPECT_EQ(r.status, kNotFound);
  EXPECT_EQ(d.sleeps, (std::vector<double>(5, 0.5)));
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 4 * 2 + 3) << r.out;  // 4 tables
}

TEST(Cli, UnknownCommandsAreNamed) {
  FakeDaemon d;
  auto r = run(d, {"frob"});
  EXPECT_EQ(r.status, kUsage);
  EXPECT_EQ(r.err,
            "ublk-volume: unknown command 'frob' for 'ublk-volume' (one of: store, volume, "
            "snapshot, backup, replica, stats, status, version, completion)\n");
  r = run(d, {"--socket", "/x", "volume", "grow", "v"});
  EXPECT_EQ(r.status, kUsage);
  EXPECT_EQ(
      r.err,
      "ublk-volume: unknown command 'grow' for 'ublk-volume volume' (one of: create, import, list, "
      "show, delete, expose, unexpose, resize, open, export, unexport)\n");
}

TEST(Cli, StatsLeavesOutVolumesThatAreNotExposed) {
  FakeDaemon d;
  d.ok("stats", stats_sample(0, 0, 0, false));
  auto r = run(d, {"stats"});
  EXPECT_EQ(r.status, kOk);
  EXPECT_EQ(r.out, "no exposed volumes\n");
}

TEST(Cli, StatsPrometheusNeedsOneSampleAndWritesAtomically) {
  FakeDaemon d;
  d.ok("stats", stats_sample(5, 7, 3));
  auto r = run(d, {"stats", "--prometheus"});
  EXPECT_EQ(r.status, kOk) << r.err;
  EXPECT_EQ(d.calls.size(), 1u);
  EXPECT_TRUE(d.sleeps.empty());
  EXPECT_NE(r.out.find("ublkvol_volume_reads_total{volume=\"vol0\"} 7\n"), std::string::npos);

  const auto dir =
      std::filesystem::temp_directory_path() / ("ublkvol-cli-test-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const auto file = dir / "ublk.prom";
  r = run(d, {"stats", "--prometheus", "-o", file.string()});
  EXPECT_EQ(r.status, kOk) << r.err;
  EXPECT_TRUE(r.out.empty());
  std::ifstream in(file);
  std::ostringstream contents;
  contents << in.rdbuf();
  const std::string text = contents.str();
  EXPECT_NE(text.find("ublkvol_volume_writes_total{volume=\"vol0\"} 3\n"), std::string::npos);
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir), {}), 1);  // no temp left
  r = run(d, {"stats", "--prometheus", "-o", (dir / "missing-dir" / "x.prom").string()});
  EXPECT_EQ(r.status, kFailed);
  EXPECT_NE(r.err.find("--output: cannot write"), std::string::npos) << r.err;
  std::filesystem::remove_all(dir);
}

TEST(Cli, StatsRefusesBadOptions) {
  FakeDaemon d;
  EXPECT_EQ(run(d, {"stats", "--interval", "0"}).status, kUsage);
  EXPECT_EQ(run(d, {"stats", "--interval", "-1"}).status, kUsage);
  EXPECT_EQ(run(d, {"stats", "-o", "/tmp/x.prom"}).status, kUsage);  // -o needs --prometheus
  EXPECT_TRUE(d.calls.empty());
}

// --- replica --wait ------------------------------------------------------

TEST(Cli, RebuildWaitShowsProgressUntilInSync) {
  FakeDaemon d;
  d.ok("replica.rebuild", Json::object());
  d.ok("volume.show", volume_json("v", "stale"));  // not started yet
  d.ok("volume.show", volume_json("v", "rebuilding", 12.5, true));
  d.ok("volume.show", volume_json("v", "rebuilding", 60, true));
  d.ok("volume.show", volume_json("v", "in_sync"));
  auto r = run(d, {"replica", "rebuild", "v", "1", "--wait"});
  EXPECT_EQ(r.status, kOk) << r.err;
  EXPECT_EQ(r.out,
            "rebuild v replica 1  [###---------------------------]   12.5%  50.0M/s  ETA 9s\n"
            "rebuild v replica 1  [##################------------]   60.0%  50.0M/s  ETA 9s\n"
            "rebuild v replica 1  [##############################]  100.0%  -  ETA 0s\n"
            "rebuild v replica 1: done, replica in sync (generation 0000000000000005)\n");
  EXPECT_EQ(d.sleeps, (std::vector<double>{0.5, 0.5, 0.5}));
}

TEST(Cli, AddWaitFollowsTheNewIndexAndFailsWhenTheReplicaFails) {
  FakeDaemon d;
  d.ok("replica.add", {{"index", 1}});
  d.ok("volume.show", volume_json("v", "rebuilding", 30, true));
  d.ok("volume.show", volume_json("v", "failed"));
  auto r = run(d, {"replica", "add", "v", "b", "--wait"});
  EXPECT_EQ(r.status, kFailed);
  EXPECT_EQ(r.err, "ublk-volume: rebuild v replica 1 failed: I/O error on b\n");
  EXPECT_TRUE(r.out.ends_with("rebuild v replica 1: failed\n")) << r.out;
}

TEST(Cli, WaitTimeoutGivesUp) {
  FakeDaemon d;
  d.ok("replica.rebuild", Json::object());
  d.ok("volume.show", volume_json("v", "rebuilding", 1, true));
  auto r = run(d, {"replica", "rebuild", "v", "1", "--wait", "--timeout", "2"});
  EXPECT_EQ(r.status, kFailed);
  EXPECT_EQ(d.sleeps.size(), 4u);  // 4 polls of 0.5 s
  EXPECT_NE(r.err.find("still not in sync after 2 s"), std::string::npos) << r.err;
}

TEST(Cli, WaitOnATtyRedrawsInPlace) {
  FakeDaemon d;
  d.ok("replica.rebuild", Json::object());
  d.ok("volume.show", volume_json("v", "rebuilding", 50, true));
  d.ok("volume.show", volume_json("v", "in_sync"));
  auto r = run(d, {"replica", "rebuild", "v", "1", "--wait"}, /*tty=*/true);
  EXPECT_EQ(r.status, kOk);
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\r'), 2) << r.out;
}

// --- completion ----------------------------------------------------------

TEST(Cli, CompletionScriptKnowsEveryCommand) {
  FakeDaemon d;
  auto script = run(d, {"completion", "bash"});
  ASSERT_EQ(script.status, kOk);
  EXPECT_NE(script.out.find("complete -F _ublk_volume ublk-volume"), std::string::npos);
  // Every subcommand listed by --help appears in the script's word lists.
  std::regex entry(R"(^  ([a-z]+) {2,})");
  for (const char* group : {"", "store", "volume", "snapshot", "replica"}) {
    std::vector<std::string> args;
    if (*group) {
      args.push_back(group);
    }
    args.push_back("--help");
    auto help = run(d, args);
    const std::string text = help.out.substr(help.out.find("Subcommands:"));
    std::istringstream lines(text);
    std::string line;
    int found = 0;
    while (std::getline(lines, line)) {
      std::smatch m;
      if (!std::regex_search(line, m, entry)) {
        continue;
      }
      ++found;
      EXPECT_TRUE(std::regex_search(script.out, std::regex("[\" ]" + m[1].str() + "[\" ]")))
          << "'" << m[1] << "' (" << group << ") is missing from the completion script";
    }
    EXPECT_GE(found, 3) << group;
  }
}

TEST(Cli, NamesForCompletion) {
  FakeDaemon d;
  d.ok("volume.list", {{"volumes", {volume_json("v1"), volume_json("v2")}}});
  d.ok("snapshot.list", {{"snapshots", {{{"name", "s1"}}}}});
  auto r = run(d, {"__names", "volumes"});
  EXPECT_EQ(r.out, "v1\nv2\n");
  r = run(d, {"__names", "snapshots", "v1"});
  EXPECT_EQ(r.out, "s1\n");
  EXPECT_EQ(run(d, {"__names", "bogus"}).status, kUsage);
}

}  // namespace
}  // namespace ublkvol::cli
