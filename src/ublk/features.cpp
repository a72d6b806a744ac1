#include "ublkvol/ublk/features.h"

#include <cerrno>
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

}  // namespace ublkvol::ublk
