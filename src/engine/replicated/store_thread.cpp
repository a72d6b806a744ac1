// StoreThread (store_thread.h).
#include "ublkvol/engine/store_thread.h"

#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "ublkvol/common/unique_fd.h"

#include "store_channel.h"
#include "wake_fd.h"

namespace ublkvol::engine {

namespace {
using detail::drain_fd;
using detail::signal_fd;
// Spin-wait hint: lets a hyperthread sibling run and saves power.
inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}
}  // namespace

struct StoreThread::Impl {
  StoreThreadOptions options;
  UniqueFd doorbell;
  std::thread thread;
  std::atomic<bool> sleeping{false};
  std::atomic<bool> stop{false};
  std::atomic<bool> killed{false};
  std::atomic<bool> exited{false};

  // Control tasks (control path only; the data path never takes this lock).
  struct Task {
    const std::function<Status()>* fn = nullptr;
    Status result;
    bool done = false;
  };
  std::mutex task_mutex;
  std::condition_variable task_cv;
  std::deque<Task*> tasks;
  std::atomic<bool> tasks_pending{false};

  // Owned by the thread.
  std::vector<detail::StoreChannel*> channels;
  std::vector<ReplicaStore*> stores;

  static void on_complete(ReplicaIo& io, int result) {
    io.result = result;
    auto* channel = static_cast<detail::StoreChannel*>(io.user_data);
    bool was_empty = false;
    bool ok = channel->completions.push(&io, was_empty);
    // Rings hold every request a queue can have in flight, so this cannot fail.
    (void)ok;
    if (was_empty) {
      channel->notify = true;
    }
  }

  void flush_notifications() {
    for (detail::StoreChannel* ch : channels) {
      if (ch->notify) {
        ch->notify = false;
        signal_fd(ch->queue_wake_fd);
      }
    }
  }

  void run_tasks() {
    std::deque<Task*> batch;
    {
      std::lock_guard lock(task_mutex);
      batch.swap(tasks);
      tasks_pending.store(false, std::memory_order_relaxed);
    }
    for (Task* task : batch) {
      Status st = (*task->fn)();
      std::lock_guard lock(task_mutex);
      task->result = std::move(st);
      task->done = true;
    }
    if (!batch.empty()) {
      task_cv.notify_all();
    }
  }

  bool rings_empty() const {
    return std::all_of(channels.begin(), channels.end(),
                       [](detail::StoreChannel* ch) { return ch->requests.empty_for_consumer(); });
  }

  void loop() {
    pthread_setname_np(pthread_self(), options.name.substr(0, 15).c_str());
    std::vector<pollfd> fds;
    const bool spins = options.spin_before_sleep.count() > 0;
    auto last_work = std::chrono::steady_clock::now();
    while (!stop.load(std::memory_order_acquire)) {
      if (killed.load(std::memory_order_acquire)) {
        break;
      }
      unsigned work = 0;
      if (tasks_pending.load(std::memory_order_acquire)) {
        run_tasks();
        ++work;
      }
      for (detail::StoreChannel* ch : channels) {
        while (ReplicaIo* io = ch->requests.pop()) {
          ReplicaStore* store = ch->stores[io->replica];
          io->on_complete = &Impl::on_complete;
          io->user_data = ch;
          store->submit(*io);
          ++work;
        }
      }
      bool waiting_without_fd = false;
      for (ReplicaStore* store : stores) {
        if (store->in_flight() > 0) {
          store->kick();
          work += store->poll(false);
          // Requests the completions submitted (e.g. data writes released
          // by a bitmap commit) must reach the device before we sleep.
          store->kick();
          if (store->in_flight() > 0 && store->completion_fd() < 0) {
            waiting_without_fd = true;
          }
        }
      }
      flush_notifications();
      if (work > 0) {
        if (spins) {
          last_work = std::chrono::steady_clock::now();
        }
        continue;
      }
      if (spins && std::chrono::steady_clock::now() - last_work < options.spin_before_sleep) {
        cpu_relax();
        continue;
      }
      // Idle: announce sleep, re-check, then block.
      sleeping.store(true, std::memory_order_seq_cst);
      if (rings_empty() && !tasks_pending.load(std::memory_order_seq_cst) &&
          !stop.load(std::memory_order_seq_cst) && !killed.load(std::memory_order_seq_cst)) {
        fds.clear();
        fds.push_back({doorbell.get(), POLLIN, 0});
        for (ReplicaStore* store : stores) {
          if (store->in_flight() > 0 && store->completion_fd() >= 0) {
            fds.push_back({store->completion_fd(), POLLIN, 0});
          }
        }
        int timeout_ms = -1;
        timespec ts{};
        if (waiting_without_fd) {
          auto us = options.idle_poll_interval.count();
          ts.tv_sec = us / 1000000;
          ts.tv_nsec = (us % 1000000) * 1000;
          timeout_ms = 0;
        }
        ::ppoll(fds.data(), fds.size(), timeout_ms < 0 ? nullptr : &ts, nullptr);
        if ((fds[0].revents & POLLIN) != 0) {
          drain_fd(doorbell.get());
        }
      }
      sleeping.store(false, std::memory_order_relaxed);
    }
    if (!killed.load()) {
      run_tasks();
    }
    exited.store(true, std::memory_order_release);
    // Fail waiting control calls.
    std::lock_guard lock(task_mutex);
    task_cv.notify_all();
  }
};

StoreThread::StoreThread(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

StoreThread::~StoreThread() { stop(); }

Result<std::unique_ptr<StoreThread>> StoreThread::start(const StoreThreadOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  int fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd < 0) {
    return errno_error("store thread " + options.name + ": eventfd");
  }
  impl->doorbell.reset(fd);
  auto thread = std::unique_ptr<StoreThread>(new StoreThread(std::move(impl)));
  Impl* raw = thread->impl_.get();
  raw->thread = std::thread([raw] { raw->loop(); });
  return thread;
}

std::string_view StoreThread::name() const { return impl_->options.name; }

Status StoreThread::call(const std::function<Status()>& fn) {
  Impl& s = *impl_;
  if (s.exited.load(std::memory_order_acquire)) {
    return Error(ESHUTDOWN, "store thread " + s.options.name + " is not running");
  }
  if (std::this_thread::get_id() == s.thread.get_id()) {
    return fn();
  }
  Impl::Task task;
  task.fn = &fn;
  std::unique_lock lock(s.task_mutex);
  s.tasks.push_back(&task);
  s.tasks_pending.store(true, std::memory_order_seq_cst);
  lock.unlock();
  signal_fd(s.doorbell.get());
  lock.lock();
  s.task_cv.wait(lock, [&] { return task.done || s.exited.load(std::memory_order_acquire); });
  if (!task.done) {
    auto it = std::find(s.tasks.begin(), s.tasks.end(), &task);
    if (it != s.tasks.end()) {
      s.tasks.erase(it);
    }
    return Error(ESHUTDOWN, "store thread " + s.options.name + " stopped");
  }
  return std::move(task.result);
}

Status StoreThread::attach(ReplicaStore& store) {
  return call([this, &store]() -> Status {
    // Asked once up front: some devices (FileDevice) set up their completion
    // eventfd on the first call, and completions of requests submitted
    // before that would not signal it.
    (void)store.completion_fd();
    impl_->stores.push_back(&store);
    return ok_status();
  });
}

Status StoreThread::detach(ReplicaStore& store) {
  return call([this, &store]() -> Status {
    auto& v = impl_->stores;
    v.erase(std::remove(v.begin(), v.end(), &store), v.end());
    return ok_status();
  });
}

Status StoreThread::add_channel(detail::StoreChannel& channel) {
  return call([this, &channel]() -> Status {
    impl_->channels.push_back(&channel);
    return ok_status();
  });
}

Status StoreThread::remove_channel(detail::StoreChannel& channel) {
  return call([this, &channel]() -> Status {
    auto& v = impl_->channels;
    v.erase(std::remove(v.begin(), v.end(), &channel), v.end());
    return ok_status();
  });
}

void StoreThread::ring_doorbell() {
  if (impl_->sleeping.load(std::memory_order_seq_cst)) {
    signal_fd(impl_->doorbell.get());
  }
}

void StoreThread::stop() {
  if (!impl_ || !impl_->thread.joinable()) {
    return;
  }
  impl_->stop.store(true, std::memory_order_seq_cst);
  signal_fd(impl_->doorbell.get());
  impl_->thread.join();
}

void StoreThread::kill_for_testing() {
  impl_->killed.store(true, std::memory_order_seq_cst);
  signal_fd(impl_->doorbell.get());
}

bool StoreThread::exited() const { return impl_->exited.load(std::memory_order_acquire); }

}  // namespace ublkvol::engine
