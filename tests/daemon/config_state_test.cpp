// Config parsing and the crash-safe state file.
#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <gtest/gtest.h>
#include <sstream>
#include <string>

#include "ublkvol/daemon/config.h"
#include "ublkvol/daemon/state_file.h"

namespace ublkvol::daemon {
namespace {

namespace fs = std::filesystem;

class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "ublkvol-daemon-XXXXXX").string();
    path_ = ::mkdtemp(pattern.data());
  }
  ~TempDir() { fs::remove_all(path_); }
  [[nodiscard]] const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST(Config, DefaultsWhenMissing) {
  const auto config = load_config("/nonexistent/ublk-volumed.json");
  ASSERT_TRUE(config.ok()) << config.error().message();
  EXPECT_EQ(config->state_dir, "/var/lib/ublk-volumed");
  EXPECT_EQ(config->control_socket, "/run/ublk-volumed/control.sock");
  EXPECT_EQ(config->socket_group, "ublk-volume");
  EXPECT_EQ(config->io_deadline_ms, 8000u);
  EXPECT_EQ(config->min_replicas, 1u);
  EXPECT_TRUE(config->recoverable_devices);
  EXPECT_FALSE(config->write_through);  // write-back: DBS journals mappings
  EXPECT_TRUE(config->zero_copy);
  EXPECT_EQ(config->store_data_order, "flush");
  EXPECT_EQ(config->store_submit_batch, 4u);
}

TEST(Config, ParsesEveryKey) {
  const auto config = parse_config(
      R"({"state_dir":"/s","control_socket":"/r/c.sock","socket_group":"g","queues":2,
          "queue_depth":64,"io_deadline_ms":500,"rebuild_mb_per_s":100,"rebuild_busy_percent":35,
          "min_replicas":2,
          "recoverable_devices":false,"write_through":true,"zero_copy":false,"log_level":"debug",
          "store_data_order":"fua","store_submit_batch":0,
          "ublk_features_off":["QUIESCE","UPDATE_SIZE"]})",
      "c.json");
  ASSERT_TRUE(config.ok()) << config.error().message();
  EXPECT_EQ(config->state_dir, "/s");
  EXPECT_EQ(config->queues, 2u);
  EXPECT_EQ(config->queue_depth, 64u);
  EXPECT_EQ(config->io_deadline_ms, 500u);
  EXPECT_EQ(config->rebuild_mb_per_s, 100u);
  EXPECT_EQ(config->rebuild_busy_percent, 35u);
  EXPECT_EQ(config->min_replicas, 2u);
  EXPECT_FALSE(config->recoverable_devices);
  EXPECT_TRUE(config->write_through);
  EXPECT_FALSE(config->zero_copy);
  EXPECT_EQ(config->log_level, "debug");
  EXPECT_EQ(config->store_data_order, "fua");
  EXPECT_EQ(config->store_submit_batch, 0u);
  EXPECT_EQ(config->ublk_features_off, (std::vector<std::string>{"QUIESCE", "UPDATE_SIZE"}));
}

TEST(Config, ReactorsKey) {
  const auto none = parse_config(R"({})", "c.json");
  ASSERT_TRUE(none.ok()) << none.error().message();
  EXPECT_EQ(none->reactors, 0u);  // the default: one reactor per CPU
  EXPECT_EQ(none->queues, 0u);    // one queue per reactor, resolved at start
  const DaemonConfig defaults;
  EXPECT_EQ(defaults.reactors, 0u);
  EXPECT_EQ(defaults.queues, 0u);
  const auto off = parse_config(R"({"reactors":null})", "c.json");
  ASSERT_TRUE(off.ok()) << off.error().message();
  EXPECT_FALSE(off->reactors.has_value());  // a thread per store and per queue
  EXPECT_EQ(off->queues, 1u);
  const auto off_queues = parse_config(R"({"reactors":null,"queues":4})", "c.json");
  ASSERT_TRUE(off_queues.ok()) << off_queues.error().message();
  EXPECT_EQ(off_queues->queues, 4u);
  const auto two = parse_config(R"({"reactors":2})", "c.json");
  ASSERT_TRUE(two.ok()) << two.error().message();
  EXPECT_EQ(two->reactors, 2u);
  EXPECT_EQ(two->queues, 0u);  // one per reactor, resolved at start
  const auto per_cpu = parse_config(R"({"reactors":0,"queues":3})", "c.json");
  ASSERT_TRUE(per_cpu.ok()) << per_cpu.error().message();
  EXPECT_EQ(per_cpu->reactors, 0u);
  EXPECT_EQ(per_cpu->queues, 3u);
}

TEST(Config, ReactorPollingIsAutomaticUnlessGiven) {
  const auto none = parse_config(R"({})", "c.json");
  ASSERT_TRUE(none.ok()) << none.error().message();
  EXPECT_FALSE(none->reactor_poll_us.has_value());
  EXPECT_EQ(none->reactor_poll_max_percent, 50U);
  // Automatic: off below 4 CPUs, 50 us from 4.
  EXPECT_EQ(reactor_poll_in_flight(*none, 2).count(), 0);
  EXPECT_EQ(reactor_poll_in_flight(*none, 4).count(), 50);
  const auto given = parse_config(R"({"reactor_poll_us":20,"reactor_poll_max_percent":30})", "c");
  ASSERT_TRUE(given.ok()) << given.error().message();
  EXPECT_EQ(reactor_poll_in_flight(*given, 2).count(), 20);
  EXPECT_EQ(given->reactor_poll_max_percent, 30U);
  const auto off = parse_config(R"({"reactor_poll_us":0})", "c.json");
  ASSERT_TRUE(off.ok()) << off.error().message();
  EXPECT_EQ(reactor_poll_in_flight(*off, 64).count(), 0);
}

TEST(Config, RefusalsNameTheKey) {
  const struct {
    const char* text;
    const char* part;
  } cases[] = {
      {R"({"state_dri":"/x"})", "unknown key 'state_dri'"},
      {R"({"queues":"2"})", "key 'queues' must be an unsigned integer"},
      {R"({"queues":-1})", "key 'queues' must be an unsigned integer, not -1"},
      {R"({"queues":0})", "queues 0 is out of range"},
      {R"({"queues":60})", "queues 60 is out of range 1..59"},
      {R"({"queue_depth":99999})", "queue_depth 99999"},
      {R"({"recoverable_devices":1})", "key 'recoverable_devices' must be true or false"},
      {R"({"state_dir":"relative"})", "must be an absolute path"},
      {R"({"log_level":"loud"})", "log_level 'loud'"},
      {R"({"min_replicas":9})", "min_replicas 9"},
      {R"({"store_data_order":"FUA"})", "store_data_order 'FUA' is not one of flush, fua"},
      {R"({"store_data_order":1})", "key 'store_data_order' must be a string"},
      {R"({"store_submit_batch":257})", "store_submit_batch 257 is out of range 0..256"},
      {R"({"queues":99999999999})", "too large"},
      {R"({"reactors":"2"})", "key 'reactors' must be an unsigned integer"},
      {R"({"reactors":2000})", "reactors 2000 is out of range 0..1024"},
      {R"({"reactor_poll_us":20000})", "reactor_poll_us 20000 is out of range 0..10000"},
      {R"({"reactor_poll_max_percent":0})", "reactor_poll_max_percent 0 is out of range 1..100"},
      {R"({"reactor_poll_max_percent":101})", "reactor_poll_max_percent 101 is out of range"},
      {R"({"reactors":2,"queues":0})", "queues 0 is out of range"},
      {R"({"rebuild_busy_percent":0})", "rebuild_busy_percent 0 is out of range 1..100"},
      {R"({"rebuild_busy_percent":101})", "rebuild_busy_percent 101 is out of range 1..100"},
      {R"({"ublk_features_off":["ZERO_COPY"]})",
       "ublk_features_off: unknown optional ublk feature 'ZERO_COPY' (known: UPDATE_SIZE, "
       "QUIESCE)"},
      {R"({"ublk_features_off":"QUIESCE"})", "key 'ublk_features_off' must be"},
      {R"([1])", "must be a JSON object"},
      {R"({"a":)", "not valid JSON"},
  };
  for (const auto& c : cases) {
    const auto config = parse_config(c.text, "cfg.json");
    ASSERT_FALSE(config.ok()) << c.text;
    EXPECT_NE(config.error().message().find(c.part), std::string::npos)
        << c.text << " -> " << config.error().message();
    EXPECT_EQ(config.error().message().rfind("cfg.json", 0), 0u) << config.error().message();
  }
}

DaemonState sample_state(int generation) {
  DaemonState state;
  state.stores.push_back({"a", "/dev/shm/a", "uuid-a"});
  state.stores.push_back({"b", "/dev/shm/b", "uuid-b"});
  VolumeRecord v;
  v.name = "vol" + std::to_string(generation);
  v.size_bytes = 1ULL << 30U;
  v.stores = {"a", "b"};
  v.min_replicas = 1;
  if (generation % 2 == 1) {
    v.exposed = ExposeRecord{3, 2, 64};
  }
  state.volumes.push_back(v);
  return state;
}

TEST(StateFile, RoundTripAndMissingIsEmpty) {
  TempDir dir;
  const auto empty = load_state(dir.path());
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->stores.empty() && empty->volumes.empty());
  ASSERT_TRUE(save_state(dir.path(), sample_state(1)).ok());
  const auto loaded = load_state(dir.path());
  ASSERT_TRUE(loaded.ok()) << loaded.error().message();
  EXPECT_EQ(*loaded, sample_state(1));
}

// A crash at every step of a save leaves either the old or the new state
// readable under the real name, and the next save still works.
TEST(StateFile, CrashAtEveryStepLeavesOldOrNew) {
  const SaveStep steps[] = {SaveStep::kTmpHalfWritten, SaveStep::kTmpWritten, SaveStep::kTmpSynced,
                            SaveStep::kRenamed};
  for (const SaveStep crash_at : steps) {
    TempDir dir;
    const DaemonState old_state = sample_state(1);
    const DaemonState new_state = sample_state(2);
    ASSERT_TRUE(save_state(dir.path(), old_state).ok());
    const Status crashed =
        save_state(dir.path(), new_state, [&](SaveStep step) { return step != crash_at; });
    ASSERT_FALSE(crashed.ok());
    EXPECT_EQ(crashed.error().errno_value(), ECANCELED);
    const auto loaded = load_state(dir.path());
    ASSERT_TRUE(loaded.ok()) << loaded.error().message();
    if (crash_at == SaveStep::kRenamed) {
      EXPECT_EQ(*loaded, new_state);
    } else {
      EXPECT_EQ(*loaded, old_state);
      // The torn temporary file is really there and really torn.
      const std::string tmp = read_text(dir.path() + "/state.json.tmp");
      EXPECT_FALSE(tmp.empty());
      if (crash_at == SaveStep::kTmpHalfWritten) {
        EXPECT_FALSE(state_from_json(tmp, "tmp").ok());
      }
    }
    // Recovery: the next save replaces any leftover and is readable.
    ASSERT_TRUE(save_state(dir.path(), new_state).ok());
    EXPECT_EQ(*load_state(dir.path()), new_state);
  }
}

TEST(StateFile, DamagedFileIsRefusedNotForgotten) {
  TempDir dir;
  ASSERT_TRUE(save_state(dir.path(), sample_state(1)).ok());
  const std::string path = dir.path() + "/state.json";
  const std::string good = read_text(path);
  for (
      const std::string& damaged :
      {good.substr(0, good.size() / 2), std::string("{}"),
       std::string(R"({"format":"ublk-volumed-state","version":9})"),
       std::string(
           R"({"format":"ublk-volumed-state","version":1,"stores":[{"name":"a/b","path":"p","uuid":"u"}],"volumes":[]})"),
       std::string(
           R"({"format":"ublk-volumed-state","version":1,"stores":[],"volumes":[{"name":"v"}]})")}) {
    std::ofstream(path, std::ios::trunc) << damaged;
    const auto loaded = load_state(dir.path());
    ASSERT_FALSE(loaded.ok()) << damaged;
    EXPECT_NE(loaded.error().message().find(path), std::string::npos) << loaded.error().message();
  }
}

}  // namespace
}  // namespace ublkvol::daemon
