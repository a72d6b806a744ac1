// ublkvol-serve's replicated backend on the host (no ublk needed): replica
// files created, written through the engine, closed, reopened as a
// "recovering" server; the refusals a restart must make (missing file,
// wrong size, not a store) leave the files as they were.
#include "replicated_backend.h"

#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <gtest/gtest.h>
#include <string>

namespace ublkvol::ublk {
namespace {

namespace fs = std::filesystem;

struct AlignedFree {
  void operator()(std::byte* p) const { std::free(p); }
};
using Buffer = std::unique_ptr<std::byte, AlignedFree>;
Buffer make_buffer(size_t size) {
  return Buffer(static_cast<std::byte*>(std::aligned_alloc(4096, size)));
}

// One I/O, waited for on the queue's wake fd (the way the ublk queue thread
// does, minus io_uring).
int run_io(engine::VolumeQueue& q, engine::VolumeOp op, uint64_t offset, uint32_t length,
           std::byte* buffer) {
  struct Done {
    bool done = false;
    int result = 0;
  } done;
  engine::VolumeIo io;
  io.op = op;
  io.offset = offset;
  io.length = length;
  io.buffer = buffer;
  io.user_data = &done;
  io.on_complete = [](engine::VolumeIo& i, int result) {
    auto* d = static_cast<Done*>(i.user_data);
    d->done = true;
    d->result = result;
  };
  q.submit(io);
  q.kick();
  for (int spins = 0; !done.done && spins < 10000; ++spins) {
    if (q.reap() > 0 || done.done) {
      continue;
    }
    pollfd p{q.wake_fd(), POLLIN, 0};
    ::poll(&p, 1, 1000);
    uint64_t v = 0;
    [[maybe_unused]] const ssize_t n = ::read(q.wake_fd(), &v, sizeof(v));
  }
  EXPECT_TRUE(done.done);
  // The engine may still count the write until every replica applied it.
  while (q.in_flight() > 0) {
    q.reap();
  }
  return done.result;
}

class ReplicatedBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(fs::exists("/dev/shm") ? "/dev/shm" : ::testing::TempDir()) /
           ("ublkvol-rb-" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  ServeConfig config(unsigned replicas, uint64_t size) {
    ServeConfig c;
    c.backend = "replicated";
    c.size_bytes = size;
    c.device.queues = 1;
    c.device.queue_depth = 16;
    for (unsigned i = 0; i < replicas; ++i) {
      c.replica_files.push_back((dir_ / ("r" + std::to_string(i))).string());
    }
    return c;
  }
  static uintmax_t file_size(const std::string& path) { return fs::file_size(path); }

  fs::path dir_;
};

TEST_F(ReplicatedBackendTest, CreatesWritesReopensAndCountsFlushes) {
  constexpr uint64_t kSize = 16ULL << 20U;
  ServeConfig c = config(3, kSize);
  auto buf = make_buffer(64 << 10);
  {
    auto backend = ReplicatedBackend::open(c, /*recovering=*/false);
    ASSERT_TRUE(backend.ok()) << backend.error().to_string();
    EXPECT_EQ((*backend)->info().size_bytes, kSize);
    EXPECT_EQ((*backend)->status().in_sync, 3U);
    auto q = (*backend)->open_queue(0);
    ASSERT_TRUE(q.ok());
    std::memset(buf.get(), 0x5a, 64 << 10);
    EXPECT_EQ(run_io(**q, engine::VolumeOp::kWrite, 1 << 20, 64 << 10, buf.get()), 0);
    for (int i = 0; i < 3; ++i) {
      EXPECT_EQ(run_io(**q, engine::VolumeOp::kFlush, 0, 0, nullptr), 0);
    }
    q->reset();
    auto reports = (*backend)->replica_reports();
    ASSERT_EQ(reports.size(), 3U);
    for (const ReplicaReport& r : reports) {
      EXPECT_EQ(r.state, engine::ReplicaState::kInSync) << r.file;
      EXPECT_GE(r.writes, 1U) << r.file;
      EXPECT_GE(r.flushes, 3U) << r.file;
      // Each FLUSH at least flushes the file once; each commit adds one more.
      EXPECT_GE(r.device_flushes, 3U) << r.file;
      EXPECT_GE(r.store_commits, 1U) << r.file;
    }
    Status closed = (*backend)->close();
    EXPECT_TRUE(closed.ok()) << closed.error().to_string();
  }
  // A restarted ("recovering") server opens them again; size comes from them.
  ServeConfig again = c;
  again.size_bytes = 0;
  auto backend = ReplicatedBackend::open(again, /*recovering=*/true);
  ASSERT_TRUE(backend.ok()) << backend.error().to_string();
  EXPECT_EQ((*backend)->info().size_bytes, kSize);
  EXPECT_EQ((*backend)->status().in_sync, 3U);
  auto q = (*backend)->open_queue(0);
  ASSERT_TRUE(q.ok());
  std::memset(buf.get(), 0, 64 << 10);
  EXPECT_EQ(run_io(**q, engine::VolumeOp::kRead, 1 << 20, 64 << 10, buf.get()), 0);
  for (size_t i = 0; i < (64 << 10); ++i) {
    ASSERT_EQ(buf.get()[i], std::byte{0x5a}) << "byte " << i;
  }
  q->reset();
  EXPECT_TRUE((*backend)->close().ok());
}

TEST_F(ReplicatedBackendTest, RefusesWhatARestartMustNotPaperOver) {
  ServeConfig c = config(2, 16ULL << 20U);
  {
    auto backend = ReplicatedBackend::open(c, false);
    ASSERT_TRUE(backend.ok()) << backend.error().to_string();
  }
  const uintmax_t size0 = file_size(c.replica_files[0]);

  // Recovering never creates a replica.
  ServeConfig missing = c;
  missing.replica_files.push_back((dir_ / "r9").string());
  auto r = ReplicatedBackend::open(missing, true);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("does not exist: a recovering server never creates"),
            std::string::npos)
      << r.error().message();
  EXPECT_FALSE(fs::exists(dir_ / "r9"));

  // Wrong size.
  ServeConfig bigger = c;
  bigger.size_bytes = 32ULL << 20U;
  r = ReplicatedBackend::open(bigger, false);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("holds volume 'ublkvol' of 16777216 bytes, but --size is "
                                     "33554432 bytes"),
            std::string::npos)
      << r.error().message();

  // A file that is not a store is refused and left alone.
  const std::string junk = (dir_ / "junk").string();
  {
    std::ofstream out(junk);
    out << std::string(8192, 'x');
  }
  ServeConfig foreign = c;
  foreign.replica_files[1] = junk;
  r = ReplicatedBackend::open(foreign, false);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("is not a usable DBS store"), std::string::npos)
      << r.error().message();
  EXPECT_EQ(file_size(junk), 8192U);

  // Replicas of different sizes (a replica of another volume size).
  ServeConfig other = config(1, 8ULL << 20U);
  other.replica_files[0] = (dir_ / "small").string();
  ASSERT_TRUE(ReplicatedBackend::open(other, false).ok());
  ServeConfig mixed = c;
  mixed.size_bytes = 0;
  mixed.replica_files.push_back(other.replica_files[0]);
  r = ReplicatedBackend::open(mixed, false);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find(c.replica_files[0] + " holds 16777216 bytes"),
            std::string::npos)
      << r.error().message();

  // Nothing above touched the original replicas.
  EXPECT_EQ(file_size(c.replica_files[0]), size0);
  auto reopened = ReplicatedBackend::open(c, true);
  ASSERT_TRUE(reopened.ok()) << reopened.error().to_string();
  EXPECT_EQ((*reopened)->status().in_sync, 2U);
}

}  // namespace
}  // namespace ublkvol::ublk
