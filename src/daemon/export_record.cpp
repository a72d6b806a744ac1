// The "export" object of a volume in state.json (state_file.h ExportRecord):
//   {"listen": "0.0.0.0:10809", "tls_psk": "/etc/ublk-volumed/psk", "tls_cert": "",
//    "tls_key": "", "tls_ca": "", "insecure_plain": false, "max_connections": 16}
#include <cerrno>
#include <string>

#include "ublkvol/daemon/state_file.h"

namespace ublkvol::daemon {

nlohmann::json export_record_to_json(const ExportRecord& record) {
  return {{"listen", record.listen},
          {"tls_psk", record.tls_psk},
          {"tls_cert", record.tls_cert},
          {"tls_key", record.tls_key},
          {"tls_ca", record.tls_ca},
          {"insecure_plain", record.insecure_plain},
          {"max_connections", record.max_connections}};
}

Result<ExportRecord> export_record_from_json(const nlohmann::json& object,
                                             const std::string& what) {
  if (!object.is_object()) {
    return Error(EINVAL, what + " is not an object");
  }
  static constexpr const char* kKeys[] = {"listen", "tls_psk",        "tls_cert",       "tls_key",
                                          "tls_ca", "insecure_plain", "max_connections"};
  for (const char* key : kKeys) {
    if (!object.contains(key)) {
      return Error(EINVAL, what + " lacks '" + key + "'");
    }
  }
  if (object.size() != std::size(kKeys)) {
    return Error(EINVAL, what + " has an unknown field");
  }
  ExportRecord r;
  const auto text = [&](const char* key, std::string& out) -> Status {
    if (!object.at(key).is_string()) {
      return Error(EINVAL, what + ": '" + key + "' must be a string");
    }
    out = object.at(key).get<std::string>();
    return ok_status();
  };
  UBLKVOL_TRY(text("listen", r.listen));
  UBLKVOL_TRY(text("tls_psk", r.tls_psk));
  UBLKVOL_TRY(text("tls_cert", r.tls_cert));
  UBLKVOL_TRY(text("tls_key", r.tls_key));
  UBLKVOL_TRY(text("tls_ca", r.tls_ca));
  if (r.listen.empty()) {
    return Error(EINVAL, what + ": 'listen' is empty");
  }
  if (!object.at("insecure_plain").is_boolean()) {
    return Error(EINVAL, what + ": 'insecure_plain' must be true or false");
  }
  r.insecure_plain = object.at("insecure_plain").get<bool>();
  const auto& max = object.at("max_connections");
  if (!max.is_number_unsigned() || max.get<uint64_t>() < 1 || max.get<uint64_t>() > 1024) {
    return Error(EINVAL, what + ": 'max_connections' must be 1..1024");
  }
  r.max_connections = max.get<unsigned>();
  return r;
}

}  // namespace ublkvol::daemon
