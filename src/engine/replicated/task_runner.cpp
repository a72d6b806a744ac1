// thread_task_runner() (task_runner.h): one std::thread per background
// activity, poll(2) for the control path's pauses.
#include "ublkvol/engine/task_runner.h"

#include <poll.h>
#include <pthread.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <thread>
#include <utility>

namespace ublkvol::engine {

namespace {

class ThreadTask final : public BackgroundTask {
 public:
  explicit ThreadTask(std::function<void()> body) : thread_(std::move(body)) {}
  ~ThreadTask() override {
    if (thread_.joinable()) {
      thread_.join();
    }
  }
  void join() override {
    if (thread_.joinable()) {
      thread_.join();
    }
  }

 private:
  std::thread thread_;
};

class TickerTask final : public BackgroundTask {
 public:
  TickerTask(std::string name, int wake_fd, std::chrono::milliseconds period,
             std::function<void()> tick)
      : wake_fd_(wake_fd) {
    thread_ = std::thread([this, name = std::move(name), period, tick = std::move(tick)] {
      pthread_setname_np(pthread_self(), name.substr(0, 15).c_str());
      while (!stop_.load(std::memory_order_acquire)) {
        pollfd p{wake_fd_, POLLIN, 0};
        ::poll(&p, 1, static_cast<int>(period.count()));
        uint64_t value = 0;
        ssize_t n = ::read(wake_fd_, &value, sizeof(value));
        (void)n;
        if (stop_.load(std::memory_order_acquire)) {
          break;
        }
        tick();
      }
    });
  }
  ~TickerTask() override { TickerTask::join(); }
  void join() override {
    if (!thread_.joinable()) {
      return;
    }
    stop_.store(true, std::memory_order_seq_cst);
    uint64_t one = 1;
    ssize_t n = ::write(wake_fd_, &one, sizeof(one));
    (void)n;
    thread_.join();
  }

 private:
  int wake_fd_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

class ThreadTaskRunner final : public TaskRunner {
 public:
  std::unique_ptr<BackgroundTask> start(std::string name, std::function<void()> body) override {
    return std::make_unique<ThreadTask>([name = std::move(name), body = std::move(body)] {
      pthread_setname_np(pthread_self(), name.substr(0, 15).c_str());
      body();
    });
  }
  std::unique_ptr<BackgroundTask> start_ticker(std::string name, int wake_fd,
                                               std::chrono::milliseconds period,
                                               std::function<void()> tick) override {
    return std::make_unique<TickerTask>(std::move(name), wake_fd, period, std::move(tick));
  }
  void wait(int fd, std::chrono::milliseconds timeout) override {
    if (fd < 0 && timeout.count() == 0) {
      std::this_thread::yield();
      return;
    }
    pollfd p{fd, POLLIN, 0};
    ::poll(&p, fd >= 0 ? 1 : 0, static_cast<int>(timeout.count()));
  }
};

}  // namespace

TaskRunner& thread_task_runner() {
  // Stateless: one shared instance is no shared mutable state.
  static ThreadTaskRunner runner;
  return runner;
}

}  // namespace ublkvol::engine
