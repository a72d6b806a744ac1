// The memory backend used from several queue threads at once (run under
// TSan): overlapping writes from different queues never tear inside one I/O,
// and every thread's completions run on that thread.
#include <stdlib.h>

#include <atomic>
#include <cstring>
#include <gtest/gtest.h>
#include <thread>
#include <vector>

#include "ublkvol/engine/volume.h"

namespace ublkvol::engine {
namespace {

constexpr uint32_t kIoBytes = 64 * 1024;
constexpr uint64_t kVolumeBytes = 4ULL << 20U;

struct ThreadIo {
  std::thread::id owner;
  int result = 1;
  bool wrong_thread = false;
};

void on_done(VolumeIo& io, int result) {
  auto* t = static_cast<ThreadIo*>(io.user_data);
  t->result = result;
  t->wrong_thread = std::this_thread::get_id() != t->owner;
}

TEST(MemoryVolumeThreadsTest, OverlappingWritesFromQueuesStayWhole) {
  SimpleVolumeOptions o;
  o.name = "threads";
  o.size_bytes = kVolumeBytes;
  o.queues = 2;
  auto volume = make_memory_volume(o);
  ASSERT_TRUE(volume.ok());
  std::atomic<int> failures{0};

  auto worker = [&](unsigned index, uint8_t pattern) {
    auto queue = (*volume)->open_queue(index);
    if (!queue.ok()) {
      ++failures;
      return;
    }
    void* raw = nullptr;
    if (::posix_memalign(&raw, 4096, kIoBytes) != 0) {
      ++failures;
      return;
    }
    auto* buf = static_cast<std::byte*>(raw);
    std::memset(buf, pattern, kIoBytes);
    ThreadIo state{std::this_thread::get_id()};
    VolumeIo io;
    io.op = VolumeOp::kWrite;
    io.length = kIoBytes;
    io.buffer = buf;
    io.on_complete = on_done;
    io.user_data = &state;
    for (int round = 0; round < 400; ++round) {
      // Both threads sweep the same offsets, 1 MiB regions straddled.
      io.offset = (static_cast<uint64_t>(round) * 48 * 1024) % (kVolumeBytes - kIoBytes);
      io.offset -= io.offset % 4096;
      (*queue)->submit(io);
      if ((*queue)->reap() != 1 || state.result != 0 || state.wrong_thread) {
        ++failures;
      }
    }
    ::free(raw);
  };
  std::thread a(worker, 0, 0x11);
  std::thread b(worker, 1, 0x22);
  a.join();
  b.join();
  EXPECT_EQ(failures.load(), 0);

  // Every 64 KiB write was applied whole, so each 4 KiB block is uniform.
  auto queue = (*volume)->open_queue(0);
  ASSERT_TRUE(queue.ok());
  void* raw = nullptr;
  ASSERT_EQ(::posix_memalign(&raw, 4096, kVolumeBytes / 4), 0);
  auto* buf = static_cast<std::byte*>(raw);
  for (uint64_t part = 0; part < 4; ++part) {
    ThreadIo state{std::this_thread::get_id()};
    VolumeIo io;
    io.op = VolumeOp::kRead;
    io.offset = part * (kVolumeBytes / 4);
    io.length = kVolumeBytes / 4;
    io.buffer = buf;
    io.on_complete = on_done;
    io.user_data = &state;
    (*queue)->submit(io);
    ASSERT_EQ((*queue)->reap(), 1U);
    ASSERT_EQ(state.result, 0);
    for (uint64_t block = 0; block < io.length / 4096; ++block) {
      const std::byte first = buf[block * 4096];
      for (uint64_t i = 1; i < 4096; ++i) {
        ASSERT_EQ(buf[block * 4096 + i], first) << "torn block at " << io.offset + block * 4096;
      }
    }
  }
  ::free(raw);
}

}  // namespace
}  // namespace ublkvol::engine
