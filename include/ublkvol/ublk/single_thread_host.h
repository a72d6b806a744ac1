// SingleThreadQueueHost: the simplest QueueHost (queue_host.h) - one thread
// running every queue given to it, of any number of devices, in one loop:
//
//     run the queued tasks (set-ups) if any were posted
//     work = sum of poll() over the pollers
//     if work > 0 or a poller is busy(): again
//     poll(2) on the pollers' wait_fd()s and the task eventfd; drain them
//
// Used by `ublkvol-serve --queue-loop external` and the tests of external
// mode; the daemon's reactors are the real hosts. Not pinned; the thread is
// marked PR_SET_IO_FLUSHER when asked (a warning if refused).
#pragma once

#include <poll.h>
#include <sys/types.h>

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "ublkvol/common/result.h"
#include "ublkvol/common/unique_fd.h"
#include "ublkvol/ublk/queue_host.h"

namespace ublkvol::ublk {

class SingleThreadQueueHost final : public QueueHost {
 public:
  static Result<std::unique_ptr<SingleThreadQueueHost>> start(bool io_flusher);
  // Exits the thread, then drops pollers and kept resources (queue_host.h).
  ~SingleThreadQueueHost() override;

  Status run_on(const QueueRef& ref, std::function<void()> task) override;
  void add_poller(const QueueRef& ref, std::shared_ptr<reactor::Poller> poller) override;
  void remove_poller(const QueueRef& ref, reactor::Poller& poller) override;
  void keep_until_exit(const QueueRef& ref, std::shared_ptr<void> resources) override;

  // The host thread's id (gettid), for tests and logs.
  [[nodiscard]] pid_t thread_id() const { return tid_.load(); }
  // Pollers attached now (any thread; approximate while it changes).
  [[nodiscard]] unsigned pollers() const { return poller_count_.load(); }

 private:
  explicit SingleThreadQueueHost(UniqueFd task_fd);
  void loop(bool io_flusher);
  void run_tasks();
  void sleep();

  UniqueFd task_fd_;  // eventfd: tasks were posted, or stop
  std::atomic<bool> tasks_posted_{false};
  std::atomic<bool> stopping_{false};
  std::mutex tasks_mutex_;  // control path only: run_on vs the loop taking the tasks
  std::vector<std::function<void()>> tasks_;

  // Host thread only.
  std::vector<std::shared_ptr<reactor::Poller>> pollers_;
  std::vector<reactor::Poller*> removed_;
  // What sleep() waits on: the task eventfd, then every poller's wait_fd();
  // rebuilt only when the pollers change (no allocation per iteration).
  std::vector<pollfd> wait_fds_;
  bool wait_fds_stale_ = true;
  std::vector<std::shared_ptr<void>> kept_;
  std::atomic<unsigned> poller_count_{0};
  std::atomic<pid_t> tid_{0};
  std::thread thread_;
};

}  // namespace ublkvol::ublk
