#include "ublkvol/ublk/features.h"

#include <cerrno>
#include <charconv>
#include <cstdio>

#include "ublkvol/ublk/uapi.h"

namespace ublkvol::ublk {
namespace {

struct Named {
  uint64_t flag;
  const char* name;
};

constexpr Named kNames[] = {
    {uapi::kFSupportZeroCopy, "SUPPORT_ZERO_COPY"},
    {uapi::kFUringCmdCompInTask, "URING_CMD_COMP_IN_TASK"},
    {uapi::kFNeedGetData, "NEED_GET_DATA"},
    {uapi::kFUserRecovery, "USER_RECOVERY"},
    {uapi::kFUserRecoveryReissue, "USER_RECOVERY_REISSUE"},
    {uapi::kFUnprivilegedDev, "UNPRIVILEGED_DEV"},
    {uapi::kFCmdIoctlEncode, "CMD_IOCTL_ENCODE"},
    {uapi::kFUserCopy, "USER_COPY"},
    {uapi::kFZoned, "ZONED"},
    {uapi::kFUserRecoveryFailIo, "USER_RECOVERY_FAIL_IO"},
    {uapi::kFUpdateSize, "UPDATE_SIZE"},
    {uapi::kFAutoBufReg, "AUTO_BUF_REG"},
    {uapi::kFQuiesce, "QUIESCE"},
    {uapi::kFPerIoDaemon, "PER_IO_DAEMON"},
    {uapi::kFBufRegOffDaemon, "BUF_REG_OFF_DAEMON"},
};

// What the daemon uses when the kernel has it (docs/operations.md, "Kernels").
constexpr OptionalFeature kOptional[] = {
    {uapi::kFUpdateSize, "UPDATE_SIZE", "online resize of an exposed volume", "6.16"},
    {uapi::kFQuiesce, "QUIESCE", "quiesced daemon restart and stop", "6.16"},
};

const char* known_name(uint64_t flag) {
  for (const Named& n : kNames) {
    if (n.flag == flag) {
      return n.name;
    }
  }
  return nullptr;
}

}  // namespace

std::string feature_name(uint64_t flag) {
  if (const char* name = known_name(flag)) {
    return std::string("UBLK_F_") + name;
  }
  for (unsigned bit = 0; bit < 64; ++bit) {
    if (flag == (1ULL << bit)) {
      return "bit " + std::to_string(bit);
    }
  }
  return "mask " + std::to_string(flag);
}

std::string describe_features(uint64_t flags) {
  if (flags == 0) {
    return "none";
  }
  std::string out;
  uint64_t unknown = 0;
  for (unsigned bit = 0; bit < 64; ++bit) {
    const uint64_t flag = 1ULL << bit;
    if ((flags & flag) == 0) {
      continue;
    }
    if (const char* name = known_name(flag)) {
      if (!out.empty()) {
        out += '|';
      }
      out += name;
    } else {
      unknown |= flag;
    }
  }
  if (unknown != 0) {
    char hex[32];
    (void)std::snprintf(hex, sizeof(hex), "0x%llx", static_cast<unsigned long long>(unknown));
    if (!out.empty()) {
      out += '|';
    }
    out += hex;
  }
  return out;
}

Status require_features(uint64_t available, uint64_t needed, const std::string& purpose) {
  const uint64_t missing = needed & ~available;
  if (missing == 0) {
    return ok_status();
  }
  std::string names;
  for (unsigned bit = 0; bit < 64; ++bit) {
    if ((missing & (1ULL << bit)) != 0) {
      if (!names.empty()) {
        names += ", ";
      }
      names += feature_name(1ULL << bit);
    }
  }
  return Error(EOPNOTSUPP, "the kernel's ublk_drv lacks " + names + ", needed for " + purpose +
                               " (it offers " + describe_features(available) +
                               "; the project targets Linux 6.12)");
}

std::optional<KernelVersion> parse_kernel_release(std::string_view release) {
  unsigned parts[3] = {0, 0, 0};
  const char* p = release.data();
  const char* end = release.data() + release.size();
  for (unsigned i = 0; i < 3; ++i) {
    const auto [next, ec] = std::from_chars(p, end, parts[i]);
    if (ec != std::errc()) {
      if (i < 2) {
        return std::nullopt;  // "major.minor" at least
      }
      break;
    }
    p = next;
    if (p == end || *p != '.') {
      if (i < 1) {
        return std::nullopt;
      }
      break;
    }
    ++p;
  }
  return KernelVersion{parts[0], parts[1], parts[2]};
}

std::string known_bad_kernel_warning(std::string_view release) {
  const auto v = parse_kernel_release(release);
  if (!v) {
    return "";
  }
  const std::string name = "Linux " + std::string(release);
  if (v->major == 6 && v->minor == 17) {
    return name +
           " has known ublk_drv regressions (6.17.x: ADD_DEV / START_DEV failures); use 6.12, "
           "6.16 or >= 6.18.6";
  }
  if (v->major == 6 && v->minor == 18 && v->patch >= 4 && v->patch <= 5) {
    return name +
           " has known ublk_drv regressions (6.18.4-6.18.5: ADD_DEV / START_DEV failures); use "
           ">= 6.18.6";
  }
  return "";
}

std::span<const OptionalFeature> optional_features() { return kOptional; }

Result<uint64_t> optional_features_mask(const std::vector<std::string>& names) {
  uint64_t mask = 0;
  for (const std::string& name : names) {
    const OptionalFeature* found = nullptr;
    for (const OptionalFeature& f : kOptional) {
      if (name == f.name) {
        found = &f;
      }
    }
    if (found == nullptr) {
      std::string message = "unknown optional ublk feature '";
      message += name;
      message += "' (known: ";
      for (const OptionalFeature& f : kOptional) {
        message += f.flag == kOptional[0].flag ? "" : ", ";
        message += f.name;
      }
      message += ")";
      return Error(EINVAL, message);
    }
    mask |= found->flag;
  }
  return mask;
}

uint64_t optional_features_enabled(uint64_t available, uint64_t turned_off) {
  uint64_t all = 0;
  for (const OptionalFeature& f : kOptional) {
    all |= f.flag;
  }
  return all & available & ~turned_off;
}

std::string optional_feature_refusal(uint64_t flag, uint64_t available, uint64_t turned_off,
                                     std::string_view release) {
  const OptionalFeature* f = nullptr;
  for (const OptionalFeature& candidate : kOptional) {
    if (candidate.flag == flag) {
      f = &candidate;
    }
  }
  if (f == nullptr) {
    return feature_name(flag) + " is not an optional feature of the daemon";
  }
  if ((available & flag) == 0) {
    return "the kernel's ublk_drv lacks UBLK_F_" + std::string(f->name) + " (Linux >= " + f->since +
           "), needed for " + f->purpose + " (this kernel: " + std::string(release) + ")";
  }
  if ((turned_off & flag) != 0) {
    return std::string(f->purpose) + " needs UBLK_F_" + f->name +
           ", which the configuration turns off (ublk_features_off)";
  }
  return "";
}

}  // namespace ublkvol::ublk
