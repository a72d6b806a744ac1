#include "ublkvol/ublk/recovery_record.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "ublkvol/common/unique_fd.h"

namespace ublkvol::ublk {
namespace {

constexpr const char* kFormat = "ublkvol-recovery";
constexpr int kVersion = 1;

std::string directory_of(const std::string& path) {
  const auto slash = path.rfind('/');
  if (slash == std::string::npos) {
    return ".";
  }
  return slash == 0 ? "/" : path.substr(0, slash);
}

Status write_all(int fd, const std::string& data, const std::string& what) {
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return errno_error(what + ": write failed");
    }
    done += static_cast<size_t>(n);
  }
  return ok_status();
}

}  // namespace

Status save_recovery_record(const std::string& path, const RecoveryRecord& record) {
  nlohmann::json j;
  j["format"] = kFormat;
  j["version"] = kVersion;
  j["dev_id"] = record.dev_id;
  j["queues"] = record.queues;
  j["queue_depth"] = record.queue_depth;
  j["backend"] = record.backend;
  const std::string text = j.dump(2) + "\n";
  const std::string tmp = path + ".tmp";
  const std::string what = "recovery record " + path;
  {
    UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    if (!fd) {
      return errno_error(what + ": cannot create " + tmp);
    }
    UBLKVOL_TRY(write_all(fd.get(), text, what));
    if (::fsync(fd.get()) != 0) {
      return errno_error(what + ": fsync failed");
    }
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    return errno_error(what + ": cannot rename " + tmp + " into place");
  }
  UniqueFd dir(::open(directory_of(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir) {
    ::fsync(dir.get());
  }
  return ok_status();
}

Result<RecoveryRecord> load_recovery_record(const std::string& path) {
  const std::string what = "recovery record " + path;
  if (::access(path.c_str(), R_OK) != 0) {
    return errno_error(what + ": cannot read");
  }
  std::ifstream in(path);
  if (!in) {
    return Error(EIO, what + ": cannot open");
  }
  std::stringstream text;
  text << in.rdbuf();
  const nlohmann::json j = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return Error(EINVAL, what + ": not a JSON object (corrupted?)");
  }
  auto field = [&](const char* key) -> const nlohmann::json* {
    auto it = j.find(key);
    return it == j.end() ? nullptr : &*it;
  };
  const auto* format = field("format");
  if (format == nullptr || !format->is_string() || format->get<std::string>() != kFormat) {
    return Error(EINVAL, what + ": not a ublkvol recovery record (format field missing or wrong)");
  }
  const auto* version = field("version");
  if (version == nullptr || !version->is_number_integer() || version->get<int>() != kVersion) {
    return Error(EINVAL, what + ": unsupported version (this build reads version " +
                             std::to_string(kVersion) + ")");
  }
  RecoveryRecord record;
  for (const char* key : {"dev_id", "queues", "queue_depth"}) {
    const auto* value = field(key);
    if (value == nullptr || !value->is_number_unsigned() ||
        value->get<uint64_t>() > (key[0] == 'd' ? 0xfffffU : 4096U)) {
      return Error(EINVAL, what + ": field '" + key + "' missing or not a valid number");
    }
  }
  record.dev_id = j["dev_id"].get<uint32_t>();
  record.queues = j["queues"].get<unsigned>();
  record.queue_depth = j["queue_depth"].get<unsigned>();
  const auto* backend = field("backend");
  if (backend == nullptr || !backend->is_object()) {
    return Error(EINVAL, what + ": field 'backend' missing or not an object");
  }
  for (const auto& [key, value] : backend->items()) {
    if (!value.is_string()) {
      return Error(
          EINVAL,
          std::string(what).append(": backend field '").append(key).append("' is not a string"));
    }
    record.backend[key] = value.get<std::string>();
  }
  return record;
}

Status remove_recovery_record(const std::string& path) {
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    return errno_error("recovery record " + path + ": cannot remove");
  }
  return ok_status();
}

}  // namespace ublkvol::ublk
