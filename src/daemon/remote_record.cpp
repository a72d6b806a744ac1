// One entry of a volume's "remote_replicas" in state.json (state_file.h
// RemoteReplicaRecord):
//   {"uri": "nbds://alice@hostB:10809/v", "tls_psk": "/etc/ublk-volumed/psk",
//    "insecure_plain": false}
// plus "owed_snapshot_deletes": ["s1", ...] while the peer owes snapshot
// deletes (absent when none, so files of older daemons load unchanged).
// Only the path of the PSK file is kept: the key stays in that file.
#include <cerrno>
#include <string>

#include "ublkvol/daemon/state_file.h"

namespace ublkvol::daemon {

nlohmann::json remote_record_to_json(const RemoteReplicaRecord& record) {
  nlohmann::json out = {
      {"uri", record.uri}, {"tls_psk", record.tls_psk}, {"insecure_plain", record.insecure_plain}};
  if (!record.owed_snapshot_deletes.empty()) {
    out["owed_snapshot_deletes"] = record.owed_snapshot_deletes;
  }
  return out;
}

Result<RemoteReplicaRecord> remote_record_from_json(const nlohmann::json& object,
                                                    const std::string& what) {
  if (!object.is_object()) {
    return Error(EINVAL, what + " is not an object");
  }
  static constexpr const char* kKeys[] = {"uri", "tls_psk", "insecure_plain"};
  for (const char* key : kKeys) {
    if (!object.contains(key)) {
      return Error(EINVAL, what + " lacks '" + key + "'");
    }
  }
  const bool owes = object.contains("owed_snapshot_deletes");
  if (object.size() != std::size(kKeys) + (owes ? 1 : 0)) {
    return Error(EINVAL, what + " has an unknown field");
  }
  RemoteReplicaRecord r;
  if (!object.at("uri").is_string() || !object.at("tls_psk").is_string()) {
    return Error(EINVAL, what + ": 'uri' and 'tls_psk' must be strings");
  }
  r.uri = object.at("uri").get<std::string>();
  r.tls_psk = object.at("tls_psk").get<std::string>();
  if (r.uri.find("://") == std::string::npos) {
    return Error(EINVAL, what + ": 'uri' '" + r.uri + "' is not an NBD URI");
  }
  if (!r.tls_psk.empty() && r.tls_psk.front() != '/') {
    return Error(EINVAL, what + ": 'tls_psk' '" + r.tls_psk + "' is not an absolute path");
  }
  if (!object.at("insecure_plain").is_boolean()) {
    return Error(EINVAL, what + ": 'insecure_plain' must be true or false");
  }
  r.insecure_plain = object.at("insecure_plain").get<bool>();
  if (owes) {
    const nlohmann::json& owed = object.at("owed_snapshot_deletes");
    if (!owed.is_array() || owed.empty()) {
      return Error(EINVAL, what + ": 'owed_snapshot_deletes' must be a non-empty array");
    }
    for (const auto& name : owed) {
      if (!name.is_string() || name.get<std::string>().empty()) {
        return Error(EINVAL, what + ": 'owed_snapshot_deletes' holds " + name.dump() +
                                 ", not a snapshot name");
      }
      r.owed_snapshot_deletes.push_back(name.get<std::string>());
    }
  }
  return r;
}

}  // namespace ublkvol::daemon
