// Reactor: one thread running one loop over its Pollers (poller.h), and
// ReactorSet: a fixed set of them, one per core the process is given
// (docs/architecture.md, "Reactors").
//
// The loop (every step on the reactor's own thread):
//
//     loop:  run queued control tasks (call(), post())
//            work = sum of p.poll() over every poller
//            if work > 0 or any p.busy():  continue
//            [spin: keep looping for spin_before_sleep]
//            [adaptive: keep looping for poll_in_flight while any
//             p.waiting(), within poll_max_percent of its time]
//            sleeping = true                          (seq_cst)
//            re-check: poll every poller once more    (work > 0: continue)
//            ppoll(doorbell + every poller's wait_fd())
//            drain the fds that were readable; sleeping = false
//
// Two ways to wake a sleeping reactor, both without a lost wake-up:
//   - a poller's wait_fd() (an eventfd the kernel or a peer writes after
//     making the work visible), as poller.h describes;
//   - wake(): for work a poller finds in shared memory (an SPSC ring from
//     another reactor), the producer first publishes it with a seq_cst store
//     and then calls wake(), which writes the doorbell only if the reactor
//     announced it sleeps. Dekker: either the producer sees `sleeping` and
//     rings, or the reactor's re-check poll (after its seq_cst store of
//     `sleeping`) sees the work. So a busy reactor costs its producers no
//     syscall at all.
//
// Control work runs on the reactor as tasks: call(fn) runs fn there and
// waits for its result (inline when already on the reactor), post(fn) queues
// it and returns. The task queue's mutex is control-path only; the data path
// never takes it.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "ublkvol/common/result.h"
#include "ublkvol/reactor/poller.h"

namespace ublkvol::reactor {

struct ReactorOptions {
  std::string name = "reactor";  // thread name (first 15 characters)
  // Pin the thread to this CPU; -1: not pinned. start() fails if the CPU is
  // not in the process's affinity mask.
  int cpu = -1;
  // Mark the thread PR_SET_IO_FLUSHER (memory reclaim does not wait on it
  // doing I/O - it may be the I/O that reclaim waits for). Needs
  // CAP_SYS_RESOURCE; start() fails with the kernel's answer otherwise.
  bool io_flusher = false;
  // How long an idle reactor keeps polling before it sleeps. 0: sleep at
  // once (the right default on machines with fewer cores than threads).
  std::chrono::microseconds spin_before_sleep{0};
  // A poller that is busy() with no fd is polled again after this long
  // (the reactor sleeps in between); 0: polled again at once (the loop
  // never sleeps while it is busy). The store thread's fault-injecting
  // stores use 200 us so that a delayed request does not cost a core.
  std::chrono::microseconds busy_poll_interval{0};
  // Adaptive polling: while one of its pollers has work in flight
  // (Poller::waiting()), an idle reactor keeps polling for up to this long
  // after its last work instead of sleeping, so a completion costs no
  // wake-up. 0: off (the default: on a machine with fewer cores than busy
  // threads a polling reactor takes the CPU another one needs).
  std::chrono::microseconds poll_in_flight{0};
  // Adaptive polling never takes more than this share (percent, 1..100) of
  // the reactor's time: polling without work is counted per 10 ms window,
  // and once the window's share is spent the reactor sleeps as without it.
  unsigned poll_max_percent = 50;
};

// What a reactor did since it started (Reactor::counters(); status and
// Prometheus). Read from any thread; each field is exact on its own, the set
// is not one atomic snapshot.
struct ReactorCounters {
  std::chrono::nanoseconds uptime{0};
  // Time not spent asleep waiting for work (polling, running handlers and
  // tasks): busy / uptime is the share of its CPU the reactor used.
  std::chrono::nanoseconds busy{0};
  uint64_t sleeps = 0;
  // Wake-ups this reactor sent to other threads for data-path work: requests
  // pushed to a store served elsewhere, completions to a queue elsewhere. A
  // co-located hand-over (a call) sends none.
  uint64_t messages_sent = 0;
};

class Reactor {
 public:
  // Starts the thread; it is pinned and marked before this returns.
  static Result<std::unique_ptr<Reactor>> start(const ReactorOptions& options = {});
  // Stops the thread (stop()).
  ~Reactor();
  Reactor(const Reactor&) = delete;
  Reactor& operator=(const Reactor&) = delete;

  [[nodiscard]] std::string_view name() const;
  // The CPU it is pinned to, -1 if none.
  [[nodiscard]] int cpu() const;

  // The reactor whose loop runs on the calling thread, nullptr on any other
  // thread. Not global mutable state: a thread_local set once by the loop
  // at its start and cleared at its end - it is the thread's identity, read
  // by code that must know whether it already runs where a store lives.
  static Reactor* current();
  [[nodiscard]] bool is_current() const { return current() == this; }

  // Testing only: while the guard lives, current() on the constructing
  // thread returns `reactor`, as if that reactor's loop ran here. The engine
  // simulator (tests/engine/sim) drives every queue and store from its one
  // thread and uses this to put queues "on" a reactor, so the co-located
  // dispatch (a direct call to the store) runs under its seeds too. Only
  // the identity is borrowed: nothing is run on the reactor's own thread.
  class CurrentForTesting {
   public:
    explicit CurrentForTesting(Reactor& reactor);
    ~CurrentForTesting();
    CurrentForTesting(const CurrentForTesting&) = delete;
    CurrentForTesting& operator=(const CurrentForTesting&) = delete;

   private:
    Reactor* previous_;
  };

  // Runs `fn` on the reactor and returns its result (inline if called on
  // the reactor). ESHUTDOWN if the reactor stopped or died first.
  Status call(const std::function<Status()>& fn);
  // Queues `fn` to run on the reactor and returns at once (even when called
  // on the reactor: it runs in a later loop iteration). ESHUTDOWN if the
  // reactor no longer runs; a task queued while it stops may never run.
  Status post(std::function<void()> fn);

  // Pollers (control path; through call()). A poller must stay alive until
  // removed or until the reactor stopped. Removing a poller from inside a
  // poll() pass is allowed (it is not polled again).
  Status add(Poller& poller);
  Status remove(Poller& poller);

  // Producer side of the wake-up rule above: call after publishing work
  // (seq_cst) that a poller of this reactor finds without a wait_fd.
  void wake();

  // Ends the loop and joins. Queued tasks run first; pollers are left as
  // they are (not polled again).
  void stop();
  // Fault injection: the loop ends at once, polling nothing more and
  // running no queued task, as if the thread had crashed. exited() turns
  // true after its last poll.
  void kill_for_testing();
  // True once the loop ended (stop, kill): no poller is polled again.
  [[nodiscard]] bool exited() const;

  // How many loop iterations slept (tests, status).
  [[nodiscard]] uint64_t sleeps() const;
  [[nodiscard]] ReactorCounters counters() const;
  // Asleep right now, waiting for work (tests).
  [[nodiscard]] bool asleep() const;
  // Counts one message sent from the calling reactor to another thread (no-op
  // on a thread that is not a reactor). wake() counts itself; an executor that
  // signals another thread's eventfd calls this.
  static void count_message_sent();

  struct Impl;

 private:
  explicit Reactor(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

struct ReactorSetOptions {
  std::string name_prefix = "reactor";  // reactor i is "<prefix><i>"
  // Number of reactors; 0: one per CPU in `cpus`, or in the process's
  // affinity mask when `cpus` is empty.
  unsigned count = 0;
  // CPUs to pin to (reactor i -> cpus[i % size]); empty: the affinity mask's
  // CPUs in order.
  std::vector<int> cpus;
  bool pin = true;
  bool io_flusher = false;
  std::chrono::microseconds spin_before_sleep{0};
  std::chrono::microseconds busy_poll_interval{0};
  std::chrono::microseconds poll_in_flight{0};
  unsigned poll_max_percent = 50;
};

// The CPUs of the calling thread's affinity mask, in increasing order.
Result<std::vector<int>> affinity_cpus();

class ReactorSet {
 public:
  static Result<std::unique_ptr<ReactorSet>> start(const ReactorSetOptions& options = {});
  ~ReactorSet();
  ReactorSet(const ReactorSet&) = delete;
  ReactorSet& operator=(const ReactorSet&) = delete;

  [[nodiscard]] size_t size() const { return reactors_.size(); }
  [[nodiscard]] Reactor& at(size_t i) const { return *reactors_.at(i); }
  // ublk queue q runs on reactor q mod N.
  [[nodiscard]] Reactor& for_queue(unsigned q) const { return at(q % size()); }
  // Store i (in the order the caller adds them) on reactor i mod N: stores
  // spread evenly, and store i shares a reactor with queue i.
  [[nodiscard]] Reactor& for_store(unsigned i) const { return at(i % size()); }

  // Stops every reactor (in reverse order).
  void stop();

 private:
  ReactorSet() = default;
  std::vector<std::unique_ptr<Reactor>> reactors_;
};

}  // namespace ublkvol::reactor
