// volume.export / volume.unexport against a real ublk-volumed process over
// its real control socket: fio's nbd engine with verify, nbdcopy in and out
// compared, BLOCK_STATUS holes from the DBS mappings (nbdinfo --map), the
// export back after a daemon restart, unexport refusing new clients.
#include <fstream>
#include <gtest/gtest.h>
#include <string>
#include <vector>

#include "daemon_fixture.h"
#include "nbd_test_util.h"

namespace ublkvol::nbd {
namespace {

using daemon::Json;
using daemon::test_support::DaemonTest;
using daemon::test_support::kMiB;
using testing::pattern_bytes;
using testing::run_command;

class ExportDaemonTest : public DaemonTest {
 protected:
  void create_volume() {
    add_stores({"a", "b"});
    ok("volume.create", {{"name", "v0"}, {"size", 64 * kMiB}, {"stores", {"a", "b"}}});
  }
  [[nodiscard]] std::string sock() const { return dir_ + "/v0.nbd"; }
  [[nodiscard]] std::string uri() const { return "nbd+unix:///v0?socket=" + sock(); }
};

TEST_F(ExportDaemonTest, FioVerifyNbdcopyAndRestartThroughTheDaemon) {
  start();
  create_volume();
  // TCP without TLS is refused unless asked for; a bad TLS file names itself.
  refused("volume.export", {{"name", "v0"}, {"listen", "127.0.0.1:0"}}, "invalid_argument",
          "TLS is required on TCP");
  refused("volume.export",
          {{"name", "v0"}, {"listen", "127.0.0.1:0"}, {"tls_psk", dir_ + "/missing.psk"}},
          "not_found", "missing.psk");
  const Json v = ok("volume.export", {{"name", "v0"}, {"listen", "unix:" + sock()}});
  ASSERT_TRUE(v["export"].is_object()) << v.dump();
  EXPECT_EQ(v["export"]["address"], "unix:" + sock());
  refused("volume.export", {{"name", "v0"}, {"listen", "unix:" + sock()}}, "already_exists",
          "already exported");

  // 32 MiB of a known pattern in through nbdcopy.
  const std::string in = dir_ + "/in.bin";
  const auto data = pattern_bytes(32 * kMiB, 21);
  std::ofstream(in, std::ios::binary)
      .write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
  ASSERT_EQ(run_command("nbdcopy '" + in + "' '" + uri() + "'").status, 0) << log_text();

  // fio's nbd engine: random 4K writes with verify at 32..48 MiB, QD 16.
  const auto fio = run_command(
      "cd '" + dir_ + "' && fio --name=nbd --ioengine=nbd --uri='" + uri() +
      "' --rw=randwrite --bs=4k --offset=32m --size=16m --iodepth=16 --verify=crc32c "
      "--do_verify=1 --verify_fatal=1 --verify_state_save=0 --output-format=terse --minimal 2>&1");
  ASSERT_EQ(fio.status, 0) << fio.output << log_text();

  // Status lists it with its connections (none now).
  const Json status = ok("daemon.status");
  EXPECT_EQ(status["exported"], 1);
  const Json shown = ok("volume.show", {{"name", "v0"}});
  EXPECT_EQ(shown["export"]["connections"], 0);
  EXPECT_GT(shown["export"]["requests"].get<uint64_t>(), 4096U);

  // base:allocation from the DBS mappings: 48..64 MiB was never written.
  const auto map = run_command("nbdinfo --map --json '" + uri() + "'");
  ASSERT_EQ(map.status, 0) << map.output;
  const Json extents = Json::parse(map.output);
  ASSERT_TRUE(extents.is_array()) << map.output;
  const Json& last = extents.back();
  EXPECT_EQ(last["offset"].get<uint64_t>() + last["length"].get<uint64_t>(), 64 * kMiB);
  EXPECT_LE(last["offset"].get<uint64_t>(), 48 * kMiB) << map.output;
  EXPECT_EQ(last["type"], 3) << map.output;  // hole + zero
  EXPECT_EQ(extents.front()["type"], 0) << map.output;

  // Restart: the export comes back, the data with it.
  EXPECT_EQ(stop(), 0);
  start();
  const Json again = ok("volume.show", {{"name", "v0"}});
  EXPECT_EQ(again["export"]["running"], true) << again.dump();
  const std::string out = dir_ + "/out.bin";
  ASSERT_EQ(run_command("nbdcopy '" + uri() + "' '" + out + "'").status, 0) << log_text();
  EXPECT_EQ(
      run_command("cmp -n " + std::to_string(32 * kMiB) + " '" + in + "' '" + out + "'").status, 0);

  // Unexport: new clients are refused; it stays unexported after a restart.
  ok("volume.unexport", {{"name", "v0"}});
  EXPECT_NE(run_command("nbdinfo '" + uri() + "' 2>/dev/null").status, 0);
  refused("volume.unexport", {{"name", "v0"}}, "invalid_argument", "not exported");
  EXPECT_EQ(stop(), 0);
  start();
  EXPECT_TRUE(ok("volume.show", {{"name", "v0"}})["export"].is_null());
}

}  // namespace
}  // namespace ublkvol::nbd
