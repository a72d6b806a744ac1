// NbdDevice against real NBD servers (nbdkit memory / file, qemu-nbd) on a
// Unix socket and on loopback TCP: pattern writes with many requests in
// flight, read back, flush, FUA (native and emulated), trim, write-zeroes
// (native and emulated), big I/O split into pieces, open errors, and a
// server killed with requests in flight.
#include "ublkvol/nbd/client_device.h"

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <gtest/gtest.h>
#include <string>
#include <vector>

#include "../dbs/device/temp_file.h"
#include "../dbs/device/test_buffers.h"
#include "nbd_test_server.h"

namespace ublkvol::nbd {
namespace {

using dbs::IoOp;
using dbs::IoRequest;
using dbs::testing::AlignedBuffer;
using testing::NbdTestServer;
using Transport = NbdTestServer::Transport;

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = uint64_t{1} << 20;

std::unique_ptr<NbdDevice> open_or_fail(const std::string& uri,
                                        const NbdDeviceOptions& options = {}) {
  auto device = NbdDevice::open(uri, options);
  EXPECT_TRUE(device.ok()) << (device.ok() ? "" : device.error().to_string());
  return device.ok() ? std::move(*device) : nullptr;
}

struct Slot {
  IoRequest request;
  bool done = false;
  int result = 1;
};

void on_slot_done(IoRequest& request, int result) {
  auto* slot = static_cast<Slot*>(request.user_data);
  slot->done = true;
  slot->result = result;
}

// Submits all `slots` at once and polls until each has completed.
void run_all(dbs::BlockDevice& device, std::vector<Slot>& slots) {
  for (auto& slot : slots) {
    slot.request.on_complete = &on_slot_done;
    slot.request.user_data = &slot;
    device.submit(slot.request);
  }
  device.kick();
  while (device.in_flight() > 0) {
    device.poll(/*wait=*/true);
  }
  for (auto& slot : slots) {
    ASSERT_TRUE(slot.done);
  }
}

// 64 writes of 64 KiB with different patterns at once, then read back at
// once, then flush: the data path with many commands in flight.
void pattern_round_trip(NbdDevice& device) {
  constexpr size_t kCount = 64;
  constexpr size_t kLength = 64 * kKiB;
  std::vector<AlignedBuffer> buffers;
  std::vector<Slot> writes(kCount);
  for (size_t i = 0; i < kCount; ++i) {
    buffers.emplace_back(kLength);
    buffers.back().fill_pattern(i);
    writes[i].request.op = IoOp::kWrite;
    // Spread over the device, not in order.
    writes[i].request.offset = ((i * 37) % kCount) * 2 * kLength;
    writes[i].request.length = kLength;
    writes[i].request.buffer = buffers.back().data();
  }
  run_all(device, writes);
  for (auto& slot : writes) {
    EXPECT_EQ(slot.result, 0) << device.last_error();
  }
  std::vector<AlignedBuffer> readback;
  std::vector<Slot> reads(kCount);
  for (size_t i = 0; i < kCount; ++i) {
    readback.emplace_back(kLength);
    readback.back().fill(std::byte{0xEE});
    reads[i].request.op = IoOp::kRead;
    reads[i].request.offset = writes[i].request.offset;
    reads[i].request.length = kLength;
    reads[i].request.buffer = readback.back().data();
  }
  run_all(device, reads);
  for (size_t i = 0; i < kCount; ++i) {
    EXPECT_EQ(reads[i].result, 0);
    EXPECT_TRUE(readback[i].has_pattern(i)) << "request " << i;
  }
  EXPECT_TRUE(dbs::flush_sync(device).ok());
}

TEST(NbdDevice, NbdkitMemoryOverUnixSocketUsesMultiConnAndRoundTrips) {
  NbdTestServer server({"nbdkit", "-f", "memory", "64M"}, Transport::kUnix);
  NbdDeviceOptions options;
  options.connections = 3;
  options.queue_depth = 8;  // 64 requests > 3 x 8: some wait for free slots
  auto device = open_or_fail(server.uri(), options);
  ASSERT_NE(device, nullptr);
  EXPECT_EQ(device->size_bytes(), 64 * kMiB);
  EXPECT_TRUE(device->multi_conn());
  EXPECT_EQ(device->connections(), 3U);
  pattern_round_trip(*device);
  EXPECT_EQ(device->counters().failed, 0U);
  EXPECT_EQ(device->latency().count(), 64U * 2 + 1);
  EXPECT_GT(device->latency().quantile_us(990), 0U);
}

TEST(NbdDevice, NbdkitFileOverTcpFuaTrimAndWriteZeroesReachTheFile) {
  dbs::testing::TempPath file("/var/tmp", "nbdfile");
  {
    const int fd = ::open(file.path().c_str(), O_CREAT | O_RDWR | O_TRUNC, 0600);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::ftruncate(fd, static_cast<off_t>(16 * kMiB)), 0);
    ::close(fd);
  }
  NbdTestServer server({"nbdkit", "-f", "file", "file=" + file.path()}, Transport::kTcp);
  auto device = open_or_fail(server.uri());
  ASSERT_NE(device, nullptr);
  EXPECT_TRUE(device->capabilities().fua);
  EXPECT_TRUE(device->capabilities().trim);
  EXPECT_TRUE(device->capabilities().zero);

  AlignedBuffer data(256 * kKiB);
  data.fill_pattern(7);
  ASSERT_TRUE(dbs::write_sync(*device, 1 * kMiB, data.span(), /*fua=*/true).ok());
  EXPECT_EQ(device->counters().fua_emulated, 0U);
  // The FUA write is on the file itself (read it behind the server's back).
  std::vector<std::byte> on_disk(data.size());
  {
    const int fd = ::open(file.path().c_str(), O_RDONLY);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::pread(fd, on_disk.data(), on_disk.size(), static_cast<off_t>(1 * kMiB)),
              static_cast<ssize_t>(on_disk.size()));
    ::close(fd);
  }
  EXPECT_EQ(std::memcmp(on_disk.data(), data.data(), data.size()), 0);

  // Write-zeroes over part of it reads back as zeros; the rest is intact.
  ASSERT_TRUE(dbs::write_zeroes_sync(*device, 1 * kMiB, 64 * kKiB).ok());
  AlignedBuffer back(256 * kKiB);
  ASSERT_TRUE(dbs::read_sync(*device, 1 * kMiB, back.span()).ok());
  for (size_t i = 0; i < back.size(); ++i) {
    const std::byte expected = i < 64 * kKiB ? std::byte{0} : data[i];
    ASSERT_EQ(back[i], expected) << "byte " << i;
  }
  // Discard goes as write-zeroes (discard_as_zero): it reads back as zeros.
  ASSERT_TRUE(dbs::discard_sync(*device, 1 * kMiB + 128 * kKiB, 128 * kKiB).ok());
  ASSERT_TRUE(dbs::read_sync(*device, 1 * kMiB, back.span()).ok());
  for (size_t i = 128 * kKiB; i < back.size(); ++i) {
    ASSERT_EQ(back[i], std::byte{0}) << "byte " << i;
  }
  ASSERT_TRUE(dbs::flush_sync(*device).ok());
  pattern_round_trip(*device);
}

TEST(NbdDevice, FuaAndWriteZeroesAreEmulatedWhenTheServerLacksThem) {
  // The fua and nozero filters hide FUA and WRITE_ZEROES (their default
  // mode "none").
  NbdTestServer server({"nbdkit", "-f", "--filter=fua", "--filter=nozero", "memory", "8M"},
                       Transport::kUnix);
  NbdDeviceOptions options;
  options.max_request_bytes = 64 * kKiB;  // emulated zeroes in several pieces
  auto device = open_or_fail(server.uri(), options);
  ASSERT_NE(device, nullptr);
  EXPECT_FALSE(device->capabilities().fua);
  EXPECT_FALSE(device->capabilities().zero);
  EXPECT_TRUE(device->capabilities().flush);

  AlignedBuffer data(512 * kKiB);
  data.fill_pattern(3);
  ASSERT_TRUE(dbs::write_sync(*device, 0, data.span(), /*fua=*/true).ok());
  EXPECT_EQ(device->counters().fua_emulated, 1U);
  const uint64_t commands_before = device->counters().commands;
  ASSERT_TRUE(dbs::write_zeroes_sync(*device, 128 * kKiB, 256 * kKiB).ok());
  EXPECT_EQ(device->counters().commands - commands_before, 4U);  // 256 KiB / 64 KiB
  AlignedBuffer back(512 * kKiB);
  ASSERT_TRUE(dbs::read_sync(*device, 0, back.span()).ok());
  for (size_t i = 0; i < back.size(); ++i) {
    const bool zeroed = i >= 128 * kKiB && i < 384 * kKiB;
    ASSERT_EQ(back[i], zeroed ? std::byte{0} : data[i]) << "byte " << i;
  }
}

TEST(NbdDevice, QemuNbdBigIoIsSplitAndReadsBackIdentical) {
  dbs::testing::TempPath file("/var/tmp", "qemunbd");
  {
    const int fd = ::open(file.path().c_str(), O_CREAT | O_RDWR | O_TRUNC, 0600);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::ftruncate(fd, static_cast<off_t>(96 * kMiB)), 0);
    ::close(fd);
  }
  NbdTestServer server({"qemu-nbd", "-f", "raw", "--cache=none", "--aio=threads", file.path()},
                       Transport::kTcp);
  auto device = open_or_fail(server.uri());
  ASSERT_NE(device, nullptr);
  EXPECT_EQ(device->size_bytes(), 96 * kMiB);
  // 40 MiB: larger than the 32 MiB cap on one command.
  AlignedBuffer big(40 * kMiB);
  big.fill_pattern(11);
  ASSERT_TRUE(dbs::write_sync(*device, 4 * kMiB, big.span(), /*fua=*/true).ok())
      << device->last_error();
  EXPECT_EQ(device->counters().split_requests, 1U);
  ASSERT_TRUE(dbs::flush_sync(*device).ok());
  AlignedBuffer back(40 * kMiB);
  ASSERT_TRUE(dbs::read_sync(*device, 4 * kMiB, back.span()).ok());
  EXPECT_EQ(std::memcmp(back.data(), big.data(), big.size()), 0);
  ASSERT_TRUE(dbs::write_zeroes_sync(*device, 4 * kMiB, 8 * kMiB).ok());
  ASSERT_TRUE(dbs::read_sync(*device, 4 * kMiB, back.span()).ok());
  for (size_t i = 0; i < back.size(); i += 4096) {
    ASSERT_EQ(back[i], i < 8 * kMiB ? std::byte{0} : big[i]) << "byte " << i;
  }
  // qemu-nbd ignores TRIM by default (no --discard=unmap); a discard still
  // reads back as zeros, as on every other replica (discard_as_zero).
  ASSERT_TRUE(dbs::discard_sync(*device, 16 * kMiB, 4 * kMiB).ok());
  AlignedBuffer discarded(4 * kMiB);
  ASSERT_TRUE(dbs::read_sync(*device, 16 * kMiB, discarded.span()).ok());
  EXPECT_TRUE(discarded.all_equal(std::byte{0}));
}

TEST(NbdDevice, OpenErrorsNameTheUriAndTheProblem) {
  auto not_uri = NbdDevice::open("/dev/sdb");
  ASSERT_FALSE(not_uri.ok());
  EXPECT_EQ(not_uri.error().errno_value(), EINVAL);
  EXPECT_NE(not_uri.error().message().find("/dev/sdb"), std::string::npos);
  EXPECT_NE(not_uri.error().message().find("not an NBD URI"), std::string::npos);

  const std::string missing = "nbd+unix:///?socket=/nonexistent/ublkvol-nbd.sock";
  auto refused = NbdDevice::open(missing);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.error().message().find(missing), std::string::npos);
  EXPECT_NE(refused.error().message().find("cannot connect"), std::string::npos);

  NbdTestServer read_only({"nbdkit", "-f", "-r", "memory", "8M"}, Transport::kUnix);
  auto ro = NbdDevice::open(read_only.uri());
  ASSERT_FALSE(ro.ok());
  EXPECT_EQ(ro.error().errno_value(), EROFS);
  EXPECT_NE(ro.error().message().find("read-only"), std::string::npos);

  // A server that accepts but never answers: bounded by the connect timeout.
  NbdTestServer stopped({"nbdkit", "-f", "memory", "8M"}, Transport::kUnix);
  stopped.signal(SIGSTOP);
  NbdDeviceOptions options;
  options.connect_timeout_ms = 300;
  const auto start = std::chrono::steady_clock::now();
  auto hung = NbdDevice::open(stopped.uri(), options);
  ASSERT_FALSE(hung.ok());
  EXPECT_EQ(hung.error().errno_value(), ETIMEDOUT);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
}

TEST(NbdDevice, KilledServerFailsInFlightRequestsPromptlyAndLaterOnesAtOnce) {
  NbdTestServer server({"nbdkit", "-f", "memory", "64M"}, Transport::kTcp);
  NbdDeviceOptions options;
  options.connections = 2;
  auto device = open_or_fail(server.uri(), options);
  ASSERT_NE(device, nullptr);
  AlignedBuffer data(64 * kKiB);
  data.fill_pattern(1);
  ASSERT_TRUE(dbs::write_sync(*device, 0, data.span()).ok());

  // Stop the server so requests stay in flight, queue some, then kill it.
  server.signal_and_wait_stopped();
  std::vector<AlignedBuffer> buffers;
  std::vector<Slot> slots(16);
  for (size_t i = 0; i < slots.size(); ++i) {
    buffers.emplace_back(64 * kKiB);
    buffers.back().fill_pattern(i);
    slots[i].request.op = IoOp::kWrite;
    slots[i].request.offset = i * 64 * kKiB;
    slots[i].request.length = 64 * kKiB;
    slots[i].request.buffer = buffers.back().data();
    slots[i].request.on_complete = &on_slot_done;
    slots[i].request.user_data = &slots[i];
    device->submit(slots[i].request);
  }
  device->poll(/*wait=*/false);
  EXPECT_EQ(device->in_flight(), 16U);
  const auto killed = std::chrono::steady_clock::now();
  server.stop(SIGKILL);
  while (device->in_flight() > 0) {
    device->poll(/*wait=*/true);
  }
  EXPECT_LT(std::chrono::steady_clock::now() - killed, std::chrono::seconds(2));
  for (auto& slot : slots) {
    EXPECT_TRUE(slot.done);
    EXPECT_LT(slot.result, 0);
  }
  EXPECT_EQ(device->live_connections(), 0U);
  EXPECT_NE(device->last_error().find(server.uri()), std::string::npos) << device->last_error();

  // With no connection left, a new request fails at once.
  AlignedBuffer back(4096);
  auto status = dbs::read_sync(*device, 0, back.span());
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.error().errno_value(), ENOTCONN);
}

TEST(NbdDevice, CompletionFdBecomesReadableWhenARepliesArrive) {
  NbdTestServer server({"nbdkit", "-f", "memory", "8M"}, Transport::kUnix);
  auto device = open_or_fail(server.uri());
  ASSERT_NE(device, nullptr);
  const int fd = device->completion_fd();
  ASSERT_GE(fd, 0);
  AlignedBuffer buffer(4096);
  Slot slot;
  slot.request.op = IoOp::kRead;
  slot.request.length = 4096;
  slot.request.buffer = buffer.data();
  slot.request.on_complete = &on_slot_done;
  slot.request.user_data = &slot;
  device->submit(slot.request);
  device->kick();
  // Sleep on the fd, as an owner thread with several devices would.
  while (!slot.done) {
    pollfd pfd{.fd = fd, .events = POLLIN, .revents = 0};
    ASSERT_EQ(::poll(&pfd, 1, 5000), 1) << "no wake-up within 5 s";
    device->poll(/*wait=*/false);
  }
  EXPECT_EQ(slot.result, 0);
  // An invalid request completes locally and also wakes the fd.
  Slot bad;
  bad.request.op = IoOp::kRead;
  bad.request.offset = 100;  // unaligned
  bad.request.length = 4096;
  bad.request.buffer = buffer.data();
  bad.request.on_complete = &on_slot_done;
  bad.request.user_data = &bad;
  device->submit(bad.request);
  pollfd pfd{.fd = fd, .events = POLLIN, .revents = 0};
  ASSERT_EQ(::poll(&pfd, 1, 5000), 1);
  device->poll(/*wait=*/false);
  EXPECT_TRUE(bad.done);
  EXPECT_EQ(bad.result, -EINVAL);
}

// nbds+unix:// with a PSK file (libnbd URI rules): the session is TLS and
// data round-trips; a wrong key or a plain nbd:// URI is refused by the
// server, which requires TLS.
TEST(NbdDevice, TlsWithAPskFileRoundTripsAndAWrongKeyOrPlainTextIsRefused) {
  dbs::testing::TempPath good("/var/tmp", "psk-good");
  dbs::testing::TempPath bad("/var/tmp", "psk-bad");
  auto write_file = [](const std::string& path, const std::string& text) {
    const int fd = ::open(path.c_str(), O_CREAT | O_WRONLY | O_TRUNC, 0600);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::write(fd, text.data(), text.size()), static_cast<ssize_t>(text.size()));
    ::close(fd);
  };
  write_file(good.path(), "alice:0123456789abcdef0123456789abcdef\n");
  write_file(bad.path(), "alice:fedcba9876543210fedcba9876543210\n");
  NbdTestServer server(
      {"nbdkit", "-f", "--tls=require", "--tls-psk=" + good.path(), "memory", "8M"},
      Transport::kUnix);
  const std::string socket = server.uri().substr(server.uri().find("?socket=") + 8);
  const std::string tls_uri = "nbds+unix://alice@/?socket=" + socket;

  auto device = open_or_fail(tls_uri + "&tls-psk-file=" + good.path());
  ASSERT_NE(device, nullptr);
  AlignedBuffer data(64 * kKiB);
  data.fill_pattern(5);
  ASSERT_TRUE(dbs::write_sync(*device, 0, data.span(), /*fua=*/true).ok());
  AlignedBuffer back(64 * kKiB);
  ASSERT_TRUE(dbs::read_sync(*device, 0, back.span()).ok());
  EXPECT_TRUE(back.has_pattern(5));

  NbdDeviceOptions quick;
  quick.connect_timeout_ms = 5000;
  auto wrong = NbdDevice::open(tls_uri + "&tls-psk-file=" + bad.path(), quick);
  ASSERT_FALSE(wrong.ok());
  EXPECT_NE(wrong.error().message().find("cannot connect"), std::string::npos)
      << wrong.error().to_string();
  auto plain = NbdDevice::open(server.uri(), quick);
  ASSERT_FALSE(plain.ok());
  EXPECT_NE(plain.error().message().find(server.uri()), std::string::npos);
}

}  // namespace
}  // namespace ublkvol::nbd
