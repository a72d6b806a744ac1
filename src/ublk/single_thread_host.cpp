#include "ublkvol/ublk/single_thread_host.h"

#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <spdlog/spdlog.h>
#include <system_error>

#ifndef PR_SET_IO_FLUSHER
#define PR_SET_IO_FLUSHER 57
#endif

namespace ublkvol::ublk {

namespace {
void signal_eventfd(int fd) {
  const uint64_t one = 1;
  // An 8-byte eventfd write cannot be short; it fails only if the counter
  // would overflow, and then the fd is readable anyway.
  [[maybe_unused]] const ssize_t n = ::write(fd, &one, sizeof(one));
}
}  // namespace

Result<std::unique_ptr<SingleThreadQueueHost>> SingleThreadQueueHost::start(bool io_flusher) {
  UniqueFd task_fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!task_fd) {
    return errno_error("queue host: cannot create its eventfd");
  }
  auto host = std::unique_ptr<SingleThreadQueueHost>(new SingleThreadQueueHost(std::move(task_fd)));
  SingleThreadQueueHost* raw = host.get();
  host->thread_ = std::thread([raw, io_flusher] { raw->loop(io_flusher); });
  return host;
}

SingleThreadQueueHost::SingleThreadQueueHost(UniqueFd task_fd) : task_fd_(std::move(task_fd)) {}

SingleThreadQueueHost::~SingleThreadQueueHost() {
  stopping_.store(true);
  signal_eventfd(task_fd_.get());
  if (thread_.joinable()) {
    thread_.join();
  }
  // The thread is gone: commands its rings still had with the driver were
  // cancelled when it exited, so the rings may close now (queue_host.h).
  pollers_.clear();
  kept_.clear();
}

Status SingleThreadQueueHost::run_on(const QueueRef& ref, std::function<void()> task) {
  if (stopping_.load()) {
    return Error(ESHUTDOWN, "queue host is stopping: cannot run ublk device " +
                                std::to_string(ref.dev_id) + " queue " + std::to_string(ref.queue));
  }
  {
    std::lock_guard<std::mutex> lock(tasks_mutex_);
    tasks_.push_back(std::move(task));
  }
  tasks_posted_.store(true);
  signal_eventfd(task_fd_.get());
  return ok_status();
}

void SingleThreadQueueHost::add_poller(const QueueRef& /*ref*/,
                                       std::shared_ptr<reactor::Poller> poller) {
  pollers_.push_back(std::move(poller));
  poller_count_.store(static_cast<unsigned>(pollers_.size()));
  wait_fds_stale_ = true;
}

void SingleThreadQueueHost::remove_poller(const QueueRef& /*ref*/, reactor::Poller& poller) {
  // Possibly from inside poller.poll(): dropped after the loop's pass.
  removed_.push_back(&poller);
}

void SingleThreadQueueHost::keep_until_exit(const QueueRef& /*ref*/,
                                            std::shared_ptr<void> resources) {
  kept_.push_back(std::move(resources));
}

void SingleThreadQueueHost::run_tasks() {
  std::vector<std::function<void()>> tasks;
  {
    std::lock_guard<std::mutex> lock(tasks_mutex_);
    tasks.swap(tasks_);
    tasks_posted_.store(false);
  }
  for (auto& task : tasks) {
    task();
  }
}

void SingleThreadQueueHost::sleep() {
  if (wait_fds_stale_) {
    wait_fds_.clear();
    wait_fds_.push_back({task_fd_.get(), POLLIN, 0});
    for (const auto& p : pollers_) {
      if (p->wait_fd() >= 0) {
        wait_fds_.push_back({p->wait_fd(), POLLIN, 0});
      }
    }
    wait_fds_stale_ = false;
  }
  const int n = ::poll(wait_fds_.data(), wait_fds_.size(), -1);
  if (n < 0) {
    // EINTR: io_uring task work (or a signal) interrupted the sleep; the
    // next pass polls. Anything else cannot happen with valid fds.
    if (errno != EINTR) {
      spdlog::error("queue host: poll failed: {}",
                    std::error_code(errno, std::generic_category()).message());
    }
    return;
  }
  for (pollfd& p : wait_fds_) {
    if ((p.revents & POLLIN) != 0) {
      uint64_t value = 0;
      [[maybe_unused]] const ssize_t r = ::read(p.fd, &value, sizeof(value));
    }
  }
}

void SingleThreadQueueHost::loop(bool io_flusher) {
  tid_.store(::gettid());
  if (io_flusher && ::prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) != 0) {
    spdlog::warn(
        "queue host: PR_SET_IO_FLUSHER refused ({}): memory reclaim may wait on this thread; "
        "grant CAP_SYS_RESOURCE",
        std::error_code(errno, std::generic_category()).message());
  }
  while (!stopping_.load(std::memory_order_relaxed)) {
    if (tasks_posted_.load(std::memory_order_acquire)) {
      run_tasks();
    }
    unsigned work = 0;
    bool busy = false;
    // By index: a task or poll() may add pollers (they are polled next pass).
    for (size_t i = 0; i < pollers_.size(); ++i) {
      reactor::Poller& p = *pollers_[i];
      work += p.poll();
      busy = busy || p.busy();
    }
    if (!removed_.empty()) {
      std::erase_if(pollers_, [this](const std::shared_ptr<reactor::Poller>& p) {
        return std::find(removed_.begin(), removed_.end(), p.get()) != removed_.end();
      });
      removed_.clear();
      poller_count_.store(static_cast<unsigned>(pollers_.size()));
      wait_fds_stale_ = true;
      continue;
    }
    if (work > 0 || busy || tasks_posted_.load(std::memory_order_acquire)) {
      continue;
    }
    sleep();
  }
}

}  // namespace ublkvol::ublk
