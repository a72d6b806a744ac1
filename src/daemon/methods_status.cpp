// daemon.status and stats (docs/control-protocol.md).
#include <cerrno>
#include <optional>

#include "exports.h"
#include "handlers.h"
#include "render.h"

namespace ublkvol::daemon {

Result<Json> daemon_status(Registry& r, Params& p) {
  UBLKVOL_TRY(p.finish());
  Json status = daemon_status_json(r, r.probe_ublk());
  Json remotes = Json::array();
  for (auto& v : r.volumes) {
    for (auto& entry : remote_replicas_json(*v)) {
      remotes.push_back(std::move(entry));
    }
  }
  status["remote_replicas"] = std::move(remotes);
  status["exports"] = exports_status_json(r);  // exports.h
  return status;
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
      Json entry = volume_stats_json(*v);
      entry["remote_replicas"] = remote_replicas_json(*v);  // remote_replicas.h
      list.push_back(std::move(entry));
    }
  }
  return stats_json(std::move(list), reactors_json(r));
}

}  // namespace ublkvol::daemon
