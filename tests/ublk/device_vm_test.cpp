// UblkDevice in-process against the real driver (VM; skipped on hosts without
// ublk_drv), with a volume that completes on its own worker threads and
// signals wake_fd() - the path the replicated engine takes:
//   - data written through /dev/ublkbN from two CPUs reads back, both queues
//     serve, every request reaches the volume;
//   - detach() leaves a recoverable device quiesced: a read issued meanwhile
//     waits, and completes with the right data after recover();
//   - stop_and_delete() under I/O returns and the I/O fails, no hang;
//   - recover() refuses devices it must not take over.
#include <fcntl.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <future>
#include <gtest/gtest.h>
#include <mutex>
#include <thread>
#include <vector>

#include "ublkvol/common/unique_fd.h"
#include "ublkvol/engine/volume.h"
#include "ublkvol/ublk/control.h"
#include "ublkvol/ublk/device.h"

#include "support/ublk_test_env.h"

namespace ublkvol::ublk {
namespace {

using engine::VolumeInfo;
using engine::VolumeIo;
using engine::VolumeOp;

constexpr uint64_t kVolumeBytes = 64ULL << 20U;

// RAM volume whose queues hand every I/O to a worker thread; completions come
// back through a locked list and an eventfd (test code: locks are fine here).
class AsyncVolume final : public engine::Volume {
 public:
  explicit AsyncVolume(unsigned queues) : queues_(queues), data_(kVolumeBytes) {
    info_.name = "async";
    info_.size_bytes = kVolumeBytes;
  }

  [[nodiscard]] const VolumeInfo& info() const override { return info_; }
  Result<std::unique_ptr<engine::VolumeQueue>> open_queue(unsigned index) override {
    if (index >= queues_) {
      return Error(EINVAL, "no such queue");
    }
    return std::unique_ptr<engine::VolumeQueue>(std::make_unique<Queue>(*this));
  }

  std::atomic<uint64_t> writes{0};
  std::atomic<uint64_t> reads{0};

 private:
  class Queue final : public engine::VolumeQueue {
   public:
    explicit Queue(AsyncVolume& volume) : volume_(volume), wake_(::eventfd(0, EFD_CLOEXEC)) {
      worker_ = std::thread([this] { work(); });
    }
    ~Queue() override {
      {
        std::lock_guard<std::mutex> lock(mutex_);
        stopping_ = true;
      }
      cv_.notify_one();
      worker_.join();
    }

    void submit(VolumeIo& io) override {
      staged_.push_back(&io);
      ++in_flight_;
    }
    void kick() override {
      if (staged_.empty()) {
        return;
      }
      {
        std::lock_guard<std::mutex> lock(mutex_);
        for (VolumeIo* io : staged_) {
          inbox_.push_back(io);
        }
      }
      staged_.clear();
      cv_.notify_one();
    }
    unsigned reap() override {
      std::deque<std::pair<VolumeIo*, int>> done;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        done.swap(done_);
      }
      for (auto& [io, result] : done) {
        --in_flight_;
        io->on_complete(*io, result);
      }
      return static_cast<unsigned>(done.size());
    }
    [[nodiscard]] int wake_fd() const override { return wake_.get(); }
    [[nodiscard]] unsigned in_flight() const override { return in_flight_; }

   private:
    void work() {
      std::unique_lock<std::mutex> lock(mutex_);
      while (true) {
        cv_.wait(lock, [this] { return stopping_ || !inbox_.empty(); });
        if (inbox_.empty()) {
          return;
        }
        std::deque<VolumeIo*> batch;
        batch.swap(inbox_);
        lock.unlock();
        // Some latency, so that requests really are in flight in the backend.
        std::this_thread::sleep_for(std::chrono::microseconds(200));
        std::vector<std::pair<VolumeIo*, int>> results;
        results.reserve(batch.size());
        for (VolumeIo* io : batch) {
          results.emplace_back(io, volume_.execute(*io));
        }
        lock.lock();
        for (auto& r : results) {
          done_.push_back(r);
        }
        const uint64_t one = 1;
        [[maybe_unused]] ssize_t n = ::write(wake_.get(), &one, sizeof(one));
      }
    }

    AsyncVolume& volume_;
    UniqueFd wake_;
    std::vector<VolumeIo*> staged_;
    unsigned in_flight_ = 0;
    std::mutex mutex_;
    std::condition_variable cv_;
    std::deque<VolumeIo*> inbox_;
    std::deque<std::pair<VolumeIo*, int>> done_;
    bool stopping_ = false;
    std::thread worker_;
  };

  int execute(const VolumeIo& io) {
    if (io.op == VolumeOp::kFlush) {
      return 0;
    }
    if (io.offset + io.length > info_.size_bytes) {
      return -EINVAL;
    }
    std::lock_guard<std::mutex> lock(data_mutex_);
    switch (io.op) {
      case VolumeOp::kRead:
        std::memcpy(io.buffer, data_.data() + io.offset, io.length);
        ++reads;
        return 0;
      case VolumeOp::kWrite:
        std::memcpy(data_.data() + io.offset, io.buffer, io.length);
        ++writes;
        return 0;
      default:
        std::memset(data_.data() + io.offset, 0, io.length);
        return 0;
    }
  }

  VolumeInfo info_;
  unsigned queues_;
  std::mutex data_mutex_;
  std::vector<std::byte> data_;
};

// 4 KiB-aligned I/O buffer.
struct Buffer {
  explicit Buffer(size_t n) : size(n) {
    void* p = nullptr;
    EXPECT_EQ(::posix_memalign(&p, 4096, n), 0);
    data = static_cast<unsigned char*>(p);
  }
  ~Buffer() { ::free(data); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  size_t size;
  unsigned char* data = nullptr;
};

void fill(Buffer& b, uint64_t offset, unsigned seed) {
  for (size_t i = 0; i < b.size; ++i) {
    b.data[i] = static_cast<unsigned char>((offset + i) * 31 + seed);
  }
}

bool matches(const Buffer& b, uint64_t offset, unsigned seed) {
  for (size_t i = 0; i < b.size; ++i) {
    if (b.data[i] != static_cast<unsigned char>((offset + i) * 31 + seed)) {
      return false;
    }
  }
  return true;
}

UniqueFd open_direct(const std::string& path) {
  return UniqueFd(::open(path.c_str(), O_RDWR | O_DIRECT | O_CLOEXEC));
}

void pin_to_cpu(unsigned cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu % std::max(1U, std::thread::hardware_concurrency()), &set);
  pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

TEST(UblkDeviceVm, ServesAnAsyncVolumeOnTwoQueues) {
  UBLKVOL_REQUIRE_UBLK();
  AsyncVolume volume(2);
  DeviceOptions options;
  options.queues = 2;
  options.queue_depth = 32;
  auto device = UblkDevice::create(volume, options);
  ASSERT_TRUE(device.ok()) << device.error().to_string();
  const unsigned queues = (*device)->info().nr_hw_queues;

  constexpr size_t kChunk = size_t{16} * 1024;
  std::atomic<int> bad{0};
  auto writer = [&](unsigned cpu) {
    pin_to_cpu(cpu);
    UniqueFd fd = open_direct((*device)->block_path());
    if (!fd) {
      ++bad;
      return;
    }
    Buffer b(kChunk);
    const uint64_t base = uint64_t{cpu} * (kVolumeBytes / 2);
    for (uint64_t i = 0; i < 256; ++i) {
      fill(b, base + i * kChunk, cpu);
      if (::pwrite(fd.get(), b.data, kChunk, static_cast<off_t>(base + i * kChunk)) !=
          static_cast<ssize_t>(kChunk)) {
        ++bad;
      }
    }
    ::fsync(fd.get());
    for (uint64_t i = 0; i < 256; ++i) {
      std::memset(b.data, 0, kChunk);
      if (::pread(fd.get(), b.data, kChunk, static_cast<off_t>(base + i * kChunk)) !=
              static_cast<ssize_t>(kChunk) ||
          !matches(b, base + i * kChunk, cpu)) {
        ++bad;
      }
    }
  };
  std::thread a(writer, 0);
  std::thread b(writer, 1);
  a.join();
  b.join();
  EXPECT_EQ(bad.load(), 0);

  const DeviceStats stats = (*device)->stats();
  EXPECT_EQ(stats.writes, volume.writes.load());
  EXPECT_EQ(stats.reads, volume.reads.load());
  EXPECT_EQ(stats.bytes_written, uint64_t{2} * 256U * kChunk);
  EXPECT_GE(stats.flushes, 2U);
  EXPECT_EQ(stats.errors, 0U);
  if (queues == 2 && std::thread::hardware_concurrency() >= 2) {
    auto per_queue = (*device)->queue_stats();
    ASSERT_EQ(per_queue.size(), 2U);
    EXPECT_GT(per_queue[0].writes, 0U);
    EXPECT_GT(per_queue[1].writes, 0U);
  }
  const std::string path = (*device)->block_path();
  ASSERT_TRUE((*device)->stop_and_delete().ok());
  EXPECT_NE(::access(path.c_str(), F_OK), 0) << path << " still exists";
}

TEST(UblkDeviceVm, DetachedDevicePausesIoUntilRecovered) {
  UBLKVOL_REQUIRE_UBLK();
  AsyncVolume volume(1);
  DeviceOptions options;
  options.queue_depth = 16;
  options.recoverable = true;
  auto device = UblkDevice::create(volume, options);
  ASSERT_TRUE(device.ok()) << device.error().to_string();
  const uint32_t id = (*device)->id();
  const std::string path = (*device)->block_path();
  UniqueFd fd = open_direct(path);
  ASSERT_TRUE(fd.valid());
  Buffer b(size_t{64} * 1024);
  fill(b, 1 << 20, 7);
  ASSERT_EQ(::pwrite(fd.get(), b.data, b.size, 1 << 20), static_cast<ssize_t>(b.size));

  ASSERT_TRUE((*device)->detach().ok());
  auto control = ControlDevice::open();
  ASSERT_TRUE(control.ok());
  auto info = control->get_device_info(id);
  ASSERT_TRUE(info.ok());
  // The queue ends its ring; the driver quiesces the device right away.
  for (int i = 0; i < 500 && info->state != uapi::kDevStateQuiesced; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    info = control->get_device_info(id);
    ASSERT_TRUE(info.ok());
  }
  EXPECT_EQ(info->state, uapi::kDevStateQuiesced) << device_state_name(info->state);

  // A read issued while no server is attached waits...
  auto pending = std::async(std::launch::async, [&] {
    Buffer r(size_t{64} * 1024);
    const ssize_t n = ::pread(fd.get(), r.data, r.size, 1 << 20);
    return n == static_cast<ssize_t>(r.size) && matches(r, 1 << 20, 7);
  });
  EXPECT_EQ(pending.wait_for(std::chrono::milliseconds(300)), std::future_status::timeout)
      << "a read completed without a server";

  // ...and completes once a new server (here: this process again) attaches.
  auto recovered = UblkDevice::recover(volume, id, options);
  ASSERT_TRUE(recovered.ok()) << recovered.error().to_string();
  EXPECT_TRUE(pending.get());
  EXPECT_EQ((*recovered)->info().state, uapi::kDevStateLive);
  fd.reset();
  ASSERT_TRUE((*recovered)->stop_and_delete().ok());
}

TEST(UblkDeviceVm, StopUnderIoReturnsAndFailsTheIo) {
  UBLKVOL_REQUIRE_UBLK();
  AsyncVolume volume(1);
  DeviceOptions options;
  options.queue_depth = 32;
  auto device = UblkDevice::create(volume, options);
  ASSERT_TRUE(device.ok()) << device.error().to_string();
  std::atomic<bool> failed{false};
  std::thread io([&, path = (*device)->block_path()] {
    UniqueFd fd = open_direct(path);
    Buffer b(8192);
    fill(b, 0, 1);
    for (uint64_t i = 0; fd.valid() && i < 10'000'000; ++i) {
      if (::pwrite(fd.get(), b.data, b.size, static_cast<off_t>((i * 8192) % kVolumeBytes)) < 0) {
        failed = true;
        return;
      }
    }
  });
  while (volume.writes.load() < 200) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  const auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE((*device)->stop_and_delete().ok());
  io.join();
  EXPECT_TRUE(failed.load()) << "writes kept succeeding after the device was deleted";
  EXPECT_TRUE((*device)->finished());
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(30));
}

TEST(UblkDeviceVm, RecoverRefusesDevicesItMustNotTakeOver) {
  UBLKVOL_REQUIRE_UBLK();
  AsyncVolume volume(1);
  DeviceOptions options;
  options.queue_depth = 8;
  auto plain = UblkDevice::create(volume, options);
  ASSERT_TRUE(plain.ok()) << plain.error().to_string();
  auto r = UblkDevice::recover(volume, (*plain)->id(), options);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("created without UBLK_F_USER_RECOVERY"), std::string::npos)
      << r.error().message();
  ASSERT_TRUE((*plain)->stop_and_delete().ok());

  options.recoverable = true;
  auto live = UblkDevice::create(volume, options);
  ASSERT_TRUE(live.ok()) << live.error().to_string();
  auto busy = UblkDevice::recover(volume, (*live)->id(), options);
  ASSERT_FALSE(busy.ok());
  EXPECT_NE(busy.error().message().find("is live and served by pid"), std::string::npos)
      << busy.error().message();
  ASSERT_TRUE((*live)->stop_and_delete().ok());
}

}  // namespace
}  // namespace ublkvol::ublk
