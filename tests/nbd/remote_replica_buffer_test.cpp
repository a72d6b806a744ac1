// Buffer lifetime at a remote replica the engine gave up on (docs/nbd.md,
// "Dropped replicas and buffers"). Once the engine completes a request, its
// buffer belongs to the caller again: no NBD command of a dropped remote
// replica may still send bytes from it or receive a late reply into it.
//
// Deterministic: the server (qemu-nbd, over loopback TCP) is SIGSTOPped, so
// every command sent to it stalls past the engine's deadline; the engine
// completes the requests from the local replica; the test then overwrites
// the buffers with a marker and lets the server resume. The marker must
// never reach the export (a write libnbd still held unsent bytes of), and a
// read's buffer must keep the marker (no late reply lands in it).
#include <poll.h>

#include <algorithm>

#include "remote_replica_fixture.h"

namespace ublkvol::nbd {
namespace {

using namespace testing_remote;  // NOLINT(google-build-using-namespace): the shared fixture

constexpr uint64_t kVolumeBytes = uint64_t{16} << 20;
constexpr uint32_t kIoBytes = 1U << 20U;
// The engine test's writes (the whole volume).
constexpr unsigned kVolumeWrites = 16;
// The device test's: more than the stalled server's socket buffers take, so
// libnbd still holds unsent bytes of some buffers at the cut.
constexpr unsigned kWrites = 32;
constexpr std::byte kMarker{0xB2};
constexpr std::chrono::milliseconds kDeadline{600};

struct Io {
  engine::VolumeIo io;
  std::unique_ptr<std::byte, decltype(&std::free)> buffer{nullptr, &std::free};
  int result = 1;  // 1: not completed yet
};

// libc scans, not std::find/count: fast in the sanitizer builds too.
bool contains(const std::byte* bytes, size_t length, std::byte value) {
  return std::memchr(bytes, static_cast<int>(value), length) != nullptr;
}

bool all_equal(const std::byte* bytes, size_t length, std::byte value) {
  return length == 0 || (bytes[0] == value && std::memcmp(bytes, bytes + 1, length - 1) == 0);
}

void on_done(engine::VolumeIo& io, int result) { static_cast<Io*>(io.user_data)->result = result; }

// Submits every io and reaps until all completed, waiting on the queue's
// wake fd (bounded).
bool run(engine::VolumeQueue& queue, std::vector<Io>& ios) {
  for (Io& io : ios) {
    io.result = 1;
    io.io.user_data = &io;
    io.io.on_complete = &on_done;
    queue.submit(io.io);
  }
  queue.kick();
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (std::any_of(ios.begin(), ios.end(), [](const Io& io) { return io.result == 1; })) {
    if (queue.reap() == 0) {
      if (std::chrono::steady_clock::now() > end) {
        return false;
      }
      pollfd pfd{.fd = queue.wake_fd(), .events = POLLIN, .revents = 0};
      ::poll(&pfd, 1, 50);
    }
  }
  return true;
}

Io make_io(engine::VolumeOp op, uint64_t offset, std::byte fill) {
  Io io;
  // NOLINTNEXTLINE(cppcoreguidelines-no-malloc): 4 KiB aligned I/O buffer
  io.buffer.reset(static_cast<std::byte*>(std::aligned_alloc(4096, kIoBytes)));
  std::memset(io.buffer.get(), static_cast<int>(fill), kIoBytes);
  io.io.op = op;
  io.io.offset = offset;
  io.io.length = kIoBytes;
  io.io.buffer = io.buffer.get();
  return io;
}

// Replica 0 is remote (so reads go to it first), replica 1 local (memory).
struct StalledRemote {
  StalledRemote()
      : file(kVolumeBytes + (uint64_t{2} << 20)),
        server(server_command(Server::kQemuNbd, file.path()), NbdTestServer::Transport::kTcp) {
    cluster.create(1, kVolumeBytes, kRegion);
    options.device.connections = 2;
    options.device.connect_timeout_ms = 2000;
    options.io_deadline = kDeadline;
    options.thread.name = "remote";
    engine::RawReplicaFormatOptions fo;
    fo.region_bytes = kRegion;
    fo.size_bytes = kVolumeBytes;
    const Status formatted = format_remote_replica(server.uri(), fo, options.device);
    EXPECT_TRUE(formatted.ok()) << formatted.error().to_string();
    auto opened = RemoteReplica::open(server.uri(), options);
    EXPECT_TRUE(opened.ok()) << opened.error().to_string();
    if (!opened.ok()) {
      return;
    }
    remote = std::move(*opened);
    ReplicatedVolumeOptions o;
    o.queues = 1;
    o.io_deadline = kDeadline;
    std::vector<engine::ReplicaBinding> bindings{remote->binding(), cluster.bindings()[0]};
    auto v = ReplicatedVolume::open(o, bindings);
    EXPECT_TRUE(v.ok()) << v.error().to_string();
    if (!v.ok()) {
      return;
    }
    volume = std::move(*v);
    auto q = volume->open_queue(0);
    EXPECT_TRUE(q.ok());
    if (q.ok()) {
      queue = std::move(*q);
    }
  }
  ~StalledRemote() {
    server.signal(SIGCONT);  // a test that failed half-way may leave it stopped
    queue.reset();
    if (volume) {
      (void)volume->close();
    }
    volume.reset();
    remote.reset();
  }
  StalledRemote(const StalledRemote&) = delete;
  StalledRemote& operator=(const StalledRemote&) = delete;

  // The server resumed and the remote side has nothing left: every command
  // of the old connections answered or abandoned, every cut connection
  // closed by the server.
  ::testing::AssertionResult remote_settled() const {
    RemoteReplica::Pending last;
    const bool settled = test_support::wait_until(
        [&] {
          auto pending = remote->pending();
          if (pending.ok()) {
            last = *pending;
          }
          return pending.ok() && pending->in_flight == 0 && pending->draining == 0;
        },
        std::chrono::seconds(20));
    if (settled) {
      return ::testing::AssertionSuccess();
    }
    return ::testing::AssertionFailure()
           << "in flight " << last.in_flight << ", live connections " << last.live_connections
           << ", cut connections still open " << last.draining;
  }

  engine::testing::Cluster cluster;
  BackingFile file;
  NbdTestServer server;
  RemoteReplicaOptions options;
  std::unique_ptr<RemoteReplica> remote;
  std::unique_ptr<ReplicatedVolume> volume;
  std::unique_ptr<engine::VolumeQueue> queue;
};

TEST(RemoteReplicaBuffers, WriteCompletedPastTheDeadlineNeverSendsTheReusedBuffer) {
  StalledRemote s;
  ASSERT_NE(s.queue, nullptr);
  uint64_t data_offset = s.remote->store().data_offset();
  s.server.signal_and_wait_stopped();
  std::vector<Io> writes;
  for (unsigned i = 0; i < kVolumeWrites; ++i) {
    writes.push_back(make_io(engine::VolumeOp::kWrite, uint64_t{i} * kIoBytes, std::byte{0xA1}));
  }
  ASSERT_TRUE(run(*s.queue, writes)) << "the writes must complete from the local replica";
  for (const Io& w : writes) {
    EXPECT_EQ(w.result, 0);
  }
  EXPECT_NE(s.volume->status().replicas[0].state, ReplicaState::kInSync);
  // The device cut its connections before the engine's deadline.
  auto stats = s.remote->stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_NE(stats->last_error.find("no answer within 300 ms"), std::string::npos)
      << stats->last_error;
  // The caller reuses its buffers, then the server resumes.
  for (Io& w : writes) {
    std::memset(w.buffer.get(), static_cast<int>(kMarker), kIoBytes);
  }
  s.server.signal(SIGCONT);
  ASSERT_TRUE(s.remote_settled());
  const std::vector<std::byte> remote =
      s.file.read(data_offset, uint64_t{kVolumeWrites} * kIoBytes);
  unsigned reused_blocks = 0;
  for (uint64_t off = 0; off < remote.size(); off += 4096) {
    if (contains(remote.data() + off, 4096, kMarker)) {
      ++reused_blocks;
    }
  }
  EXPECT_EQ(reused_blocks, 0U) << "bytes of a buffer reused after completion reached the export";
}

TEST(RemoteReplicaBuffers, ReadCompletedPastTheDeadlineNeverLandsInTheReusedBuffer) {
  StalledRemote s;
  ASSERT_NE(s.queue, nullptr);
  std::vector<Io> fill;
  fill.push_back(make_io(engine::VolumeOp::kWrite, 0, std::byte{0x4C}));
  ASSERT_TRUE(run(*s.queue, fill));
  ASSERT_EQ(fill[0].result, 0);
  s.server.signal_and_wait_stopped();
  // With nothing outstanding the read goes to replica 0, the remote one.
  std::vector<Io> reads;
  reads.push_back(make_io(engine::VolumeOp::kRead, 0, std::byte{0}));
  ASSERT_TRUE(run(*s.queue, reads)) << "the read must complete from the local replica";
  ASSERT_EQ(reads[0].result, 0);
  EXPECT_TRUE(all_equal(reads[0].buffer.get(), kIoBytes, std::byte{0x4C}));
  std::memset(reads[0].buffer.get(), static_cast<int>(kMarker), kIoBytes);
  s.server.signal(SIGCONT);
  ASSERT_TRUE(s.remote_settled());
  EXPECT_TRUE(all_equal(reads[0].buffer.get(), kIoBytes, kMarker))
      << "a late reply of the stalled server landed in a buffer the engine had handed back";
}

// The same at the device: writes larger than the stalled sockets take, so
// libnbd holds unsent bytes of them when the command timeout cuts the
// connections. Those bytes never leave after the requests failed.
TEST(NbdDeviceCut, CommandTimeoutFailsTheWritesAndNeverSendsTheirBuffersLater) {
  BackingFile file(uint64_t{kWrites} * kIoBytes);
  NbdTestServer server(server_command(Server::kQemuNbd, file.path()),
                       NbdTestServer::Transport::kTcp);
  NbdDeviceOptions options;
  options.connections = 2;
  options.command_timeout_ms = 300;
  auto opened = NbdDevice::open(server.uri(), options);
  ASSERT_TRUE(opened.ok()) << opened.error().to_string();
  NbdDevice& device = **opened;
  const int completion_fd = device.completion_fd();  // as a store thread: sleeps on it
  ASSERT_GE(completion_fd, 0);
  server.signal_and_wait_stopped();
  struct Write {
    dbs::IoRequest request;
    int result = 1;
  };
  std::vector<Io> buffers;
  std::vector<Write> writes(kWrites);
  for (unsigned i = 0; i < kWrites; ++i) {
    buffers.push_back(make_io(engine::VolumeOp::kWrite, 0, std::byte{0xA1}));
    Write& w = writes[i];
    w.request.op = dbs::IoOp::kWrite;
    w.request.offset = uint64_t{i} * kIoBytes;
    w.request.length = kIoBytes;
    w.request.buffer = buffers.back().buffer.get();
    w.request.user_data = &w;
    w.request.on_complete = [](dbs::IoRequest& request, int result) {
      static_cast<Write*>(request.user_data)->result = result;
    };
    device.submit(w.request);
  }
  device.kick();
  // Sleep on the completion fd as the owner does: the device's timer must
  // wake it for the timeout.
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (device.in_flight() > 0 && std::chrono::steady_clock::now() < end) {
    pollfd pfd{.fd = completion_fd, .events = POLLIN, .revents = 0};
    ::poll(&pfd, 1, 1000);
    device.poll(false);
  }
  ASSERT_EQ(device.in_flight(), 0U) << "the stalled writes never failed";
  for (const Write& w : writes) {
    EXPECT_EQ(w.result, -ETIMEDOUT);
  }
  EXPECT_EQ(device.counters().cuts, 1U);
  EXPECT_EQ(device.live_connections(), 0U);
  EXPECT_NE(device.last_error().find("no answer within 300 ms"), std::string::npos)
      << device.last_error();
  for (Io& b : buffers) {
    std::memset(b.buffer.get(), static_cast<int>(kMarker), kIoBytes);
  }
  server.signal(SIGCONT);
  ASSERT_TRUE(test_support::wait_until(
      [&] {
        device.poll_draining();
        return device.draining() == 0;
      },
      std::chrono::seconds(20)))
      << "the server never closed the cut connections";
  const std::vector<std::byte> bytes = file.read(0, uint64_t{kWrites} * kIoBytes);
  EXPECT_FALSE(contains(bytes.data(), bytes.size(), kMarker))
      << "bytes of a failed write's buffer reached the export after the cut";
  // Later requests fail at once.
  Write late;
  late.request.op = dbs::IoOp::kFlush;
  late.request.user_data = &late;
  late.request.on_complete = writes[0].request.on_complete;
  device.submit(late.request);
  device.poll(false);
  EXPECT_EQ(late.result, -ENOTCONN);
}

}  // namespace
}  // namespace ublkvol::nbd
