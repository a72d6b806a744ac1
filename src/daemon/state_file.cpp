#include "ublkvol/daemon/state_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <nlohmann/json.hpp>

#include "ublkvol/common/unique_fd.h"
#include "ublkvol/daemon/protocol.h"

namespace ublkvol::daemon {
namespace {

constexpr const char* kFormat = "ublk-volumed-state";
// Version 2: volumes may have "remote_replicas". Files without any are
// still written as version 1, so an older daemon reads them.
constexpr int kVersion = 1;
constexpr int kVersionRemotes = 2;

Error bad(const std::string& origin, const std::string& what) {
  return Error(EINVAL, origin + ": " + what);
}

Status write_all(int fd, const char* data, size_t size, const std::string& path) {
  while (size > 0) {
    const ssize_t n = ::write(fd, data, size);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return errno_error("cannot write " + path);
    }
    data += n;
    size -= static_cast<size_t>(n);
  }
  return ok_status();
}

Status stop_at(const SaveHook& hook, SaveStep step, const char* name) {
  if (hook && !hook(step)) {
    return Error(ECANCELED, std::string("state save stopped by a test hook after ") + name);
  }
  return ok_status();
}

}  // namespace

std::string state_to_json(const DaemonState& state) {
  nlohmann::json stores = nlohmann::json::array();
  for (const auto& s : state.stores) {
    stores.push_back({{"name", s.name}, {"path", s.path}, {"uuid", s.uuid}});
  }
  nlohmann::json volumes = nlohmann::json::array();
  for (const auto& v : state.volumes) {
    nlohmann::json volume = {{"name", v.name},
                             {"size_bytes", v.size_bytes},
                             {"stores", v.stores},
                             {"min_replicas", v.min_replicas},
                             {"exposed", nullptr}};
    if (v.exposed) {
      volume["exposed"] = {{"dev_id", v.exposed->dev_id},
                           {"queues", v.exposed->queues},
                           {"queue_depth", v.exposed->queue_depth}};
    }
    if (v.exported) {
      volume["export"] = export_record_to_json(*v.exported);
    }
    if (!v.remotes.empty()) {
      nlohmann::json remotes = nlohmann::json::array();
      for (const auto& remote : v.remotes) {
        remotes.push_back(remote_record_to_json(remote));
      }
      volume["remote_replicas"] = std::move(remotes);
    }
    volumes.push_back(std::move(volume));
  }
  const bool any_remote = std::any_of(state.volumes.begin(), state.volumes.end(),
                                      [](const VolumeRecord& v) { return !v.remotes.empty(); });
  nlohmann::json doc = {{"format", kFormat},
                        {"version", any_remote ? kVersionRemotes : kVersion},
                        {"stores", stores},
                        {"volumes", volumes}};
  return doc.dump(2) + "\n";
}

namespace {

using Json = nlohmann::json;

// Checks that `object` (named `what`) is an object with exactly the keys
// `keys`: an unknown key means a newer or hand-edited file this daemon would
// misread, a missing one a damaged file.
Status exact_keys(const Json& object, const std::string& what,
                  std::initializer_list<const char*> keys) {
  if (!object.is_object()) {
    return Error(EINVAL, what + " is not an object");
  }
  for (const char* key : keys) {
    if (!object.contains(key)) {
      return Error(EINVAL, what + " lacks '" + key + "'");
    }
  }
  for (auto it = object.begin(); it != object.end(); ++it) {
    const std::string& key = it.key();
    if (std::find_if(keys.begin(), keys.end(), [&](const char* k) { return key == k; }) ==
        keys.end()) {
      return Error(EINVAL, std::string(what).append(" has an unknown field '").append(key) + "'");
    }
  }
  return ok_status();
}

Result<std::string> string_field(const Json& object, const std::string& what, const char* key) {
  const Json& value = object.at(key);
  if (!value.is_string()) {
    return Error(EINVAL, what + ": '" + key + "' must be a string, not " + value.type_name());
  }
  return value.get<std::string>();
}

template <typename T>
Result<T> uint_field(const Json& object, const std::string& what, const char* key) {
  const Json& value = object.at(key);
  if (!value.is_number_unsigned() || value.get<uint64_t>() > std::numeric_limits<T>::max()) {
    return Error(EINVAL, what + ": '" + key + "' must be an unsigned integer up to " +
                             std::to_string(std::numeric_limits<T>::max()) + ", not " +
                             (value.is_number() ? value.dump() : value.type_name()));
  }
  return static_cast<T>(value.get<uint64_t>());
}

Result<StoreRecord> parse_store(const Json& s, const std::string& what) {
  UBLKVOL_TRY(exact_keys(s, what, {"name", "path", "uuid"}));
  StoreRecord record;
  UBLKVOL_ASSIGN_OR_RETURN(record.name, string_field(s, what, "name"));
  UBLKVOL_ASSIGN_OR_RETURN(record.path, string_field(s, what, "path"));
  UBLKVOL_ASSIGN_OR_RETURN(record.uuid, string_field(s, what, "uuid"));
  UBLKVOL_TRY(validate_name(record.name, what + ": name"));
  if (record.path.empty() || record.path.front() != '/') {
    return Error(EINVAL, what + ": path '" + record.path + "' is not absolute");
  }
  return record;
}

Result<VolumeRecord> parse_volume(const Json& given, const std::string& what, uint64_t version) {
  // "export" is optional (older files, unexported volumes): read apart.
  Json v = given;
  VolumeRecord record;
  // "remote_replicas": version 2 only (in a version 1 file it is unknown).
  if (version >= kVersionRemotes && v.is_object() && v.contains("remote_replicas")) {
    const Json& remotes = v.at("remote_replicas");
    if (!remotes.is_array() || remotes.empty()) {
      return Error(EINVAL, what + ": 'remote_replicas' must be a non-empty array");
    }
    for (size_t i = 0; i < remotes.size(); ++i) {
      UBLKVOL_ASSIGN_OR_RETURN(
          auto remote,
          remote_record_from_json(remotes[i], what + ": remote replica " + std::to_string(i)));
      for (const auto& other : record.remotes) {
        if (other.uri == remote.uri) {
          return Error(EINVAL, what + " lists remote replica " + remote.uri + " twice");
        }
      }
      record.remotes.push_back(std::move(remote));
    }
    v.erase("remote_replicas");
  }
  if (v.is_object() && v.contains("export")) {
    UBLKVOL_ASSIGN_OR_RETURN(record.exported,
                             export_record_from_json(v.at("export"), what + ": export"));
    v.erase("export");
  }
  UBLKVOL_TRY(exact_keys(v, what, {"name", "size_bytes", "stores", "min_replicas", "exposed"}));
  UBLKVOL_ASSIGN_OR_RETURN(record.name, string_field(v, what, "name"));
  UBLKVOL_TRY(validate_name(record.name, what + ": name"));
  UBLKVOL_ASSIGN_OR_RETURN(record.size_bytes, uint_field<uint64_t>(v, what, "size_bytes"));
  UBLKVOL_TRY(validate_size(record.size_bytes, what + ": size_bytes"));
  const Json& stores = v.at("stores");
  if (!stores.is_array()) {
    return Error(EINVAL, what + ": 'stores' must be an array of store names");
  }
  for (const Json& store : stores) {
    if (!store.is_string()) {
      return Error(EINVAL, std::string(what)
                               .append(": 'stores' must hold store names, not ")
                               .append(store.type_name()));
    }
    std::string store_name = store.get<std::string>();
    if (std::find(record.stores.begin(), record.stores.end(), store_name) != record.stores.end()) {
      return Error(EINVAL,
                   std::string(what).append(" lists store '").append(store_name).append("' twice"));
    }
    record.stores.push_back(std::move(store_name));
  }
  UBLKVOL_ASSIGN_OR_RETURN(record.min_replicas, uint_field<unsigned>(v, what, "min_replicas"));
  const size_t replicas = record.stores.size() + record.remotes.size();
  if (record.min_replicas < 1 || (replicas != 0 && record.min_replicas > replicas)) {
    return Error(EINVAL, what + ": min_replicas " + std::to_string(record.min_replicas) +
                             " is not in 1.." + std::to_string(replicas) + " (its replica count)");
  }
  const Json& exposed = v.at("exposed");
  if (!exposed.is_null()) {
    const std::string exposed_what = what + ": exposed";
    UBLKVOL_TRY(exact_keys(exposed, exposed_what, {"dev_id", "queues", "queue_depth"}));
    ExposeRecord device;
    UBLKVOL_ASSIGN_OR_RETURN(device.dev_id, uint_field<uint32_t>(exposed, exposed_what, "dev_id"));
    UBLKVOL_ASSIGN_OR_RETURN(device.queues, uint_field<unsigned>(exposed, exposed_what, "queues"));
    UBLKVOL_ASSIGN_OR_RETURN(device.queue_depth,
                             uint_field<unsigned>(exposed, exposed_what, "queue_depth"));
    record.exposed = device;
  }
  return record;
}

}  // namespace

Result<DaemonState> state_from_json(const std::string& text, const std::string& origin) {
  auto parsed = parse_json_unique_keys(text);
  if (!parsed.ok()) {
    return bad(origin, parsed.error().errno_value() == EBADMSG
                           ? "not a JSON object (the file is damaged)"
                           : parsed.error().message());
  }
  const Json& doc = *parsed;
  if (!doc.is_object()) {
    return bad(origin, "not a JSON object (the file is damaged)");
  }
  if (!doc.contains("format") || !doc["format"].is_string() ||
      doc["format"].get<std::string>() != kFormat) {
    return bad(origin,
               std::string("not a ublk-volumed state file (format is not '") + kFormat + "')");
  }
  if (!doc.contains("version") || !doc["version"].is_number_unsigned() ||
      (doc["version"].get<uint64_t>() != kVersion &&
       doc["version"].get<uint64_t>() != kVersionRemotes)) {
    return bad(origin, "unsupported state file version (this daemon reads versions 1 and 2)");
  }
  const uint64_t version = doc["version"].get<uint64_t>();
  if (Status keys = exact_keys(doc, "the document", {"format", "version", "stores", "volumes"});
      !keys.ok()) {
    return bad(origin, keys.error().message());
  }
  if (!doc["stores"].is_array() || !doc["volumes"].is_array()) {
    return bad(origin, "'stores' and 'volumes' must be arrays");
  }
  // Every refusal names the entry; the daemon refuses to start rather than
  // guess which of two records is the real one.
  DaemonState state;
  size_t index = 0;
  for (const auto& s : doc["stores"]) {
    const std::string what = "store entry " + std::to_string(index++) +
                             (s.is_object() && s.contains("name") && s["name"].is_string()
                                  ? " ('" + s["name"].get<std::string>() + "')"
                                  : std::string());
    auto record = parse_store(s, what);
    if (!record.ok()) {
      return bad(origin, record.error().message());
    }
    for (const auto& other : state.stores) {
      if (other.name == record->name) {
        return bad(origin, what + ": a second store named '" + record->name + "'");
      }
      if (other.path == record->path) {
        return bad(origin,
                   what + ": path " + record->path + " is already store '" + other.name + "'");
      }
      if (other.uuid == record->uuid) {
        return bad(origin,
                   what + ": uuid " + record->uuid + " is already store '" + other.name + "'");
      }
    }
    state.stores.push_back(std::move(*record));
  }
  index = 0;
  for (const auto& v : doc["volumes"]) {
    const std::string what = "volume entry " + std::to_string(index++) +
                             (v.is_object() && v.contains("name") && v["name"].is_string()
                                  ? " ('" + v["name"].get<std::string>() + "')"
                                  : std::string());
    auto record = parse_volume(v, what, version);
    if (!record.ok()) {
      return bad(origin, record.error().message());
    }
    for (const auto& other : state.volumes) {
      if (other.name == record->name) {
        return bad(origin, what + ": a second volume named '" + record->name + "'");
      }
    }
    for (const auto& store : record->stores) {
      if (std::none_of(state.stores.begin(), state.stores.end(),
                       [&](const StoreRecord& s) { return s.name == store; })) {
        return bad(origin, std::string(what)
                               .append(" lists store '")
                               .append(store)
                               .append("', which is not in 'stores'"));
      }
    }
    state.volumes.push_back(std::move(*record));
  }
  return state;
}

Result<DaemonState> load_state(const std::string& dir) {
  const std::string path = dir + "/" + kStateFileName;
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) {
    if (errno == ENOENT) {
      return DaemonState{};
    }
    return errno_error("cannot open state file " + path);
  }
  std::string text;
  char buffer[65536];
  for (;;) {
    const ssize_t n = ::read(fd.get(), buffer, sizeof(buffer));
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return errno_error("cannot read state file " + path);
    }
    if (n == 0) {
      break;
    }
    text.append(buffer, static_cast<size_t>(n));
  }
  return state_from_json(text, "state file " + path);
}

Status save_state(const std::string& dir, const DaemonState& state, const SaveHook& hook) {
  const std::string path = dir + "/" + kStateFileName;
  const std::string tmp = path + ".tmp";
  const std::string text = state_to_json(state);
  {
    UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    if (!fd) {
      return errno_error("cannot create " + tmp);
    }
    const size_t half = text.size() / 2;
    UBLKVOL_TRY(write_all(fd.get(), text.data(), half, tmp));
    UBLKVOL_TRY(stop_at(hook, SaveStep::kTmpHalfWritten, "half the temporary file was written"));
    UBLKVOL_TRY(write_all(fd.get(), text.data() + half, text.size() - half, tmp));
    UBLKVOL_TRY(stop_at(hook, SaveStep::kTmpWritten, "the temporary file was written"));
    if (::fsync(fd.get()) != 0) {
      return errno_error("cannot fsync " + tmp);
    }
  }
  UBLKVOL_TRY(stop_at(hook, SaveStep::kTmpSynced, "the temporary file was synced"));
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    return errno_error("cannot rename " + tmp + " to " + path);
  }
  UBLKVOL_TRY(stop_at(hook, SaveStep::kRenamed, "the rename"));
  UniqueFd dir_fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir_fd || ::fsync(dir_fd.get()) != 0) {
    return errno_error("cannot fsync directory " + dir);
  }
  return ok_status();
}

}  // namespace ublkvol::daemon
