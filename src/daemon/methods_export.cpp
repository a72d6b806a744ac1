// volume.export / volume.unexport: a volume served over NBD (exports.h,
// docs/nbd-export.md, docs/control-protocol.md).
#include <cerrno>
#include <optional>
#include <spdlog/spdlog.h>
#include <string>

#include "exports.h"
#include "handlers.h"
#include "render.h"
#include "store_paths.h"

namespace ublkvol::daemon {

namespace {
Status check_file_field(const std::string& key, const std::string& path) {
  if (!path.empty() && path.front() != '/') {
    return invalid("field '" + key + "' must be an absolute path, not '" + path + "'");
  }
  return ok_status();
}
}  // namespace

Result<Json> volume_export(Registry& r, Params& p) {
  UBLKVOL_ASSIGN_OR_RETURN(const std::string name, p.name("name"));
  ExportRecord rec;
  UBLKVOL_ASSIGN_OR_RETURN(rec.listen, p.string("listen"));
  UBLKVOL_ASSIGN_OR_RETURN(const auto psk, p.optional_string("tls_psk"));
  UBLKVOL_ASSIGN_OR_RETURN(const auto cert, p.optional_string("tls_cert"));
  UBLKVOL_ASSIGN_OR_RETURN(const auto key, p.optional_string("tls_key"));
  UBLKVOL_ASSIGN_OR_RETURN(const auto ca, p.optional_string("tls_ca"));
  UBLKVOL_ASSIGN_OR_RETURN(const auto plain, p.optional_bool("insecure_plain"));
  UBLKVOL_ASSIGN_OR_RETURN(const auto max, p.optional_uint("max_connections"));
  UBLKVOL_TRY(p.finish());
  rec.tls_psk = psk.value_or("");
  rec.tls_cert = cert.value_or("");
  rec.tls_key = key.value_or("");
  rec.tls_ca = ca.value_or("");
  rec.insecure_plain = plain.value_or(false);
  rec.max_connections = static_cast<unsigned>(max.value_or(16));
  if (max && (*max < 1 || *max > 1024)) {
    return invalid("field 'max_connections' " + std::to_string(*max) + " is out of range 1..1024");
  }
  if (rec.listen.empty()) {
    return invalid("field 'listen' is empty: give HOST:PORT, [IPV6]:PORT or unix:/path");
  }
  UBLKVOL_TRY(check_file_field("tls_psk", rec.tls_psk));
  UBLKVOL_TRY(check_file_field("tls_cert", rec.tls_cert));
  UBLKVOL_TRY(check_file_field("tls_key", rec.tls_key));
  UBLKVOL_TRY(check_file_field("tls_ca", rec.tls_ca));
  const bool x509 = !rec.tls_cert.empty() || !rec.tls_key.empty() || !rec.tls_ca.empty();
  const bool tls = !rec.tls_psk.empty() || x509;
  const bool unix_socket = rec.listen.rfind("unix:", 0) == 0;
  if (!rec.tls_psk.empty() && x509) {
    return invalid("give either 'tls_psk' or 'tls_cert' + 'tls_key' + 'tls_ca', not both");
  }
  if (x509 && (rec.tls_cert.empty() || rec.tls_key.empty() || rec.tls_ca.empty())) {
    return invalid("X.509 needs all of 'tls_cert', 'tls_key' and 'tls_ca' (the CA of the clients)");
  }
  if (tls && rec.insecure_plain) {
    return invalid("'insecure_plain' and TLS exclude each other");
  }
  if (!tls && !unix_socket && !rec.insecure_plain) {
    return invalid("listen address '" + rec.listen +
                   "' is TCP and TLS is required on TCP: give 'tls_psk' or 'tls_cert' + "
                   "'tls_key' + 'tls_ca', or 'insecure_plain' to serve plain text");
  }
  // The daemon reads the TLS files and creates the socket file with its own
  // rights: only for a client that may name any path (least privilege).
  if ((tls || unix_socket) && !may_name_any_path(p.peer())) {
    return Error(EACCES,
                 "volume.export with TLS files or a unix socket path is permitted for "
                 "root only (uid " +
                     std::to_string(p.peer().uid) + " may export over plain TCP only)");
  }
  UBLKVOL_ASSIGN_OR_RETURN(VolumeEntry * volume, r.open_volume_named(name));
  if (volume->exported) {
    return Error(EEXIST, "volume " + named(name) + " is already exported on " +
                             volume->exported->listen + " (unexport it first)");
  }
  UBLKVOL_TRY(start_export(r, *volume, rec));
  if (Status saved = r.save(); !saved.ok()) {
    stop_export(*volume);
    volume->exported.reset();
    return saved.error();
  }
  return volume_json(r, *volume);
}

Result<Json> volume_unexport(Registry& r, Params& p) {
  UBLKVOL_ASSIGN_OR_RETURN(const std::string name, sole_name(p, "name"));
  UBLKVOL_ASSIGN_OR_RETURN(VolumeEntry * volume, r.volume_named(name));
  if (!volume->exported) {
    return invalid("volume " + named(name) + " is not exported");
  }
  stop_export(*volume);
  volume->exported.reset();
  UBLKVOL_TRY(r.save());
  return Json::object();
}

}  // namespace ublkvol::daemon
