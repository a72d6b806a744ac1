// QueueHost: who runs a device's hardware queues when
// DeviceOptions::queue_loop == QueueLoop::kExternal (docs/ublk.md, "Queue
// loops"). UblkDevice then creates no thread: it asks the host to run each
// queue's set-up on the thread the host picks for it, and to poll the queue
// there as a reactor::Poller (include/ublkvol/reactor/poller.h) from then on.
//
// Contract (what UblkDevice relies on; a reactor implements it directly):
//   - run_on(ref, task) runs `task` once, soon, on the thread that owns queue
//     `ref` - the same thread for every call with the same ref, for as long
//     as the device lives (ublk takes a queue's commands only from the task
//     that fetched them; the queue's io_uring is SINGLE_ISSUER). Callable
//     from any thread. An error means the task will not run.
//   - add_poller / remove_poller / keep_until_exit are called on that thread
//     only: from a task given to run_on, or from inside a poll() of a poller
//     of that thread (remove_poller is called from inside the poll() of the
//     poller it removes). The host polls an added poller in every loop
//     iteration and sleeps on its wait_fd() as poller.h describes; a
//     sleeping wait (poll(2), epoll_wait) that fails with EINTR means "poll
//     again" (io_uring's task work interrupts it).
//   - remove_poller: the host stops polling it; it drops its reference after
//     the current poll() returned, never during it.
//   - keep_until_exit: the host keeps `resources` (a queue whose io_uring
//     still has commands with the driver) until that thread has exited, and
//     destroys them after. Linux 6.12 oopses when such a ring is closed
//     before the thread that issued the commands exits (src/ublk/queue.cpp).
//     Consequence: a queue detached in external mode hands the device to the
//     driver (quiesced, ready for recovery) only when that thread exits - at
//     the latest when the process does.
//   - The host outlives every device it runs queues for (stop or detach the
//     devices first). A host being destroyed exits its threads first, then
//     drops the pollers and kept resources.
// Queues of several devices may share one thread; the host decides.
//
// Plugging in a reactor (issue 14): run_on posts the task to reactor
// ref.place (mod N) if set, else (ref.queue mod N) - fixed for the device's
// life; add_poller appends to that reactor's pollers and adds wait_fd() to
// what it sleeps on (poll(2)/epoll, or a read/POLL_ADD on its own ring);
// remove_poller marks it for removal after the pass; keep_until_exit appends
// to a list the reactor destroys after its thread was joined. Nothing else
// is needed: pinning and IO_FLUSHER are the reactor's (the device does
// neither in external mode), and the queue's ring needs no help to wake the
// reactor. That ring is COOP_TASKRUN, not DEFER_TASKRUN (src/ublk/queue.cpp,
// Ring::init, says why): its completions run as task work of the reactor's
// thread, which interrupts whatever sleep the reactor is in (poll(2),
// epoll_wait, io_uring_enter all return or restart after running it) and then
// make wait_fd() readable.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

#include "ublkvol/common/result.h"
#include "ublkvol/reactor/poller.h"

namespace ublkvol::ublk {

// One hardware queue of one device.
struct QueueRef {
  uint32_t dev_id = 0;
  uint16_t queue = 0;
  // The host thread the device's owner asked for (DeviceOptions::
  // queue_places); -1: the host's own choice.
  int32_t place = -1;
};

class QueueHost {
 public:
  virtual ~QueueHost() = default;
  QueueHost() = default;
  QueueHost(const QueueHost&) = delete;
  QueueHost& operator=(const QueueHost&) = delete;

  virtual Status run_on(const QueueRef& ref, std::function<void()> task) = 0;
  virtual void add_poller(const QueueRef& ref, std::shared_ptr<reactor::Poller> poller) = 0;
  virtual void remove_poller(const QueueRef& ref, reactor::Poller& poller) = 0;
  virtual void keep_until_exit(const QueueRef& ref, std::shared_ptr<void> resources) = 0;
};

}  // namespace ublkvol::ublk
