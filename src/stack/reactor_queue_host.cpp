// ReactorQueueHost (include/ublkvol/stack/reactor_queue_host.h): ublk queues
// polled by the reactors that also serve the stores.
#include "ublkvol/stack/reactor_queue_host.h"

#include <algorithm>
#include <cerrno>
#include <spdlog/spdlog.h>
#include <string>

namespace ublkvol::stack {

namespace {
std::string queue_name(const ublk::QueueRef& ref) {
  return "ublk device " + std::to_string(ref.dev_id) + " queue " + std::to_string(ref.queue);
}
}  // namespace

ReactorQueueHost::ReactorQueueHost(reactor::ReactorSet& reactors)
    : reactors_(reactors), slots_(reactors.size()) {}

ReactorQueueHost::~ReactorQueueHost() {
  // Threads first (queue_host.h): a queue ring closed before the thread
  // that issued its commands exited trips a Linux 6.12 bug.
  reactors_.stop();
  slots_.clear();
}

size_t ReactorQueueHost::index_of(const ublk::QueueRef& ref) const {
  const size_t wanted = ref.place >= 0 ? static_cast<size_t>(ref.place) : ref.queue;
  return wanted % reactors_.size();
}

ReactorQueueHost::Slot& ReactorQueueHost::slot_of(const ublk::QueueRef& ref) {
  return slots_[index_of(ref)];
}

Status ReactorQueueHost::run_on(const ublk::QueueRef& ref, std::function<void()> task) {
  reactor::Reactor& r = reactors_.at(index_of(ref));
  Status st = r.post(std::move(task));
  if (!st.ok()) {
    return st.error().with_context("cannot run " + queue_name(ref) + " on reactor " +
                                   std::string(r.name()));
  }
  return ok_status();
}

void ReactorQueueHost::add_poller(const ublk::QueueRef& ref,
                                  std::shared_ptr<reactor::Poller> poller) {
  reactor::Reactor& r = reactors_.at(index_of(ref));
  // On r's thread (contract): add() runs inline.
  Status st = r.add(*poller);
  if (!st.ok()) {
    // Only when r stopped: nothing polls anything there any more.
    spdlog::error("{}: not polled by reactor {}: {}", queue_name(ref), r.name(),
                  st.error().message());
  }
  slot_of(ref).pollers.push_back(std::move(poller));
}

void ReactorQueueHost::remove_poller(const ublk::QueueRef& ref, reactor::Poller& poller) {
  reactor::Reactor& r = reactors_.at(index_of(ref));
  // Inline (on r's thread): not polled from the next poller on.
  (void)r.remove(poller);
  // Possibly inside poller.poll(): our reference goes in a later loop
  // iteration. A reactor that stops runs its queued tasks first; if it
  // cannot take the task, the destructor drops the reference.
  Slot* slot = &slot_of(ref);
  reactor::Poller* target = &poller;
  (void)r.post([slot, target] {
    std::erase_if(slot->pollers, [target](const std::shared_ptr<reactor::Poller>& p) {
      return p.get() == target;
    });
  });
}

void ReactorQueueHost::keep_until_exit(const ublk::QueueRef& ref, std::shared_ptr<void> resources) {
  slot_of(ref).kept.push_back(std::move(resources));
}

Result<std::unique_ptr<reactor::ReactorSet>> start_reactors(reactor::ReactorSetOptions options) {
  const unsigned count = options.count;
  auto set = reactor::ReactorSet::start(options);
  if (!set && options.io_flusher && set.error().errno_value() == EPERM) {
    spdlog::warn(
        "reactors: PR_SET_IO_FLUSHER refused: memory reclaim may wait on them; grant "
        "CAP_SYS_RESOURCE");
    options.io_flusher = false;
    set = reactor::ReactorSet::start(options);
  }
  if (!set) {
    return set.error().with_context(std::to_string(count) + " reactors");
  }
  return set;
}

}  // namespace ublkvol::stack
