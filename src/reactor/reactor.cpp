// Reactor (include/ublkvol/reactor/reactor.h): the loop, its wake-up
// protocol, and control tasks.
#include "ublkvol/reactor/reactor.h"

#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <future>
#include <mutex>
#include <thread>

#include "ublkvol/common/unique_fd.h"

#ifndef PR_SET_IO_FLUSHER
#define PR_SET_IO_FLUSHER 57
#endif

namespace ublkvol::reactor {

namespace {

// The reactor whose loop runs on this thread (Reactor::current()).
thread_local Reactor* t_current = nullptr;

void signal_fd(int fd) {
  uint64_t one = 1;
  // EAGAIN (counter saturated) still leaves the fd readable: nothing lost.
  ssize_t n = ::write(fd, &one, sizeof(one));
  (void)n;
}

void drain_fd(int fd) {
  uint64_t v = 0;
  ssize_t n = ::read(fd, &v, sizeof(v));
  (void)n;
}

// Spin-wait hint: lets a hyperthread sibling run and saves power.
inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

int64_t steady_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

timespec to_timespec(std::chrono::microseconds us) {
  timespec ts{};
  ts.tv_sec = static_cast<time_t>(us.count() / 1000000);
  ts.tv_nsec = static_cast<long>((us.count() % 1000000) * 1000);
  return ts;
}

}  // namespace

struct Reactor::Impl {
  ReactorOptions options;
  Reactor* self = nullptr;
  UniqueFd doorbell;
  std::thread thread;
  std::atomic<bool> sleeping{false};
  std::atomic<bool> stop{false};
  std::atomic<bool> killed{false};
  std::atomic<bool> exited{false};
  std::atomic<uint64_t> sleeps{0};
  // Counters (ReactorCounters). Written by the reactor's thread only (load +
  // store, no read-modify-write on the data path), read by anyone.
  const std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
  std::atomic<int64_t> asleep_ns{0};        // total time spent in ppoll
  std::atomic<int64_t> asleep_since_ns{0};  // steady clock at ppoll entry; 0: awake
  std::atomic<uint64_t> messages_sent{0};

  void add_message_sent() {
    messages_sent.store(messages_sent.load(std::memory_order_relaxed) + 1,
                        std::memory_order_relaxed);
  }

  // Control tasks (control path only; the data path never takes this lock).
  std::mutex task_mutex;
  std::condition_variable task_cv;
  std::deque<std::function<void()>> tasks;  // guarded by task_mutex
  bool closed = false;                      // guarded by task_mutex: no task runs any more
  std::atomic<bool> tasks_pending{false};

  // Owned by the thread. A removed poller leaves a nullptr until the end of
  // the pass (removal from inside a poll() pass must not shift the vector
  // under the loop).
  std::vector<Poller*> pollers;
  bool compact = false;
  std::vector<pollfd> fds;

  void run_tasks() {
    std::deque<std::function<void()>> batch;
    {
      std::lock_guard lock(task_mutex);
      batch.swap(tasks);
      tasks_pending.store(false, std::memory_order_relaxed);
    }
    for (auto& task : batch) {
      task();
    }
  }

  // Adaptive polling's budget (ReactorOptions::poll_max_percent): time spent
  // polling without work, per window.
  static constexpr int64_t kPollWindowNs = 10'000'000;
  static constexpr int64_t kMaxPollPassNs = 50'000;
  int64_t poll_window_start_ns = 0;
  int64_t poll_spent_ns = 0;
  int64_t poll_last_ns = 0;  // the previous adaptive iteration; 0: none just before

  // Whether to poll once more instead of sleeping: a poller waits for a
  // completion, the last work is recent enough, and the window's share is
  // not spent.
  bool poll_again(std::chrono::steady_clock::time_point last_work) {
    const auto now = std::chrono::steady_clock::now();
    if (now - last_work >= options.poll_in_flight) {
      poll_last_ns = 0;
      return false;
    }
    const int64_t now_ns =
        std::chrono::duration_cast<std::chrono::nanoseconds>(now.time_since_epoch()).count();
    if (options.poll_max_percent >= 100) {
      return true;  // no cap
    }
    if (now_ns - poll_window_start_ns >= kPollWindowNs) {
      // A new window: the time since the last pass belongs to the old one.
      poll_window_start_ns = now_ns;
      poll_spent_ns = 0;
      poll_last_ns = 0;
    }
    if (poll_last_ns != 0) {
      // One pass takes well under a microsecond; a longer gap is time the
      // thread was not running (preempted), which took no CPU from others.
      poll_spent_ns += std::min<int64_t>(now_ns - poll_last_ns, kMaxPollPassNs);
    }
    const int64_t share =
        kPollWindowNs * std::clamp<unsigned>(options.poll_max_percent, 1, 100) / 100;
    if (poll_spent_ns >= share) {
      poll_last_ns = 0;
      return false;
    }
    poll_last_ns = now_ns;
    return true;
  }

  // One pass over the pollers; how much work they did, whether one is busy,
  // and (only when `check_waiting`) whether one waits for a completion.
  unsigned poll_all(bool& busy, bool check_waiting = false, bool* waiting = nullptr) {
    unsigned work = 0;
    busy = false;
    if (waiting != nullptr) {
      *waiting = false;
    }
    // By index: a poll() may add pollers (through call() on this thread).
    for (size_t i = 0; i < pollers.size(); ++i) {
      Poller* p = pollers[i];
      if (p == nullptr) {
        continue;
      }
      work += p->poll();
      // Re-read: the poll may have removed it.
      if (pollers[i] != nullptr && pollers[i]->busy()) {
        busy = true;
      }
      if (check_waiting && pollers[i] != nullptr && pollers[i]->waiting()) {
        *waiting = true;
      }
    }
    if (compact) {
      compact = false;
      pollers.erase(std::remove(pollers.begin(), pollers.end(), nullptr), pollers.end());
    }
    return work;
  }

  [[nodiscard]] bool ending() const {
    return stop.load(std::memory_order_seq_cst) || killed.load(std::memory_order_seq_cst);
  }

  // Sleeps until a wait_fd or the doorbell is readable (or `timeout`), then
  // drains what was readable.
  void sleep(const timespec* timeout) {
    fds.clear();
    fds.push_back({doorbell.get(), POLLIN, 0});
    for (Poller* p : pollers) {
      int fd = p != nullptr ? p->wait_fd() : -1;
      if (fd >= 0) {
        fds.push_back({fd, POLLIN, 0});
      }
    }
    sleeps.fetch_add(1, std::memory_order_relaxed);
    const int64_t fell_asleep = steady_ns();
    asleep_since_ns.store(fell_asleep, std::memory_order_relaxed);
    int n = ::ppoll(fds.data(), fds.size(), timeout, nullptr);
    asleep_since_ns.store(0, std::memory_order_relaxed);
    asleep_ns.store(asleep_ns.load(std::memory_order_relaxed) + (steady_ns() - fell_asleep),
                    std::memory_order_relaxed);
    if (n <= 0) {
      return;
    }
    for (const pollfd& f : fds) {
      if ((f.revents & POLLIN) != 0) {
        drain_fd(f.fd);
      }
    }
  }

  void loop() {
    t_current = self;
    const bool spins = options.spin_before_sleep.count() > 0;
    const timespec busy_interval = to_timespec(options.busy_poll_interval);
    const bool busy_sleeps = options.busy_poll_interval.count() > 0;
    const bool adaptive = options.poll_in_flight.count() > 0;
    auto last_work = std::chrono::steady_clock::now();
    while (!ending()) {
      unsigned work = 0;
      if (tasks_pending.load(std::memory_order_acquire)) {
        run_tasks();
        ++work;
        if (ending()) {
          break;
        }
      }
      bool busy = false;
      bool waiting = false;
      work += poll_all(busy, adaptive, &waiting);
      if (work > 0) {
        if (spins || adaptive) {
          last_work = std::chrono::steady_clock::now();
          poll_last_ns = 0;
        }
        continue;
      }
      if (busy && !busy_sleeps) {
        continue;
      }
      if (waiting && poll_again(last_work)) {
        cpu_relax();
        continue;
      }
      if (spins && std::chrono::steady_clock::now() - last_work < options.spin_before_sleep) {
        cpu_relax();
        continue;
      }
      // Idle: announce sleep, re-check (a producer that published before
      // it could see the flag is found now), then block.
      sleeping.store(true, std::memory_order_seq_cst);
      bool busy_again = false;
      unsigned late = poll_all(busy_again);
      if (late == 0 && (!busy_again || busy_sleeps) &&
          !tasks_pending.load(std::memory_order_seq_cst) && !ending()) {
        sleep(busy_again ? &busy_interval : nullptr);
      }
      sleeping.store(false, std::memory_order_relaxed);
    }
    if (!killed.load(std::memory_order_acquire)) {
      run_tasks();
    }
    {
      std::lock_guard lock(task_mutex);
      closed = true;
      exited.store(true, std::memory_order_release);
    }
    // Fail waiting control calls.
    task_cv.notify_all();
    t_current = nullptr;
  }

  Status enqueue(std::function<void()> fn) {
    {
      std::lock_guard lock(task_mutex);
      if (closed) {
        return Error(ESHUTDOWN, "reactor " + options.name + " is not running");
      }
      tasks.push_back(std::move(fn));
      tasks_pending.store(true, std::memory_order_seq_cst);
    }
    signal_fd(doorbell.get());
    return ok_status();
  }
};

Reactor::Reactor(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) { impl_->self = this; }

Reactor::~Reactor() { stop(); }

Result<std::unique_ptr<Reactor>> Reactor::start(const ReactorOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  int fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd < 0) {
    return errno_error("reactor " + options.name + ": eventfd");
  }
  impl->doorbell.reset(fd);
  auto reactor = std::unique_ptr<Reactor>(new Reactor(std::move(impl)));
  Impl* raw = reactor->impl_.get();
  // The thread pins and marks itself before its loop starts and reports how
  // that went: a reactor that runs anywhere but where it was told is an error.
  std::promise<Status> ready;
  std::future<Status> started = ready.get_future();
  raw->thread = std::thread([raw, ready = std::move(ready)]() mutable {
    pthread_setname_np(pthread_self(), raw->options.name.substr(0, 15).c_str());
    Status st = ok_status();
    if (raw->options.cpu >= 0) {
      cpu_set_t set;
      CPU_ZERO(&set);
      if (raw->options.cpu < CPU_SETSIZE) {
        CPU_SET(static_cast<size_t>(raw->options.cpu), &set);
      }
      int rc = raw->options.cpu < CPU_SETSIZE
                   ? pthread_setaffinity_np(pthread_self(), sizeof(set), &set)
                   : EINVAL;
      if (rc != 0) {
        st = Error(rc, "reactor " + raw->options.name + ": cannot pin to CPU " +
                           std::to_string(raw->options.cpu) +
                           " (not in the process's CPU affinity mask?)");
      }
    }
    if (st.ok() && raw->options.io_flusher && ::prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) != 0) {
      st = errno_error("reactor " + raw->options.name +
                       ": PR_SET_IO_FLUSHER (needs CAP_SYS_RESOURCE)");
    }
    bool ok = st.ok();
    ready.set_value(std::move(st));
    if (!ok) {
      std::lock_guard lock(raw->task_mutex);
      raw->closed = true;
      raw->exited.store(true, std::memory_order_release);
      return;
    }
    raw->loop();
  });
  Status st = started.get();
  if (!st.ok()) {
    raw->thread.join();
    return st.error();
  }
  return reactor;
}

std::string_view Reactor::name() const { return impl_->options.name; }

int Reactor::cpu() const { return impl_->options.cpu; }

Reactor* Reactor::current() { return t_current; }

Reactor::CurrentForTesting::CurrentForTesting(Reactor& reactor) : previous_(t_current) {
  t_current = &reactor;
}

Reactor::CurrentForTesting::~CurrentForTesting() { t_current = previous_; }

uint64_t Reactor::sleeps() const { return impl_->sleeps.load(std::memory_order_relaxed); }

ReactorCounters Reactor::counters() const {
  const Impl& s = *impl_;
  ReactorCounters c;
  const int64_t now = steady_ns();
  c.uptime = std::chrono::steady_clock::now() - s.started;
  int64_t asleep = s.asleep_ns.load(std::memory_order_relaxed);
  if (const int64_t since = s.asleep_since_ns.load(std::memory_order_relaxed); since != 0) {
    asleep += now - since;  // asleep right now
  }
  c.busy =
      std::chrono::nanoseconds(std::clamp<int64_t>(c.uptime.count() - asleep, 0, c.uptime.count()));
  c.sleeps = s.sleeps.load(std::memory_order_relaxed);
  c.messages_sent = s.messages_sent.load(std::memory_order_relaxed);
  return c;
}

bool Reactor::asleep() const { return impl_->asleep_since_ns.load(std::memory_order_relaxed) != 0; }

void Reactor::count_message_sent() {
  if (t_current != nullptr) {
    t_current->impl_->add_message_sent();
  }
}

Status Reactor::call(const std::function<Status()>& fn) {
  Impl& s = *impl_;
  if (is_current()) {
    return fn();
  }
  // Shared with the task: a call that gives up (the reactor stopped) leaves
  // a queued task that may still be destroyed later without being run.
  struct CallState {
    Status result = ok_status();
    bool done = false;
  };
  auto state = std::make_shared<CallState>();
  Status queued = s.enqueue([&fn, state, &s] {
    Status st = fn();
    std::lock_guard lock(s.task_mutex);
    state->result = std::move(st);
    state->done = true;
    s.task_cv.notify_all();
  });
  if (!queued.ok()) {
    return queued;
  }
  std::unique_lock lock(s.task_mutex);
  s.task_cv.wait(lock, [&] { return state->done || s.closed; });
  if (!state->done) {
    return Error(ESHUTDOWN, "reactor " + s.options.name + " stopped");
  }
  return std::move(state->result);
}

Status Reactor::post(std::function<void()> fn) { return impl_->enqueue(std::move(fn)); }

Status Reactor::add(Poller& poller) {
  return call([this, &poller]() -> Status {
    impl_->pollers.push_back(&poller);
    return ok_status();
  });
}

Status Reactor::remove(Poller& poller) {
  return call([this, &poller]() -> Status {
    for (Poller*& p : impl_->pollers) {
      if (p == &poller) {
        p = nullptr;
        impl_->compact = true;
      }
    }
    return ok_status();
  });
}

void Reactor::wake() {
  if (t_current != nullptr && t_current != this) {
    t_current->impl_->add_message_sent();
  }
  if (impl_->sleeping.load(std::memory_order_seq_cst)) {
    signal_fd(impl_->doorbell.get());
  }
}

void Reactor::stop() {
  if (!impl_ || !impl_->thread.joinable()) {
    return;
  }
  impl_->stop.store(true, std::memory_order_seq_cst);
  signal_fd(impl_->doorbell.get());
  impl_->thread.join();
}

void Reactor::kill_for_testing() {
  impl_->killed.store(true, std::memory_order_seq_cst);
  signal_fd(impl_->doorbell.get());
}

bool Reactor::exited() const { return impl_->exited.load(std::memory_order_acquire); }

}  // namespace ublkvol::reactor
