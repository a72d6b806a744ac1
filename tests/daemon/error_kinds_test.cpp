// Error kinds (issue 13 item 6) through a REAL ublk-volumed process on a
// real Unix socket: each kind a daemon operation can produce arrives as the
// protocol code of the same name - including a request that meets the
// daemon's shutdown (unavailable, not a closed connection or `internal`) and
// a corrupted replica (corruption, not io_error) - and the
// client turns a code back into an Error of that kind.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "ublkvol/common/error_kind.h"
#include "ublkvol/dbs/file_device.h"
#include "ublkvol/dbs/store.h"

#include "daemon_fixture.h"

namespace ublkvol::daemon {
namespace {

using test_support::DaemonTest;
using test_support::kMiB;

class ErrorKindsTest : public DaemonTest {
 protected:
  // Writes garbage over block 0 of DBS volume `volume` in the store file
  // (the daemon is stopped): the engine's metadata block of a replica.
  static void overwrite_meta_block(const std::string& path, const std::string& volume) {
    auto device = dbs::FileDevice::open(path, {});
    ASSERT_TRUE(device.ok()) << device.error().message();
    auto store = dbs::Store::open(**device);
    ASSERT_TRUE(store.ok()) << store.error().message();
    auto id = (*store)->find_volume(volume);
    ASSERT_TRUE(id.ok()) << id.error().message();
    constexpr size_t kBlock = 4096;
    std::unique_ptr<std::byte, decltype(&std::free)> block(
        static_cast<std::byte*>(std::aligned_alloc(kBlock, kBlock)), &std::free);
    std::memset(block.get(), 0x5a, kBlock);
    ASSERT_TRUE((*store)->write(*id, 0, {block.get(), kBlock}).ok());
    ASSERT_TRUE((*store)->commit().ok());
  }

  // The first 64 KiB of a file (superblocks, checkpoint areas).
  static std::string read_head(const std::string& path) {
    std::string bytes(64 * 1024, '\0');
    const int fd = ::open(path.c_str(), O_RDONLY);
    EXPECT_GE(fd, 0) << std::strerror(errno);
    const ssize_t n = ::pread(fd, bytes.data(), bytes.size(), 0);
    ::close(fd);
    EXPECT_EQ(n, static_cast<ssize_t>(bytes.size()));
    return bytes;
  }

  // Stops the daemon process (SIGSTOP) and waits until it is stopped.
  void pause_daemon() {
    ASSERT_EQ(::kill(pid_, SIGSTOP), 0);
    int status = 0;
    ASSERT_EQ(::waitpid(pid_, &status, WUNTRACED), pid_);
    ASSERT_TRUE(WIFSTOPPED(status)) << status;
  }
};

// The ordinary refusals, one per kind, each with the code of its kind and a
// message naming the object.
TEST_F(ErrorKindsTest, RefusalsCarryTheCodeOfTheirKind) {
  start();
  add_stores({"a", "b"});
  ok("volume.create", {{"name", "v"}, {"size", 16 * kMiB}, {"stores", {"a", "b"}}});
  refused("volume.create", {{"name", "w"}, {"size", 1000}, {"stores", {"a"}}}, "invalid_argument",
          "not a multiple of 4096");
  refused("volume.show", {{"name", "nope"}}, "not_found", "volume 'nope' does not exist");
  refused("volume.create", {{"name", "v"}, {"size", 4096}, {"stores", {"a"}}}, "already_exists",
          "volume 'v' already exists");
  refused("store.remove", {{"name", "a"}}, "busy", "holds replicas of volume(s) 'v'");
  // The dispatcher's refusal keeps its envelope code.
  refused("volume.explode", Json::object(), "unknown_method", "volume.explode");

  // A client's Error for a refusal has the refusal's kind.
  auto missing = client_->call_result("volume.show", {{"name", "nope"}});
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().kind(), ErrorKind::kNotFound);
  EXPECT_EQ(missing.error().errno_value(), ENOENT);
  EXPECT_EQ(stop(), 0);
}

// A store whose file is deleted under the daemon fails; an operation on it
// is an I/O error naming the store.
TEST_F(ErrorKindsTest, FailedStoreIsAnIoError) {
  start();
  add_stores({"a"});
  ASSERT_EQ(::unlink((dir_ + "/store-a").c_str()), 0);
  const Json a =
      wait_for("store.show", {{"name", "a"}}, [](const Json& s) { return s["state"] == "failed"; });
  ASSERT_EQ(a["state"], "failed") << a.dump();
  refused("store.gc", {{"name", "a"}}, "io_error", "store 'a' is failed");
  auto gc = client_->call_result("store.gc", {{"name", "a"}});
  ASSERT_FALSE(gc.ok());
  EXPECT_EQ(gc.error().kind(), ErrorKind::kIoError);
  EXPECT_EQ(stop(), 0);
}

// A replica whose engine metadata block is damaged (written over while the
// daemon was stopped) is refused as corruption when the volume is imported:
// before, EUCLEAN reached clients as io_error. Nothing is changed.
TEST_F(ErrorKindsTest, CorruptedReplicaIsCorruption) {
  start();
  add_stores({"a"});
  ok("volume.create", {{"name", "lost"}, {"size", 8 * kMiB}, {"stores", {"a"}}});
  ok("volume.create", {{"name", "keep"}, {"size", 8 * kMiB}, {"stores", {"a"}}});
  EXPECT_EQ(stop(), 0);
  forget_volume("lost");
  overwrite_meta_block(dir_ + "/store-a", "lost.engine-meta");
  start();
  refused("volume.import", {{"name", "lost"}, {"stores", {"a"}}}, "corruption",
          "replica metadata block is corrupt");
  auto imported = client_->call_result("volume.import", {{"name", "lost"}, {"stores", {"a"}}});
  ASSERT_FALSE(imported.ok());
  EXPECT_EQ(imported.error().kind(), ErrorKind::kCorruption);
  EXPECT_EQ(imported.error().errno_value(), EUCLEAN);
  EXPECT_NE(imported.error().message().find("importing volume 'lost'"), std::string::npos)
      << imported.error().message();
  // The orphan is still there; the other volume is fine.
  EXPECT_EQ(ok("daemon.status")["orphans"].size(), 1u);
  EXPECT_EQ(ok("volume.show", {{"name", "keep"}})["in_sync"], 1);
  EXPECT_EQ(stop(), 0);
}

// A store file whose both superblock copies are damaged is refused by
// store.add as corruption (not invalid_argument, which store.add keeps for a
// file that is no store at all), and the file is left as it was.
TEST_F(ErrorKindsTest, StoreAddOfACorruptedStoreIsCorruption) {
  start();
  add_stores({"a"});
  ok("store.remove", {{"name", "a"}});
  const std::string path = dir_ + "/store-a";
  {
    const int fd = ::open(path.c_str(), O_RDWR);
    ASSERT_GE(fd, 0) << std::strerror(errno);
    for (const off_t block : {0, 1}) {
      char byte = 0;
      ASSERT_EQ(::pread(fd, &byte, 1, block * 4096 + 4000), 1);
      byte = static_cast<char>(byte ^ 0x10);
      ASSERT_EQ(::pwrite(fd, &byte, 1, block * 4096 + 4000), 1);
    }
    ::close(fd);
  }
  const std::string before = read_head(path);
  refused("store.add", {{"name", "a"}, {"path", path}}, "corruption", "checksum mismatch");
  auto added = client_->call_result("store.add", {{"name", "a"}, {"path", path}});
  ASSERT_FALSE(added.ok());
  EXPECT_EQ(added.error().kind(), ErrorKind::kCorruption);
  EXPECT_EQ(read_head(path), before);
  EXPECT_EQ(ok("store.list")["stores"].size(), 0u);
  EXPECT_EQ(stop(), 0);
}

// A request that meets the shutdown: the daemon is paused, told to stop,
// and sent a request; when it resumes it sees the signal first (it was
// queued first) and answers the request it did not run with `unavailable`
// (ESHUTDOWN) instead of closing the connection on it.
TEST_F(ErrorKindsTest, RequestMeetingTheShutdownIsUnavailable) {
  start();
  auto late = Client::connect(socket_);
  ASSERT_TRUE(late.ok()) << late.error().message();
  // An answered request proves the daemon accepted the connection.
  ASSERT_TRUE(late->call("daemon.status").ok());
  pause_daemon();
  ASSERT_EQ(::kill(pid_, SIGTERM), 0);
  ASSERT_TRUE(late->send_raw(to_line(make_request(77, "volume.list", Json::object()))).ok());
  ASSERT_EQ(::kill(pid_, SIGCONT), 0);
  auto line = late->read_line();
  ASSERT_TRUE(line.ok()) << line.error().message() << "\n" << log_text();
  auto response = parse_response(*line);
  ASSERT_TRUE(response.ok()) << *line;
  EXPECT_FALSE(response->ok) << *line;
  EXPECT_EQ(response->id, 77);
  EXPECT_EQ(response->code, ErrorCode::kUnavailable) << *line;
  EXPECT_NE(response->message.find("shutting down"), std::string::npos) << *line;
  EXPECT_EQ(error_for(response->code, response->message).kind(), ErrorKind::kUnavailable);
  EXPECT_EQ(wait_exit(60), 0) << log_text();
}

// A daemon that does not answer (paused) is a timeout for the client: the
// Error a call returns has kind timeout.
TEST_F(ErrorKindsTest, SilentDaemonIsATimeoutForTheClient) {
  start();
  auto slow = Client::connect(socket_);
  ASSERT_TRUE(slow.ok()) << slow.error().message();
  ASSERT_TRUE(slow->call("daemon.status").ok());
  slow->set_timeout(std::chrono::milliseconds(300));
  pause_daemon();
  auto response = slow->call("daemon.status");
  ASSERT_EQ(::kill(pid_, SIGCONT), 0);
  ASSERT_FALSE(response.ok());
  EXPECT_EQ(response.error().kind(), ErrorKind::kTimeout) << response.error().message();
  EXPECT_NE(response.error().message().find("did not answer"), std::string::npos)
      << response.error().message();
  EXPECT_EQ(stop(), 0);
}

}  // namespace
}  // namespace ublkvol::daemon
