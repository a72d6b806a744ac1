#include "serve_config.h"

#include <cctype>
#include <cerrno>
#include <limits>

namespace ublkvol::ublk {

Result<uint64_t> parse_size(const std::string& text) {
  const std::string what = "size '" + text + "'";
  size_t i = 0;
  uint64_t value = 0;
  while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i])) != 0) {
    const auto digit = static_cast<uint64_t>(text[i] - '0');
    if (value > (std::numeric_limits<uint64_t>::max() - digit) / 10) {
      return Error(ERANGE, what + " is too large");
    }
    value = value * 10 + digit;
    ++i;
  }
  if (i == 0) {
    return Error(EINVAL, what + " is not a number (use e.g. 4096, 64K, 512M, 1G)");
  }
  std::string suffix = text.substr(i);
  unsigned shift = 0;
  if (!suffix.empty()) {
    const char unit = static_cast<char>(std::toupper(static_cast<unsigned char>(suffix[0])));
    const std::string rest = suffix.substr(1);
    switch (unit) {
      case 'K':
        shift = 10;
        break;
      case 'M':
        shift = 20;
        break;
      case 'G':
        shift = 30;
        break;
      case 'T':
        shift = 40;
        break;
      default:
        return Error(EINVAL, what + " has an unknown unit (use K, M, G or T)");
    }
    if (!rest.empty() && rest != "B" && rest != "iB" && rest != "b" && rest != "ib") {
      return Error(EINVAL, what + " has an unknown unit (use K, M, G or T)");
    }
  }
  if (shift != 0 && value > (std::numeric_limits<uint64_t>::max() >> shift)) {
    return Error(ERANGE, what + " is too large");
  }
  return value << shift;
}

namespace {
engine::SimpleVolumeOptions simple_options(const ServeConfig& config) {
  engine::SimpleVolumeOptions o;
  o.name = config.backend;
  o.size_bytes = config.size_bytes;
  o.block_size = config.block_size;
  o.queues = config.device.queues;
  o.backing_file = config.backing_file;
  return o;
}
}  // namespace

Status validate_serve_config(const ServeConfig& config) {
  if (config.backend != "null" && config.backend != "memory") {
    return Error(EINVAL, "unknown backend '" + config.backend + "' (use null or memory)");
  }
  if (config.backend == "null" && !config.backing_file.empty()) {
    return Error(EINVAL, "--backing-file needs the memory backend");
  }
  // The device's view of the volume the backend would build.
  engine::VolumeInfo info;
  info.name = config.backend;
  info.size_bytes = config.size_bytes;
  info.block_size = config.block_size;
  info.max_io_bytes = kDefaultMaxIoBytes;
  return validate_device_options(config.device, info);
}

Result<std::unique_ptr<engine::Volume>> make_backend(const ServeConfig& config) {
  UBLKVOL_TRY(validate_serve_config(config));
  if (config.backend == "null") {
    return engine::make_null_volume(simple_options(config));
  }
  return engine::make_memory_volume(simple_options(config));
}

RecoveryRecord make_recovery_record(const ServeConfig& config, uint32_t dev_id, unsigned queues,
                                    unsigned depth) {
  RecoveryRecord r;
  r.dev_id = dev_id;
  r.queues = queues;
  r.queue_depth = depth;
  r.backend["type"] = config.backend;
  r.backend["size"] = std::to_string(config.size_bytes);
  r.backend["block_size"] = std::to_string(config.block_size);
  if (!config.backing_file.empty()) {
    r.backend["backing_file"] = config.backing_file;
  }
  return r;
}

Result<ServeConfig> config_from_record(const RecoveryRecord& record, const ServeConfig& base) {
  ServeConfig c = base;
  auto get = [&](const char* key) -> const std::string* {
    auto it = record.backend.find(key);
    return it == record.backend.end() ? nullptr : &it->second;
  };
  const std::string* type = get("type");
  const std::string* size = get("size");
  const std::string* block = get("block_size");
  if (type == nullptr || size == nullptr || block == nullptr) {
    return Error(EINVAL, "recovery record: backend needs 'type', 'size' and 'block_size'");
  }
  auto size_value = parse_size(*size);
  auto block_value = parse_size(*block);
  if (!size_value || !block_value || *block_value > UINT32_MAX) {
    return Error(EINVAL, "recovery record: backend size or block_size is not a number");
  }
  c.backend = *type;
  c.size_bytes = *size_value;
  c.block_size = static_cast<uint32_t>(*block_value);
  const std::string* file = get("backing_file");
  c.backing_file = file == nullptr ? std::string() : *file;
  c.device.dev_id = static_cast<int32_t>(record.dev_id);
  c.device.queues = record.queues;
  c.device.queue_depth = record.queue_depth;
  c.device.recoverable = true;
  UBLKVOL_TRY(validate_serve_config(c));
  return c;
}

}  // namespace ublkvol::ublk
