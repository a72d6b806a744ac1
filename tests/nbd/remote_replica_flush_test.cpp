// FLUSH and FUA reach a remote replica end to end (DESIGN.md guarantee 1,
// issue 16): a volume of a local replica and a RemoteReplica on
// `nbdkit --filter=log file`, whose log records every NBD command the
// server executed with its flags. A FUA write on the volume must arrive as
// an NBD write with FUA (or a write followed by a flush) covering the
// block, and a volume FLUSH as an NBD FLUSH after it; the log is complete
// once the volume's request completed (the filter logs each command when
// it is answered).
#include <poll.h>

#include <fstream>
#include <sstream>

#include "../dbs/device/test_buffers.h"
#include "remote_replica_fixture.h"

namespace ublkvol::nbd {
namespace {

using namespace testing_remote;  // NOLINT(google-build-using-namespace): the shared fixture

struct Done {
  int result = 1;
};

void on_done(engine::VolumeIo& io, int result) {
  static_cast<Done*>(io.user_data)->result = result;
}

// Submits `io` and reaps until it completed (bounded).
int run_one(engine::VolumeQueue& queue, engine::VolumeIo& io) {
  Done done;
  io.user_data = &done;
  io.on_complete = &on_done;
  queue.submit(io);
  queue.kick();
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (done.result == 1 && std::chrono::steady_clock::now() < end) {
    if (queue.reap() == 0) {
      pollfd pfd{.fd = queue.wake_fd(), .events = POLLIN, .revents = 0};
      ::poll(&pfd, 1, 50);
    }
  }
  return done.result;
}

std::vector<std::string> log_lines(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) {
    lines.push_back(line);
  }
  return lines;
}

bool has(const std::string& line, const std::string& word) {
  return line.find(word) != std::string::npos;
}

std::string hex(uint64_t value) {
  std::ostringstream out;
  out << "0x" << std::hex << value;
  return out.str();
}

TEST(RemoteReplica, FlushAndFuaOfTheVolumeReachTheRemoteServer) {
  BackingFile file(kSize + (uint64_t{2} << 20));
  dbs::testing::TempPath log("/var/tmp", "nbdkit-log");
  NbdTestServer server(
      {"nbdkit", "-f", "--filter=log", "file", "file=" + file.path(), "logfile=" + log.path()},
      NbdTestServer::Transport::kTcp);
  engine::testing::Cluster cluster;
  cluster.create(1, kSize, kRegion);
  RemoteReplicaOptions options;
  options.thread.name = "remote";
  engine::RawReplicaFormatOptions fo;
  fo.region_bytes = kRegion;
  fo.size_bytes = kSize;
  ASSERT_TRUE(format_remote_replica(server.uri(), fo, options.device).ok());
  auto remote = RemoteReplica::open(server.uri(), options);
  ASSERT_TRUE(remote.ok()) << remote.error().to_string();
  const uint64_t data_offset = (*remote)->store().data_offset();
  std::vector<engine::ReplicaBinding> bindings{cluster.bindings()[0], (*remote)->binding()};
  auto volume = ReplicatedVolume::open(ReplicatedVolumeOptions{}, bindings);
  ASSERT_TRUE(volume.ok()) << volume.error().to_string();
  auto queue = (*volume)->open_queue(0);
  ASSERT_TRUE(queue.ok());

  dbs::testing::AlignedBuffer buffer(4096);
  buffer.fill_pattern(7);
  constexpr uint64_t kOffset = uint64_t{3} << 20;
  engine::VolumeIo write;
  write.op = engine::VolumeOp::kWrite;
  write.fua = true;
  write.offset = kOffset;
  write.length = 4096;
  write.buffer = buffer.data();
  const size_t before_write = log_lines(log.path()).size();
  ASSERT_EQ(run_one(**queue, write), 0);
  // The FUA write: an NBD write of that block with FUA set.
  const std::string target = "offset=" + hex(data_offset + kOffset);
  bool fua_write = false;
  const auto after_write = log_lines(log.path());
  for (size_t i = before_write; i < after_write.size(); ++i) {
    const std::string& line = after_write[i];
    if (has(line, "Write") && has(line, target) && has(line, "count=0x1000") &&
        has(line, "fua=1")) {
      fua_write = true;
    }
  }
  std::string tail;
  for (size_t i = before_write; i < after_write.size(); ++i) {
    tail += "\n  " + after_write[i];
  }
  EXPECT_TRUE(fua_write) << "no NBD write with FUA at " << target << " in:" << tail;

  engine::VolumeIo flush;
  flush.op = engine::VolumeOp::kFlush;
  ASSERT_EQ(run_one(**queue, flush), 0);
  bool flushed = false;
  const auto after_flush = log_lines(log.path());
  for (size_t i = after_write.size(); i < after_flush.size(); ++i) {
    if (has(after_flush[i], "Flush")) {
      flushed = true;
    }
  }
  EXPECT_TRUE(flushed) << "the volume's FLUSH sent no NBD FLUSH to the remote replica";
  queue->reset();
  ASSERT_TRUE((*volume)->close().ok());
}

}  // namespace
}  // namespace ublkvol::nbd
