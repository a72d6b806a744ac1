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

Status validate_replicated(const ServeConfig& config) {
  const size_t n = config.replica_files.size();
  if (n == 0 || n > kMaxServeReplicas) {
    return Error(EINVAL, "the replicated backend needs 1 to " + std::to_string(kMaxServeReplicas) +
                             " --replica-file options, got " + std::to_string(n));
  }
  for (size_t i = 0; i < n; ++i) {
    if (config.replica_files[i].empty()) {
      return Error(EINVAL, "--replica-file " + std::to_string(i) + " is an empty path");
    }
    for (size_t j = 0; j < i; ++j) {
      if (config.replica_files[i] == config.replica_files[j]) {
        return Error(EINVAL, "--replica-file " + config.replica_files[i] +
                                 " is given twice: every replica needs its own store file");
      }
    }
  }
  if (config.block_size != 4096) {
    return Error(EINVAL, "the replicated backend has 4096-byte blocks (--block-size " +
                             std::to_string(config.block_size) + " was given)");
  }
  if (config.size_bytes % 4096 != 0) {
    return Error(EINVAL, "volume size " + std::to_string(config.size_bytes) +
                             " is not a multiple of 4096 (the replicated backend's block size)");
  }
  if (config.volume_name.empty()) {
    return Error(EINVAL, "--volume-name is empty");
  }
  return ok_status();
}
}  // namespace

Status validate_serve_config(const ServeConfig& config) {
  if (config.backend != "null" && config.backend != "memory" && config.backend != "replicated") {
    return Error(EINVAL,
                 "unknown backend '" + config.backend + "' (use null, memory or replicated)");
  }
  if (config.backend != "memory" && !config.backing_file.empty()) {
    return Error(EINVAL, "--backing-file needs the memory backend");
  }
  if (config.backend != "replicated" && !config.replica_files.empty()) {
    return Error(EINVAL, "--replica-file needs the replicated backend");
  }
  if (config.backend != "replicated" && !config.snapshot_name.empty()) {
    return Error(EINVAL, "--snapshot needs the replicated backend");
  }
  uint64_t size = config.size_bytes;
  if (config.backend == "replicated") {
    UBLKVOL_TRY(validate_replicated(config));
    if (size == 0) {
      size = 4096;  // taken from the replica files when they are opened
    }
  }
  // The device's view of the volume the backend would build.
  engine::VolumeInfo info;
  info.name = config.backend;
  info.size_bytes = size;
  info.block_size = config.block_size;
  info.max_io_bytes = kDefaultMaxIoBytes;
  return validate_device_options(config.device, info);
}

Result<std::unique_ptr<engine::Volume>> make_backend(const ServeConfig& config) {
  UBLKVOL_TRY(validate_serve_config(config));
  if (config.backend == "replicated") {
    return Error(EINVAL, "the replicated backend is opened with open_replicated_backend()");
  }
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
  if (config.backend == "replicated") {
    r.backend["volume_name"] = config.volume_name;
    r.backend["write_through"] = config.write_through ? "1" : "0";
    r.backend["replicas"] = std::to_string(config.replica_files.size());
    for (size_t i = 0; i < config.replica_files.size(); ++i) {
      r.backend["replica_file." + std::to_string(i)] = config.replica_files[i];
    }
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
  c.replica_files.clear();
  if (c.backend == "replicated") {
    const std::string* name = get("volume_name");
    const std::string* replicas = get("replicas");
    auto count = replicas == nullptr ? Result<uint64_t>(Error(EINVAL, "")) : parse_size(*replicas);
    if (name == nullptr || !count || *count == 0 || *count > kMaxServeReplicas) {
      return Error(EINVAL,
                   "recovery record: a replicated backend needs 'volume_name' and 'replicas' (1.." +
                       std::to_string(kMaxServeReplicas) + ")");
    }
    c.volume_name = *name;
    const std::string* write_through = get("write_through");
    c.write_through = write_through != nullptr && *write_through == "1";
    for (uint64_t i = 0; i < *count; ++i) {
      const std::string key = "replica_file." + std::to_string(i);
      const std::string* path = get(key.c_str());
      if (path == nullptr) {
        return Error(EINVAL, "recovery record: '" + key + "' is missing");
      }
      c.replica_files.push_back(*path);
    }
  }
  c.device.dev_id = static_cast<int32_t>(record.dev_id);
  c.device.queues = record.queues;
  c.device.queue_depth = record.queue_depth;
  c.device.recoverable = true;
  UBLKVOL_TRY(validate_serve_config(c));
  return c;
}

}  // namespace ublkvol::ublk
