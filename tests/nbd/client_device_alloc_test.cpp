// Allocation on the NBD data path (docs/nbd.md, "Allocation"): counts
// every malloc/calloc/realloc/aligned allocation of the process while
// NbdDevice carries 4K writes and reads to `nbdkit memory`, and compares
// with libnbd's own synchronous API for the same commands (its per-command
// record). NbdDevice must add nothing per I/O on top of libnbd; the figures
// are printed (and recorded as test properties) for the docs.
//
// The counters replace the allocator entry points of this executable and
// forward to glibc's (__libc_*), so libnbd's calls are counted too. Not
// built with sanitizers, which bring their own allocator.
#include <libnbd.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <gtest/gtest.h>
#include <vector>

#include "ublkvol/nbd/client_device.h"

#include "../dbs/device/test_buffers.h"
#include "nbd_test_server.h"

extern "C" {
void* __libc_malloc(size_t size);                      // NOLINT(bugprone-reserved-identifier)
void* __libc_calloc(size_t count, size_t size);        // NOLINT(bugprone-reserved-identifier)
void* __libc_realloc(void* pointer, size_t size);      // NOLINT(bugprone-reserved-identifier)
void* __libc_memalign(size_t alignment, size_t size);  // NOLINT(bugprone-reserved-identifier)
void __libc_free(void* pointer);                       // NOLINT(bugprone-reserved-identifier)
}

namespace {
// Process-wide by nature: the allocator is. Only this test's thread does
// I/O while it counts.
std::atomic<uint64_t> g_allocations{
    0};  // NOLINT(cppcoreguidelines-avoid-non-const-global-variables)
}  // namespace

// NOLINTBEGIN(cppcoreguidelines-no-malloc,readability-inconsistent-declaration-parameter-name)
extern "C" {
void* malloc(size_t size) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  return __libc_malloc(size);
}
void* calloc(size_t count, size_t size) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  return __libc_calloc(count, size);
}
void* realloc(void* pointer, size_t size) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  return __libc_realloc(pointer, size);
}
void* aligned_alloc(size_t alignment, size_t size) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  return __libc_memalign(alignment, size);
}
void* memalign(size_t alignment, size_t size) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  return __libc_memalign(alignment, size);
}
int posix_memalign(void** out, size_t alignment, size_t size) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  *out = __libc_memalign(alignment, size);
  return *out != nullptr ? 0 : ENOMEM;
}
void free(void* pointer) { __libc_free(pointer); }
}
// NOLINTEND(cppcoreguidelines-no-malloc,readability-inconsistent-declaration-parameter-name)

namespace ublkvol::nbd {
namespace {

using testing::NbdTestServer;

constexpr unsigned kIos = 2000;
constexpr uint64_t kSpan = uint64_t{32} << 20;

// Allocations per command of libnbd's synchronous API (nbd_pwrite/pread).
double libnbd_allocations_per_command(const std::string& uri, std::byte* buffer) {
  nbd_handle* handle = nbd_create();
  EXPECT_NE(handle, nullptr);
  EXPECT_EQ(nbd_connect_uri(handle, uri.c_str()), 0) << nbd_get_error();
  for (unsigned i = 0; i < 16; ++i) {  // warm-up
    nbd_pwrite(handle, buffer, 4096, uint64_t{i} * 4096, 0);
  }
  const uint64_t before = g_allocations.load();
  for (unsigned i = 0; i < kIos; ++i) {
    const uint64_t offset = (uint64_t{i} * 4096 * 7) % kSpan;
    EXPECT_EQ(i % 2 == 0 ? nbd_pwrite(handle, buffer, 4096, offset, 0)
                         : nbd_pread(handle, buffer, 4096, offset, 0),
              0);
  }
  const uint64_t counted = g_allocations.load() - before;
  nbd_close(handle);
  return static_cast<double>(counted) / kIos;
}

struct Slot {
  dbs::IoRequest request;
  bool busy = false;
};

// Allocations per request of NbdDevice: 4K writes and reads alternating,
// `depth` in flight.
double device_allocations_per_request(const std::string& uri, unsigned depth, std::byte* buffer) {
  NbdDeviceOptions options;
  options.command_timeout_ms = 5000;  // the timeout checks run too
  auto opened = NbdDevice::open(uri, options);
  EXPECT_TRUE(opened.ok());
  if (!opened.ok()) {
    return -1;
  }
  NbdDevice& device = **opened;
  (void)device.completion_fd();  // as under a store thread (timerfd armed)
  std::vector<Slot> slots(depth);
  auto run = [&](unsigned count) {
    unsigned submitted = 0;
    while (submitted < count || device.in_flight() > 0) {
      for (unsigned s = 0; s < depth && submitted < count; ++s) {
        Slot& slot = slots[s];
        if (slot.busy) {
          continue;
        }
        slot.request = dbs::IoRequest{};
        slot.request.op = submitted % 2 == 0 ? dbs::IoOp::kWrite : dbs::IoOp::kRead;
        slot.request.offset = (uint64_t{submitted} * 4096 * 7) % kSpan;
        slot.request.length = 4096;
        slot.request.buffer = buffer + size_t{s} * 4096;
        slot.request.user_data = &slot;
        slot.request.on_complete = [](dbs::IoRequest& request, int result) {
          EXPECT_EQ(result, 0);
          static_cast<Slot*>(request.user_data)->busy = false;
        };
        slot.busy = true;
        ++submitted;
        device.submit(slot.request);
      }
      device.kick();
      device.poll(/*wait=*/true);
    }
  };
  run(64);  // warm-up
  const uint64_t before = g_allocations.load();
  run(kIos);
  const uint64_t counted = g_allocations.load() - before;
  return static_cast<double>(counted) / kIos;
}

TEST(NbdDeviceAllocation, AddsNoAllocationPerIoBeyondLibnbdsCommandRecord) {
  NbdTestServer server({"nbdkit", "-f", "memory", "64M"}, NbdTestServer::Transport::kUnix);
  dbs::testing::AlignedBuffer buffer(size_t{32} * 4096);
  buffer.fill_pattern(3);
  const double libnbd = libnbd_allocations_per_command(server.uri(), buffer.data());
  const double qd1 = device_allocations_per_request(server.uri(), 1, buffer.data());
  const double qd32 = device_allocations_per_request(server.uri(), 32, buffer.data());
  std::printf("allocations per 4K I/O: libnbd sync API %.3f, NbdDevice QD1 %.3f, QD32 %.3f\n",
              libnbd, qd1, qd32);
  RecordProperty("libnbd_allocations_per_command", std::to_string(libnbd));
  RecordProperty("device_allocations_per_io_qd1", std::to_string(qd1));
  RecordProperty("device_allocations_per_io_qd32", std::to_string(qd32));
  // libnbd allocates its command record per command; NbdDevice itself
  // nothing (a small margin for the timer/epoll bookkeeping being counted
  // as zero: there is none per I/O).
  EXPECT_GT(libnbd, 0.5) << "libnbd's per-command record was not counted: the counter is broken";
  EXPECT_LE(qd1, libnbd + 0.01);
  EXPECT_LE(qd32, libnbd + 0.01);
}

}  // namespace
}  // namespace ublkvol::nbd
