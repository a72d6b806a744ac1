#include "ublkvol/daemon/state_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

#include "ublkvol/common/unique_fd.h"
#include "ublkvol/daemon/protocol.h"

namespace ublkvol::daemon {
namespace {

constexpr const char* kFormat = "ublk-volumed-state";
constexpr int kVersion = 1;

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
    volumes.push_back(std::move(volume));
  }
  nlohmann::json doc = {
      {"format", kFormat}, {"version", kVersion}, {"stores", stores}, {"volumes", volumes}};
  return doc.dump(2) + "\n";
}

Result<DaemonState> state_from_json(const std::string& text, const std::string& origin) {
  const nlohmann::json doc = nlohmann::json::parse(text, nullptr, false);
  if (doc.is_discarded() || !doc.is_object()) {
    return bad(origin, "not a JSON object (the file is damaged)");
  }
  if (doc.value("format", std::string()) != kFormat) {
    return bad(origin,
               std::string("not a ublk-volumed state file (format is not '") + kFormat + "')");
  }
  if (!doc.contains("version") || !doc["version"].is_number_unsigned() ||
      doc["version"].get<uint64_t>() != kVersion) {
    return bad(origin, "unsupported state file version (this daemon reads version 1)");
  }
  DaemonState state;
  try {
    for (const auto& s : doc.at("stores")) {
      StoreRecord record{s.at("name").get<std::string>(), s.at("path").get<std::string>(),
                         s.at("uuid").get<std::string>()};
      if (Status valid = validate_name(record.name, "store name"); !valid.ok()) {
        return valid.error().with_context(origin);
      }
      state.stores.push_back(std::move(record));
    }
    for (const auto& v : doc.at("volumes")) {
      VolumeRecord record;
      record.name = v.at("name").get<std::string>();
      if (Status valid = validate_name(record.name, "volume name"); !valid.ok()) {
        return valid.error().with_context(origin);
      }
      record.size_bytes = v.at("size_bytes").get<uint64_t>();
      record.stores = v.at("stores").get<std::vector<std::string>>();
      record.min_replicas = v.at("min_replicas").get<unsigned>();
      const auto& exposed = v.at("exposed");
      if (!exposed.is_null()) {
        record.exposed =
            ExposeRecord{exposed.at("dev_id").get<uint32_t>(), exposed.at("queues").get<unsigned>(),
                         exposed.at("queue_depth").get<unsigned>()};
      }
      state.volumes.push_back(std::move(record));
    }
  } catch (const nlohmann::json::exception& e) {
    return bad(origin, std::string("malformed entry: ") + e.what());
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
