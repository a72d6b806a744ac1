// Service: the daemon's registry (registry.h) behind the interface
// daemon_main and the control server use. Requests go to dispatch()
// (dispatch.cpp, handlers.h); nothing here knows a method.
#include "ublkvol/daemon/service.h"

#include <exception>
#include <spdlog/spdlog.h>
#include <string>
#include <utility>

#include "handlers.h"
#include "registry.h"

namespace ublkvol::daemon {

struct Service::Impl {
  std::unique_ptr<Registry> registry;
};

Service::Service(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Service::~Service() = default;

Result<std::unique_ptr<Service>> Service::start(const DaemonConfig& config) {
  auto impl = std::make_unique<Impl>();
  UBLKVOL_ASSIGN_OR_RETURN(impl->registry, Registry::start(config));
  return std::unique_ptr<Service>(new Service(std::move(impl)));
}

Json Service::handle(const Request& request) {
  try {
    auto result = dispatch(*impl_->registry, request);
    if (!result.ok()) {
      return make_error_response(request.id, result.error());
    }
    return make_ok_response(request.id, std::move(*result));
  } catch (const std::exception& e) {
    spdlog::error("request '{}' failed with an exception: {}", request.method, e.what());
    return make_error_response(request.id, ErrorCode::kInternal,
                               std::string("internal error: ") + e.what());
  }
}

Service::ShutdownReport Service::shutdown() { return impl_->registry->shutdown(); }

std::string Service::status_line() const {
  const Registry& r = *impl_->registry;
  return std::to_string(r.stores.size()) + " stores, " + std::to_string(r.volumes.size()) +
         " volumes, " + std::to_string(r.exposed_count()) + " exposed";
}

void Service::set_save_hook(SaveHook hook) { impl_->registry->save_hook = std::move(hook); }

void Service::check_stores() {
  impl_->registry->check_stores();
  impl_->registry->sample_reactors();
  join_pending_remotes(*impl_->registry);  // remote_replicas.h
  save_owed_snapshot_deletes(*impl_->registry);
  auto_open_held_volumes(*impl_->registry);  // held_volume.cpp
}

}  // namespace ublkvol::daemon
