// TaskRunner: how the replicated engine runs its background activities
// (monitor, rebuild worker, periodic dirty-bitmap clearing, background
// verify) and how its control path pauses while it waits for the data path
// (a barrier to drain, a fence, a generation bump).
//
// The default, thread_task_runner(), is what the engine always did: one
// std::thread per activity and poll(2) for the pauses. The engine's simulator
// (tests/engine/sim) supplies its own: it runs the activities and every
// pause as steps of its one OS thread, in an order a seed decides. So every
// wait in the engine that needs another party to make progress goes through
// wait() here, never straight to poll(2) or a sleep.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>

namespace ublkvol::engine {

// A started background activity.
class BackgroundTask {
 public:
  virtual ~BackgroundTask() = default;
  BackgroundTask() = default;
  BackgroundTask(const BackgroundTask&) = delete;
  BackgroundTask& operator=(const BackgroundTask&) = delete;
  // Blocks until the activity returned. A ticker (start_ticker) is told to
  // stop first. Call once.
  virtual void join() = 0;
};

class TaskRunner {
 public:
  virtual ~TaskRunner() = default;

  // Runs `body` in the background until it returns (a thread named `name`).
  virtual std::unique_ptr<BackgroundTask> start(std::string name, std::function<void()> body) = 0;
  // Runs `tick` whenever `wake_fd` (an eventfd, drained before each tick)
  // becomes readable and at least every `period`, until join().
  virtual std::unique_ptr<BackgroundTask> start_ticker(std::string name, int wake_fd,
                                                       std::chrono::milliseconds period,
                                                       std::function<void()> tick) = 0;
  // A control-path pause: returns once `fd` (if >= 0) is readable or
  // `timeout` passed, whichever is first (a zero timeout with no fd just
  // lets others run). Callers re-check their condition afterwards.
  virtual void wait(int fd, std::chrono::milliseconds timeout) = 0;
};

// Threads and poll(2).
TaskRunner& thread_task_runner();

}  // namespace ublkvol::engine
