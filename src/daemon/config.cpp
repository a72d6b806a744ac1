#include "ublkvol/daemon/config.h"

#include <sys/un.h>

#include <cerrno>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <utility>

#include "ublkvol/daemon/protocol.h"
#include "ublkvol/ublk/features.h"

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

Status read_string_list(const Json& value, const std::string& key, const std::string& origin,
                        std::vector<std::string>& out) {
  if (!value.is_array()) {
    return invalid(origin,
                   "key '" + key + "' must be an array of strings, not " + value.type_name());
  }
  out.clear();
  for (const Json& entry : value) {
    if (!entry.is_string()) {
      return invalid(origin, "key '" + key + "' must hold strings, not " + entry.type_name());
    }
    out.push_back(entry.get<std::string>());
  }
  return ok_status();
}

// An absolute path without '.' or '..' components and without control
// characters (what store_dirs entries must be).
bool plain_absolute_path(const std::string& path) {
  if (path.empty() || path.front() != '/') {
    return false;
  }
  for (const char c : path) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      return false;
    }
  }
  size_t start = 1;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string::npos) {
      end = path.size();
    }
    const std::string_view part(path.data() + start, end - start);
    if (part == "." || part == "..") {
      return false;
    }
    start = end + 1;
  }
  return true;
}

}  // namespace

Result<DaemonConfig> parse_config(std::string_view text, const std::string& origin) {
  auto parsed = parse_json_unique_keys(text);
  if (!parsed.ok()) {
    return invalid(origin, parsed.error().message());
  }
  const Json& doc = *parsed;
  if (!doc.is_object()) {
    return invalid(origin, std::string("must be a JSON object, not ") + doc.type_name());
  }
  DaemonConfig config;
  bool queues_given = false;
  for (const auto& [key, value] : doc.items()) {
    if (key == "state_dir") {
      UBLKVOL_TRY(read_string(value, key, origin, config.state_dir));
    } else if (key == "control_socket") {
      UBLKVOL_TRY(read_string(value, key, origin, config.control_socket));
    } else if (key == "socket_group") {
      UBLKVOL_TRY(read_string(value, key, origin, config.socket_group));
    } else if (key == "queues") {
      UBLKVOL_TRY(read_uint(value, key, origin, config.queues));
      queues_given = true;
    } else if (key == "reactors") {
      if (value.is_null()) {
        config.reactors.reset();  // a thread per store and per queue
      } else {
        unsigned n = 0;
        UBLKVOL_TRY(read_uint(value, key, origin, n));
        config.reactors = n;
      }
    } else if (key == "reactor_poll_us") {
      if (value.is_null()) {
        config.reactor_poll_us.reset();  // automatic
      } else {
        unsigned us = 0;
        UBLKVOL_TRY(read_uint(value, key, origin, us));
        config.reactor_poll_us = us;
      }
    } else if (key == "reactor_poll_max_percent") {
      UBLKVOL_TRY(read_uint(value, key, origin, config.reactor_poll_max_percent));
    } else if (key == "queue_depth") {
      UBLKVOL_TRY(read_uint(value, key, origin, config.queue_depth));
    } else if (key == "io_deadline_ms") {
      UBLKVOL_TRY(read_uint(value, key, origin, config.io_deadline_ms));
    } else if (key == "rebuild_mb_per_s") {
      UBLKVOL_TRY(read_uint(value, key, origin, config.rebuild_mb_per_s));
    } else if (key == "rebuild_busy_percent") {
      UBLKVOL_TRY(read_uint(value, key, origin, config.rebuild_busy_percent));
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
    } else if (key == "ublk_features_off") {
      UBLKVOL_TRY(read_string_list(value, key, origin, config.ublk_features_off));
    } else if (key == "write_through") {
      UBLKVOL_TRY(read_bool(value, key, origin, config.write_through));
    } else if (key == "zero_copy") {
      UBLKVOL_TRY(read_bool(value, key, origin, config.zero_copy));
    } else if (key == "store_data_order") {
      UBLKVOL_TRY(read_string(value, key, origin, config.store_data_order));
    } else if (key == "store_submit_batch") {
      UBLKVOL_TRY(read_uint(value, key, origin, config.store_submit_batch));
    } else if (key == "log_level") {
      UBLKVOL_TRY(read_string(value, key, origin, config.log_level));
    } else if (key == "store_dirs") {
      UBLKVOL_TRY(read_string_list(value, key, origin, config.store_dirs));
    } else if (key == "max_connections") {
      UBLKVOL_TRY(read_uint(value, key, origin, config.max_connections));
    } else if (key == "root_reserved_connections") {
      UBLKVOL_TRY(read_uint(value, key, origin, config.root_reserved_connections));
    } else if (key == "max_connections_per_uid") {
      UBLKVOL_TRY(read_uint(value, key, origin, config.max_connections_per_uid));
    } else if (key == "request_timeout_ms") {
      UBLKVOL_TRY(read_uint(value, key, origin, config.request_timeout_ms));
    } else if (key == "idle_timeout_ms") {
      UBLKVOL_TRY(read_uint(value, key, origin, config.idle_timeout_ms));
    } else {
      return invalid(origin, "unknown key '" + key + "'");
    }
  }
  if (queues_given && config.queues == 0) {
    return invalid(origin, "queues 0 is out of range 1..59");
  }
  if (!queues_given) {
    // With reactors: one per reactor, once the daemon knows how many.
    config.queues = config.reactors ? 0 : 1;
  }
  Status valid = validate_config(config);
  if (!valid.ok()) {
    return valid.error().with_context(origin);
  }
  return config;
}

Result<DaemonConfig> load_config(const std::string& path, bool must_exist) {
  std::ifstream in(path);
  if (!in) {
    if (errno == ENOENT && must_exist) {
      return Error(ENOENT, "config file " + path +
                               " does not exist (--config names a file that must exist; without "
                               "--config a missing " +
                               kDefaultConfigPath + " means all defaults)");
    }
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

std::chrono::microseconds reactor_poll_in_flight(const DaemonConfig& config, size_t cpus) {
  if (config.reactor_poll_us) {
    return std::chrono::microseconds(*config.reactor_poll_us);
  }
  // Polling pays only where reactors do not take the CPU another busy thread
  // (the other reactor, the kernel's ublk and io_uring work) needs.
  return cpus >= 4 ? std::chrono::microseconds(50) : std::chrono::microseconds(0);
}

Status validate_config(const DaemonConfig& config) {
  if (auto off = ublk::optional_features_mask(config.ublk_features_off); !off.ok()) {
    return Error(EINVAL, "ublk_features_off: " + off.error().message());
  }
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
  if (config.reactors && *config.reactors > 1024) {
    return Error(EINVAL, "reactors " + std::to_string(*config.reactors) +
                             " is out of range 0..1024 (0: one per CPU)");
  }
  if (config.reactor_poll_us && *config.reactor_poll_us > 10'000) {
    return Error(EINVAL, "reactor_poll_us " + std::to_string(*config.reactor_poll_us) +
                             " is out of range 0..10000 (0: off, null: automatic)");
  }
  if (config.reactor_poll_max_percent < 1 || config.reactor_poll_max_percent > 100) {
    return Error(EINVAL, "reactor_poll_max_percent " +
                             std::to_string(config.reactor_poll_max_percent) +
                             " is out of range 1..100");
  }
  if ((config.queues < 1 && !config.reactors) || config.queues > 59) {
    return Error(EINVAL, "queues " + std::to_string(config.queues) +
                             " is out of range 1..59 (the 60th engine queue is the NBD export's)");
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
  if (config.rebuild_busy_percent < 1 || config.rebuild_busy_percent > 100) {
    return Error(EINVAL, "rebuild_busy_percent " + std::to_string(config.rebuild_busy_percent) +
                             " is out of range 1..100");
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
  for (const std::string& dir : config.store_dirs) {
    if (!plain_absolute_path(dir)) {
      return Error(EINVAL, "store_dirs entry '" + dir +
                               "' must be an absolute path without '.' or '..' components");
    }
  }
  if (config.max_connections < 1 || config.max_connections > 65536) {
    return Error(EINVAL, "max_connections " + std::to_string(config.max_connections) +
                             " is out of range 1..65536");
  }
  if (config.root_reserved_connections >= config.max_connections) {
    return Error(
        EINVAL, "root_reserved_connections " + std::to_string(config.root_reserved_connections) +
                    " must be less than max_connections " + std::to_string(config.max_connections));
  }
  if (config.max_connections_per_uid < 1) {
    return Error(EINVAL, "max_connections_per_uid must be at least 1");
  }
  for (const auto& [key, value] : {std::pair{"request_timeout_ms", config.request_timeout_ms},
                                   std::pair{"idle_timeout_ms", config.idle_timeout_ms}}) {
    if (value < 100 || value > 86'400'000) {
      return Error(EINVAL, std::string(key) + " " + std::to_string(value) +
                               " is out of range 100..86400000");
    }
  }
  return ok_status();
}

}  // namespace ublkvol::daemon
