#include "ublkvol/daemon/config.h"

#include <sys/un.h>

#include <cerrno>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>

namespace ublkvol::daemon {
namespace {

using Json = nlohmann::json;

Error invalid(const std::string& origin, const std::string& message) {
  return Error(EINVAL, origin + ": " + message);
}

Status read_string(const Json& value, const std::string& key, const std::string& origin,
                   std::string& out) {
  if (!value.is_string()) {
    return invalid(origin, "key '" + key + "' must be a string, not " + value.type_name());
  }
  out = value.get<std::string>();
  return ok_status();
}

template <typename T>
Status read_uint(const Json& value, const std::string& key, const std::string& origin, T& out) {
  if (!value.is_number_unsigned()) {
    return invalid(origin, "key '" + key + "' must be an unsigned integer, not " +
                               (value.is_number() ? value.dump() : value.type_name()));
  }
  const uint64_t v = value.get<uint64_t>();
  if (v > std::numeric_limits<T>::max()) {
    return invalid(origin, "key '" + key + "' value " + std::to_string(v) + " is too large");
  }
  out = static_cast<T>(v);
  return ok_status();
}

Status read_bool(const Json& value, const std::string& key, const std::string& origin, bool& out) {
  if (!value.is_boolean()) {
    return invalid(origin, "key '" + key + "' must be true or false, not " + value.type_name());
  }
  out = value.get<bool>();
  return ok_status();
}

}  // namespace

Result<DaemonConfig> parse_config(std::string_view text, const std::string& origin) {
  const Json doc = Json::parse(text.begin(), text.end(), nullptr, false);
  if (doc.is_discarded()) {
    return invalid(origin, "not valid JSON");
  }
  if (!doc.is_object()) {
    return invalid(origin, std::string("must be a JSON object, not ") + doc.type_name());
  }
  DaemonConfig config;
  for (const auto& [key, value] : doc.items()) {
    if (key == "state_dir") {
      UBLKVOL_TRY(read_string(value, key, origin, config.state_dir));
    } else if (key == "control_socket") {
      UBLKVOL_TRY(read_string(value, key, origin, config.control_socket));
    } else if (key == "socket_group") {
      UBLKVOL_TRY(read_string(value, key, origin, config.socket_group));
    } else if (key == "queues") {
      UBLKVOL_TRY(read_uint(value, key, origin, config.queues));
    } else if (key == "queue_depth") {
      UBLKVOL_TRY(read_uint(value, key, origin, config.queue_depth));
    } else if (key == "io_deadline_ms") {
      UBLKVOL_TRY(read_uint(value, key, origin, config.io_deadline_ms));
    } else if (key == "rebuild_mb_per_s") {
      UBLKVOL_TRY(read_uint(value, key, origin, config.rebuild_mb_per_s));
    } else if (key == "scrub_interval_s") {
      UBLKVOL_TRY(read_uint(value, key, origin, config.scrub_interval_s));
    } else if (key == "scrub_mb_per_s") {
      UBLKVOL_TRY(read_uint(value, key, origin, config.scrub_mb_per_s));
    } else if (key == "scrub_repair") {
      UBLKVOL_TRY(read_bool(value, key, origin, config.scrub_repair));
    } else if (key == "min_replicas") {
      UBLKVOL_TRY(read_uint(value, key, origin, config.min_replicas));
    } else if (key == "recoverable_devices") {
      UBLKVOL_TRY(read_bool(value, key, origin, config.recoverable_devices));
    } else if (key == "write_through") {
      UBLKVOL_TRY(read_bool(value, key, origin, config.write_through));
    } else if (key == "store_data_order") {
      UBLKVOL_TRY(read_string(value, key, origin, config.store_data_order));
    } else if (key == "store_submit_batch") {
      UBLKVOL_TRY(read_uint(value, key, origin, config.store_submit_batch));
    } else if (key == "log_level") {
      UBLKVOL_TRY(read_string(value, key, origin, config.log_level));
    } else {
      return invalid(origin, "unknown key '" + key + "'");
    }
  }
  Status valid = validate_config(config);
  if (!valid.ok()) {
    return valid.error().with_context(origin);
  }
  return config;
}

Result<DaemonConfig> load_config(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    if (errno == ENOENT) {
      DaemonConfig defaults;
      UBLKVOL_TRY(validate_config(defaults));
      return defaults;
    }
    return errno_error("cannot read config file " + path);
  }
  std::stringstream text;
  text << in.rdbuf();
  return parse_config(text.str(), path);
}

Status validate_config(const DaemonConfig& config) {
  if (config.state_dir.empty() || config.state_dir.front() != '/') {
    return Error(EINVAL, "state_dir '" + config.state_dir + "' must be an absolute path");
  }
  if (config.control_socket.empty() || config.control_socket.front() != '/') {
    return Error(EINVAL, "control_socket '" + config.control_socket + "' must be an absolute path");
  }
  if (config.control_socket.size() >= sizeof(sockaddr_un{}.sun_path)) {
    return Error(EINVAL, "control_socket '" + config.control_socket + "' is longer than " +
                             std::to_string(sizeof(sockaddr_un{}.sun_path) - 1) + " bytes");
  }
  if (config.queues < 1 || config.queues > 60) {
    return Error(EINVAL, "queues " + std::to_string(config.queues) + " is out of range 1..60");
  }
  if (config.queue_depth < 4 || config.queue_depth > 4096) {
    return Error(EINVAL,
                 "queue_depth " + std::to_string(config.queue_depth) + " is out of range 4..4096");
  }
  if (config.io_deadline_ms < 100 || config.io_deadline_ms > 3'600'000) {
    return Error(EINVAL, "io_deadline_ms " + std::to_string(config.io_deadline_ms) +
                             " is out of range 100..3600000");
  }
  if (config.min_replicas < 1 || config.min_replicas > 4) {
    return Error(EINVAL,
                 "min_replicas " + std::to_string(config.min_replicas) + " is out of range 1..4");
  }
  if (config.rebuild_mb_per_s > (uint64_t{1} << 30)) {
    return Error(EINVAL, "rebuild_mb_per_s " + std::to_string(config.rebuild_mb_per_s) +
                             " is out of range 0..1073741824");
  }
  if (config.scrub_interval_s > 366ULL * 24 * 3600 || config.scrub_mb_per_s > (uint64_t{1} << 30)) {
    return Error(EINVAL, "scrub_interval_s " + std::to_string(config.scrub_interval_s) +
                             " / scrub_mb_per_s " + std::to_string(config.scrub_mb_per_s) +
                             " out of range 0..31622400 / 0..1073741824");
  }
  if (config.store_data_order != "flush" && config.store_data_order != "fua") {
    return Error(EINVAL,
                 "store_data_order '" + config.store_data_order + "' is not one of flush, fua");
  }
  if (config.store_submit_batch > 256) {
    return Error(EINVAL, "store_submit_batch " + std::to_string(config.store_submit_batch) +
                             " is out of range 0..256 (the store device's queue depth)");
  }
  static constexpr const char* kLevels[] = {"trace", "debug",    "info", "warn",
                                            "error", "critical", "off"};
  bool level_ok = false;
  for (const char* level : kLevels) {
    level_ok = level_ok || config.log_level == level;
  }
  if (!level_ok) {
    return Error(EINVAL, "log_level '" + config.log_level +
                             "' is not one of trace, debug, info, warn, error, critical, off");
  }
  return ok_status();
}

}  // namespace ublkvol::daemon
