// ReactorQueueHost: the ublk::QueueHost (include/ublkvol/ublk/queue_host.h)
// that runs a device's queues on a reactor::ReactorSet, next to the stores
// (docs/architecture.md, "Reactors"). Queue q of a device runs on reactor
// ref.place (DeviceOptions::queue_places) or, if the owner chose none,
// ReactorSet::for_queue(q) - fixed for the device's life; its VolumeQueue is
// opened on that reactor's thread: a replica whose store is served there
// (through an engine::ReactorExecutor) is then called directly (co-located
// dispatch).
//
// What the contract asks, and how:
//   - run_on: posts the task to the queue's reactor.
//   - add_poller: Reactor::add on that reactor (inline: it is called there);
//     the host keeps the shared_ptr so the poller lives while it is polled.
//   - remove_poller: Reactor::remove (inline), and the host's reference is
//     dropped by a task posted to the same reactor - it runs in a later loop
//     iteration, so never during the poll() that asked for the removal.
//   - keep_until_exit: kept in the reactor's slot until the host is
//     destroyed.
// Per-reactor slots are touched only by their reactor's thread (the
// contract calls these there), and by the destructor once every reactor
// stopped: no lock.
//
// Lifetime: the set must outlive the host. Destroying the host stops the
// whole set (its threads exit; ublk cancels the commands the queue rings
// still had), then drops the pollers and kept resources. Stop or detach the
// devices, and close what runs on the set (volumes, stores), before.
#pragma once

#include <memory>
#include <vector>

#include "ublkvol/reactor/reactor.h"
#include "ublkvol/ublk/queue_host.h"

namespace ublkvol::stack {

class ReactorQueueHost final : public ublk::QueueHost {
 public:
  explicit ReactorQueueHost(reactor::ReactorSet& reactors);
  // Stops the set, then releases pollers and kept resources.
  ~ReactorQueueHost() override;
  ReactorQueueHost(const ReactorQueueHost&) = delete;
  ReactorQueueHost& operator=(const ReactorQueueHost&) = delete;

  Status run_on(const ublk::QueueRef& ref, std::function<void()> task) override;
  void add_poller(const ublk::QueueRef& ref, std::shared_ptr<reactor::Poller> poller) override;
  void remove_poller(const ublk::QueueRef& ref, reactor::Poller& poller) override;
  void keep_until_exit(const ublk::QueueRef& ref, std::shared_ptr<void> resources) override;

  [[nodiscard]] reactor::ReactorSet& reactors() const { return reactors_; }
  // The reactor (index in the set) that runs queue `ref`: ref.place if the
  // device's owner chose one, else ref.queue; mod N.
  [[nodiscard]] size_t index_of(const ublk::QueueRef& ref) const;

 private:
  // What the host holds for one reactor (that reactor's thread only).
  struct Slot {
    std::vector<std::shared_ptr<reactor::Poller>> pollers;
    std::vector<std::shared_ptr<void>> kept;
  };
  Slot& slot_of(const ublk::QueueRef& ref);

  reactor::ReactorSet& reactors_;
  std::vector<Slot> slots_;
};

// The reactors of a `--reactors N` / config `reactors` (options.count 0:
// one per CPU of the affinity mask). IO_FLUSHER needs CAP_SYS_RESOURCE:
// refused, the set starts unmarked with a warning (as queue threads do).
Result<std::unique_ptr<reactor::ReactorSet>> start_reactors(reactor::ReactorSetOptions options);

}  // namespace ublkvol::stack
