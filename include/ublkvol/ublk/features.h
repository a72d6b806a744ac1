// ublk driver features: names for messages and logs, and the check that a
// kernel offers what the project needs.
//
// The driver reports its features with the GET_FEATURES control command
// (ControlDevice::get_features); ADD_DEV answers with the subset it enabled
// for the new device.
#pragma once

#include <cstdint>
#include <string>

#include "ublkvol/common/result.h"

namespace ublkvol::ublk {

// "CMD_IOCTL_ENCODE|USER_RECOVERY|..." for the known bits of `flags`, plus
// "0x..." for unknown ones; "none" for 0.
std::string describe_features(uint64_t flags);

// UBLK_F_... name of one feature bit ("UBLK_F_USER_RECOVERY_REISSUE"), or
// "bit N" for an unknown one.
std::string feature_name(uint64_t flag);

// Every feature the frontend relies on: ioctl-encoded opcodes.
inline constexpr uint64_t kRequiredFeatures = 1ULL << 6;  // UBLK_F_CMD_IOCTL_ENCODE
// What daemon restarts without I/O errors need.
inline constexpr uint64_t kRecoveryFeatures = (1ULL << 3) | (1ULL << 4);

// OK if `available` has every bit of `needed`; otherwise an error naming each
// missing feature and what it is for (`purpose`, e.g. "transparent daemon
// restart").
Status require_features(uint64_t available, uint64_t needed, const std::string& purpose);

}  // namespace ublkvol::ublk
