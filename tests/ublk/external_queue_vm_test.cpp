// Queue loop 'external' (DeviceOptions::queue_loop, queue_host.h) against the
// real driver (VM; skipped on hosts without ublk_drv):
//   - two devices x two queues all run on ONE thread - the host's: every
//     set-up runs there, the device creates no thread, data written through
//     both devices from two CPUs reads back, both queues of each serve;
//   - a queue that completes on another thread (wake_fd) works the same;
//   - detach leaves the rings with the host until its thread exits (Linux
//     6.12 rule); the device is then quiesced and a new host re-attaches it
//     with recover(): a read that waited meanwhile completes with the data.
#include <fcntl.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <future>
#include <gtest/gtest.h>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "ublkvol/common/unique_fd.h"
#include "ublkvol/engine/volume.h"
#include "ublkvol/ublk/control.h"
#include "ublkvol/ublk/device.h"
#include "ublkvol/ublk/queue_host.h"
#include "ublkvol/ublk/single_thread_host.h"

#include "support/ublk_test_env.h"

namespace ublkvol::ublk {
namespace {

constexpr uint64_t kVolumeBytes = 32ULL << 20U;

// The test's QueueHost: the in-tree single-thread host, recording on which
// thread each queue's set-up ran and how many pollers it was given.
class RecordingHost final : public QueueHost {
 public:
  explicit RecordingHost(std::unique_ptr<SingleThreadQueueHost> inner) : inner_(std::move(inner)) {}

  Status run_on(const QueueRef& ref, std::function<void()> task) override {
    return inner_->run_on(ref, [this, task = std::move(task)] {
      {
        std::lock_guard<std::mutex> lock(mutex_);
        setup_threads_.insert(::gettid());
        ++tasks_run_;
      }
      task();
    });
  }
  void add_poller(const QueueRef& ref, std::shared_ptr<reactor::Poller> poller) override {
    ++added_;
    inner_->add_poller(ref, std::move(poller));
  }
  void remove_poller(const QueueRef& ref, reactor::Poller& poller) override {
    inner_->remove_poller(ref, poller);
  }
  void keep_until_exit(const QueueRef& ref, std::shared_ptr<void> resources) override {
    ++kept_;
    inner_->keep_until_exit(ref, std::move(resources));
  }

  std::set<pid_t> setup_threads() {
    std::lock_guard<std::mutex> lock(mutex_);
    return setup_threads_;
  }
  [[nodiscard]] pid_t host_thread() const { return inner_->thread_id(); }
  std::atomic<unsigned> added_{0};
  std::atomic<unsigned> kept_{0};

 private:
  std::unique_ptr<SingleThreadQueueHost> inner_;
  std::mutex mutex_;
  std::set<pid_t> setup_threads_;
  unsigned tasks_run_ = 0;
};

std::unique_ptr<RecordingHost> make_host() {
  auto inner = SingleThreadQueueHost::start(/*io_flusher=*/false);
  EXPECT_TRUE(inner.ok()) << inner.error().to_string();
  return std::make_unique<RecordingHost>(std::move(inner.value()));
}

// Threads of this process, io_uring's own workers (iou-wrk-*: the control
// commands run there) left out.
unsigned thread_count() {
  unsigned n = 0;
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
    std::ifstream comm(task.path() / "comm");
    std::string name;
    std::getline(comm, name);
    if (name.rfind("iou-", 0) != 0) {
      ++n;
    }
  }
  return n;
}

// Progress on stderr (unbuffered): a hang in the VM shows where it is.
void step(const char* what) { (void)std::fprintf(stderr, "external_queue_vm_test: %s\n", what); }

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

// Writes 128 x 16 KiB from `cpu` into its half of `path`, fsyncs, reads back.
// Returns the number of bad transfers.
int write_and_verify(const std::string& path, unsigned cpu, unsigned seed) {
  pin_to_cpu(cpu);
  UniqueFd fd = open_direct(path);
  if (!fd) {
    return 1;
  }
  constexpr size_t kChunk = size_t{16} * 1024;
  Buffer b(kChunk);
  const uint64_t base = uint64_t{cpu % 2} * (kVolumeBytes / 2);
  int bad = 0;
  for (uint64_t i = 0; i < 128; ++i) {
    fill(b, base + i * kChunk, seed);
    if (::pwrite(fd.get(), b.data, kChunk, static_cast<off_t>(base + i * kChunk)) !=
        static_cast<ssize_t>(kChunk)) {
      ++bad;
    }
  }
  if (::fsync(fd.get()) != 0) {
    ++bad;
  }
  for (uint64_t i = 0; i < 128; ++i) {
    std::memset(b.data, 0, kChunk);
    if (::pread(fd.get(), b.data, kChunk, static_cast<off_t>(base + i * kChunk)) !=
            static_cast<ssize_t>(kChunk) ||
        !matches(b, base + i * kChunk, seed)) {
      ++bad;
    }
  }
  return bad;
}

DeviceOptions external_options(QueueHost& host, unsigned queues) {
  DeviceOptions options;
  options.queues = queues;
  options.queue_depth = 32;
  options.queue_loop = QueueLoop::kExternal;
  options.queue_host = &host;
  return options;
}

TEST(UblkExternalQueueVm, TwoDevicesTwoQueuesRunOnOneThread) {
  UBLKVOL_REQUIRE_UBLK();
  auto host = make_host();
  ASSERT_NE(host, nullptr);
  engine::SimpleVolumeOptions vo;
  vo.size_bytes = kVolumeBytes;
  vo.queues = 2;
  vo.name = "memory-a";
  auto va = engine::make_memory_volume(vo);
  vo.name = "memory-b";
  auto vb = engine::make_memory_volume(vo);
  ASSERT_TRUE(va.ok() && vb.ok());

  const unsigned threads_before = thread_count();
  auto a = UblkDevice::create(**va, external_options(*host, 2));
  ASSERT_TRUE(a.ok()) << a.error().to_string();
  auto b = UblkDevice::create(**vb, external_options(*host, 2));
  ASSERT_TRUE(b.ok()) << b.error().to_string();
  EXPECT_EQ(thread_count(), threads_before) << "external mode must not create queue threads";

  const unsigned queues = (*a)->info().nr_hw_queues + (*b)->info().nr_hw_queues;
  EXPECT_EQ(host->added_.load(), queues);
  const std::set<pid_t> setup_threads = host->setup_threads();
  ASSERT_EQ(setup_threads.size(), 1U);
  EXPECT_EQ(*setup_threads.begin(), host->host_thread());

  std::atomic<int> bad{0};
  std::vector<std::thread> writers;
  for (unsigned cpu = 0; cpu < 2; ++cpu) {
    writers.emplace_back([&, cpu] { bad += write_and_verify((*a)->block_path(), cpu, 1 + cpu); });
    writers.emplace_back([&, cpu] { bad += write_and_verify((*b)->block_path(), cpu, 5 + cpu); });
  }
  for (auto& t : writers) {
    t.join();
  }
  EXPECT_EQ(bad.load(), 0);

  for (auto* dev : {a->get(), b->get()}) {
    const DeviceStats stats = dev->stats();
    EXPECT_EQ(stats.bytes_written, uint64_t{2} * 128U * 16384U);
    EXPECT_EQ(stats.errors, 0U);
    EXPECT_FALSE(dev->finished());
    if (dev->info().nr_hw_queues == 2 && std::thread::hardware_concurrency() >= 2) {
      auto per_queue = dev->queue_stats();
      ASSERT_EQ(per_queue.size(), 2U);
      EXPECT_GT(per_queue[0].writes, 0U);
      EXPECT_GT(per_queue[1].writes, 0U);
    }
  }
  const std::string path_a = (*a)->block_path();
  ASSERT_TRUE((*a)->stop_and_delete().ok());
  EXPECT_TRUE((*a)->finished());
  EXPECT_TRUE((*a)->queue_status().ok()) << (*a)->queue_status().error().to_string();
  EXPECT_NE(::access(path_a.c_str(), F_OK), 0) << path_a << " still exists";
  // The other device, on the same thread, still serves.
  EXPECT_EQ(write_and_verify((*b)->block_path(), 0, 9), 0);
  ASSERT_TRUE((*b)->stop_and_delete().ok());
  // Stopped queues had every tag aborted: nothing for the host to keep.
  EXPECT_EQ(host->kept_.load(), 0U);
}

// A volume that completes on a worker thread and signals wake_fd(): the
// replicated engine's path (test code: locks are fine here).
class AsyncVolume final : public engine::Volume {
 public:
  AsyncVolume() : data_(kVolumeBytes) {
    info_.name = "async";
    info_.size_bytes = kVolumeBytes;
  }
  [[nodiscard]] const engine::VolumeInfo& info() const override { return info_; }
  Result<std::unique_ptr<engine::VolumeQueue>> open_queue(unsigned /*index*/) override {
    return std::unique_ptr<engine::VolumeQueue>(std::make_unique<Queue>(*this));
  }

 private:
  class Queue final : public engine::VolumeQueue {
   public:
    explicit Queue(AsyncVolume& v) : volume_(v), wake_(::eventfd(0, EFD_CLOEXEC)) {
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
    void submit(engine::VolumeIo& io) override {
      staged_.push_back(&io);
      ++in_flight_;
    }
    void kick() override {
      if (staged_.empty()) {
        return;
      }
      {
        std::lock_guard<std::mutex> lock(mutex_);
        inbox_.insert(inbox_.end(), staged_.begin(), staged_.end());
      }
      staged_.clear();
      cv_.notify_one();
    }
    unsigned reap() override {
      std::deque<engine::VolumeIo*> done;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        done.swap(done_);
      }
      for (engine::VolumeIo* io : done) {
        --in_flight_;
        io->on_complete(*io, 0);
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
        for (engine::VolumeIo* io : inbox_) {
          volume_.execute(*io);
          done_.push_back(io);
        }
        inbox_.clear();
        const uint64_t one = 1;
        [[maybe_unused]] ssize_t n = ::write(wake_.get(), &one, sizeof(one));
      }
    }
    AsyncVolume& volume_;
    UniqueFd wake_;
    std::vector<engine::VolumeIo*> staged_;
    unsigned in_flight_ = 0;
    std::mutex mutex_;
    std::condition_variable cv_;
    std::deque<engine::VolumeIo*> inbox_;
    std::deque<engine::VolumeIo*> done_;
    bool stopping_ = false;
    std::thread worker_;
  };

  void execute(const engine::VolumeIo& io) {
    std::lock_guard<std::mutex> lock(data_mutex_);
    if (io.op == engine::VolumeOp::kRead) {
      std::memcpy(io.buffer, data_.data() + io.offset, io.length);
    } else if (io.op == engine::VolumeOp::kWrite) {
      std::memcpy(data_.data() + io.offset, io.buffer, io.length);
    }
  }

  engine::VolumeInfo info_;
  std::mutex data_mutex_;
  std::vector<std::byte> data_;
};

TEST(UblkExternalQueueVm, DetachKeepsRingsUntilTheHostExitsThenRecoverReattaches) {
  UBLKVOL_REQUIRE_UBLK();
  AsyncVolume volume;
  auto host = make_host();
  ASSERT_NE(host, nullptr);
  DeviceOptions options = external_options(*host, 1);
  options.queue_depth = 16;
  options.recoverable = true;
  auto device = UblkDevice::create(volume, options);
  ASSERT_TRUE(device.ok()) << device.error().to_string();
  const uint32_t id = (*device)->id();
  auto control = ControlDevice::open();
  ASSERT_TRUE(control.ok());
  // Declared before the cleanup, destroyed after it.
  std::future<bool> pending;
  // Whatever fails below, the device goes (a read waiting on it then fails
  // instead of hanging the test).
  struct Cleanup {
    ControlDevice& control;
    uint32_t id;
    ~Cleanup() {
      if (::testing::Test::HasFailure()) {
        (void)control.delete_device(id, DeleteMode::kAsync);
      }
    }
  } cleanup{*control, id};
  UniqueFd fd = open_direct((*device)->block_path());
  ASSERT_TRUE(fd.valid());
  Buffer w(size_t{64} * 1024);
  fill(w, 1 << 20, 3);
  step("write");
  ASSERT_EQ(::pwrite(fd.get(), w.data, w.size, 1 << 20), static_cast<ssize_t>(w.size));

  // One request at a time, each completed by the worker's eventfd write: a
  // queue whose wake-ups after the first were lost (DEFER_TASKRUN on 6.12,
  // queue.cpp) hangs here.
  step("32 sequential writes and reads, each woken by the volume's eventfd");
  Buffer one(4096);
  for (unsigned i = 0; i < 32; ++i) {
    const off_t offset = (off_t{4} << 20) + off_t{4096} * i;
    fill(one, static_cast<uint64_t>(offset), 11);
    ASSERT_EQ(::pwrite(fd.get(), one.data, one.size, offset), static_cast<ssize_t>(one.size));
    std::memset(one.data, 0, one.size);
    ASSERT_EQ(::pread(fd.get(), one.data, one.size, offset), static_cast<ssize_t>(one.size));
    ASSERT_TRUE(matches(one, static_cast<uint64_t>(offset), 11)) << "block " << i;
  }

  step("detach");
  ASSERT_TRUE((*device)->detach().ok());
  EXPECT_TRUE((*device)->finished());
  // The queue's FETCH_REQs are still with the driver: its ring stays with
  // the host until the host's thread exits.
  EXPECT_EQ(host->kept_.load(), 1U);
  step("host exit");
  host.reset();  // thread exits (the kernel cancels the commands), rings close

  step("wait for quiesced");
  auto info = control->get_device_info(id);
  ASSERT_TRUE(info.ok());
  // The driver quiesces the device once the cancelled commands are in (the
  // driver offers no event for its state: bounded re-reads).
  for (int i = 0; i < 500 && info->state != uapi::kDevStateQuiesced; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    info = control->get_device_info(id);
    ASSERT_TRUE(info.ok());
  }
  EXPECT_EQ(info->state, uapi::kDevStateQuiesced) << device_state_name(info->state);
  // A read issued while no server is attached waits...
  pending = std::async(std::launch::async, [&] {
    Buffer r(size_t{64} * 1024);
    const ssize_t n = ::pread(fd.get(), r.data, r.size, 1 << 20);
    return n == static_cast<ssize_t>(r.size) && matches(r, 1 << 20, 3);
  });
  EXPECT_EQ(pending.wait_for(std::chrono::milliseconds(300)), std::future_status::timeout)
      << "a read completed without a server";

  // ...and completes once a new host runs the recovered queue (recover()
  // retries START_USER_RECOVERY until the driver has quiesced the device).
  auto host2 = make_host();
  ASSERT_NE(host2, nullptr);
  DeviceOptions options2 = external_options(*host2, 1);
  options2.recoverable = true;
  step("recover");
  auto recovered = UblkDevice::recover(volume, id, options2);
  ASSERT_TRUE(recovered.ok()) << recovered.error().to_string();
  EXPECT_TRUE(pending.get());
  EXPECT_EQ((*recovered)->info().state, uapi::kDevStateLive);
  const std::set<pid_t> setup_threads = host2->setup_threads();
  ASSERT_EQ(setup_threads.size(), 1U);
  EXPECT_EQ(*setup_threads.begin(), host2->host_thread());
  fd.reset();
  step("stop");
  ASSERT_TRUE((*recovered)->stop_and_delete().ok());
  EXPECT_EQ(host2->kept_.load(), 0U);
}

}  // namespace
}  // namespace ublkvol::ublk
