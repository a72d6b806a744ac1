// ReactorSet (include/ublkvol/reactor/reactor.h): N reactors, one per CPU
// the process is given unless told otherwise.
#include <sched.h>

#include <string>

#include "ublkvol/reactor/reactor.h"

namespace ublkvol::reactor {

Result<std::vector<int>> affinity_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(0, sizeof(set), &set) != 0) {
    return errno_error("sched_getaffinity");
  }
  std::vector<int> cpus;
  for (int c = 0; c < CPU_SETSIZE; ++c) {
    if (CPU_ISSET(static_cast<size_t>(c), &set)) {
      cpus.push_back(c);
    }
  }
  return cpus;
}

Result<std::unique_ptr<ReactorSet>> ReactorSet::start(const ReactorSetOptions& options) {
  std::vector<int> cpus = options.cpus;
  if (cpus.empty()) {
    auto mask = affinity_cpus();
    if (!mask.ok()) {
      return mask.error();
    }
    cpus = std::move(*mask);
  }
  if (cpus.empty()) {
    return Error(EINVAL, "reactors: no CPU to run on (empty CPU list and affinity mask)");
  }
  unsigned count = options.count != 0 ? options.count : static_cast<unsigned>(cpus.size());
  auto set = std::unique_ptr<ReactorSet>(new ReactorSet());
  for (unsigned i = 0; i < count; ++i) {
    ReactorOptions o;
    o.name = options.name_prefix + std::to_string(i);
    o.cpu = options.pin ? cpus[i % cpus.size()] : -1;
    o.io_flusher = options.io_flusher;
    o.spin_before_sleep = options.spin_before_sleep;
    o.busy_poll_interval = options.busy_poll_interval;
    o.poll_in_flight = options.poll_in_flight;
    o.poll_max_percent = options.poll_max_percent;
    auto r = Reactor::start(o);
    if (!r.ok()) {
      set->stop();
      return r.error();
    }
    set->reactors_.push_back(std::move(*r));
  }
  return set;
}

ReactorSet::~ReactorSet() { stop(); }

void ReactorSet::stop() {
  for (auto it = reactors_.rbegin(); it != reactors_.rend(); ++it) {
    (*it)->stop();
  }
}

}  // namespace ublkvol::reactor
