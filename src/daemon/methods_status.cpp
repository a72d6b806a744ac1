// daemon.status and stats (docs/control-protocol.md).
#include <cerrno>
#include <optional>

#include "handlers.h"
#include "render.h"

namespace ublkvol::daemon {

Result<Json> daemon_status(Registry& r, Params& p) {
  UBLKVOL_TRY(p.finish());
  return daemon_status_json(r, r.probe_ublk());
}

Result<Json> stats(Registry& r, Params& p) {
  UBLKVOL_ASSIGN_OR_RETURN(const std::optional<std::string> only, p.optional_name("volume"));
  UBLKVOL_TRY(p.finish());
  if (only) {
    UBLKVOL_TRY(r.volume_named(*only));
  }
  Json list = Json::array();
  for (auto& v : r.volumes) {
    if (!only || v->name == *only) {
      list.push_back(volume_stats_json(*v));
    }
  }
  return stats_json(std::move(list), reactors_json(r));
}

}  // namespace ublkvol::daemon
