// Poller: one component a reactor runs (docs/architecture.md, "Reactors").
//
// A reactor is one thread, pinned to one core, running one loop over the
// pollers it owns: ublk queues, stores, the ends of channels from other
// reactors, benchmark load generators. Each poller is created, polled and
// destroyed on its reactor's thread only; it shares nothing mutable with
// other reactors except through SPSC channels and atomics it documents.
//
// The loop, and what a poller must do for no wake-up to be lost:
//
//     loop:  work = sum of p.poll() over every poller
//            if work > 0 or any p.busy():  continue
//            sleep until one of the pollers' wait_fd()s is readable
//            drain (read) every wait_fd that was readable
//
//   - poll() never blocks: it does what is ready and returns how much it did
//     (0: nothing was ready).
//   - whoever hands a poller new work (the kernel posting a CQE, another
//     reactor pushing into a channel) makes the work visible first and only
//     then makes wait_fd() readable. Work made visible after a poll() found
//     none then either is seen by the next poll() or wakes the sleep.
//   - a poller with work in flight that no fd will announce (e.g. a device
//     that completes only inside poll()) answers busy() == true: the reactor
//     then polls again instead of sleeping.
#pragma once

namespace ublkvol::reactor {

class Poller {
 public:
  virtual ~Poller() = default;
  Poller() = default;
  Poller(const Poller&) = delete;
  Poller& operator=(const Poller&) = delete;

  // Does the work that is ready, without blocking. Returns how much it did.
  virtual unsigned poll() = 0;

  // Readable when poll() has new work; an eventfd (the reactor drains it with
  // read(2) after waking), or -1 if this poller has none.
  [[nodiscard]] virtual int wait_fd() const = 0;

  // Work in flight that only poll() will notice: do not sleep.
  [[nodiscard]] virtual bool busy() const { return false; }

  // Work in flight whose completion wait_fd() (or another poller) will
  // announce - a request at a device or at another reactor. Only read when
  // the reactor polls adaptively (ReactorOptions::poll_in_flight): it keeps
  // polling for a while instead of sleeping, and saves the wake-up.
  [[nodiscard]] virtual bool waiting() const { return false; }
};

}  // namespace ublkvol::reactor
