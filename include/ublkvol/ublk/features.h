// ublk driver features: names for messages and logs, and the check that a
// kernel offers what the project needs.
//
// The driver reports its features with the GET_FEATURES control command
// (ControlDevice::get_features); ADD_DEV answers with the subset it enabled
// for the new device.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

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
// Zero copy (docs/zero-copy.md): AUTO_BUF_REG (6.16) registers each request's
// pages in the queue's ring; USER_COPY serves the requests that cannot use
// them (NEED_REG_BUF fallback) by pread/pwrite on /dev/ublkcN.
inline constexpr uint64_t kZeroCopyFeatures = (1ULL << 11) | (1ULL << 7);

// OK if `available` has every bit of `needed`; otherwise an error naming each
// missing feature and what it is for (`purpose`, e.g. "transparent daemon
// restart").
Status require_features(uint64_t available, uint64_t needed, const std::string& purpose);

// ---------------------------------------------------------------------------
// Which kernel, and which of its optional features the daemon uses. Pure
// functions over a GET_FEATURES word and a `uname -r` string, so the
// decisions are unit-tested without a kernel.
// ---------------------------------------------------------------------------

// The numeric part of a kernel release ("6.12.117+deb13-cloud-amd64" ->
// 6.12.117; "7.0-rc3" -> 7.0.0).
struct KernelVersion {
  unsigned major = 0;
  unsigned minor = 0;
  unsigned patch = 0;
  auto operator<=>(const KernelVersion&) const = default;
};
std::optional<KernelVersion> parse_kernel_release(std::string_view release);

// A warning naming the problem when `release` is a kernel with known ublk
// regressions (6.17.x and 6.18.4-6.18.5: ADD_DEV / START_DEV failures);
// empty for any other (or an unparsable) release.
std::string known_bad_kernel_warning(std::string_view release);

// An optional ublk feature: used when the kernel offers it and the
// configuration does not turn it off (config key "ublk_features_off").
struct OptionalFeature {
  uint64_t flag;
  const char* name;     // as in describe_features() and the config: "UPDATE_SIZE"
  const char* purpose;  // what the daemon uses it for
  const char* since;    // first kernel that has it: "6.16"
};
std::span<const OptionalFeature> optional_features();

// The optional features with these names (config "ublk_features_off"), as a
// mask; an unknown name is an error naming it and the known ones.
Result<uint64_t> optional_features_mask(const std::vector<std::string>& names);

// The optional features enabled: offered by the kernel
// (`available`, GET_FEATURES) and not in `turned_off`.
uint64_t optional_features_enabled(uint64_t available, uint64_t turned_off);

// Why an optional feature cannot be used, for refusals: "the kernel's
// ublk_drv lacks UBLK_F_UPDATE_SIZE (Linux >= 6.16), needed for online
// resize of an exposed volume (this kernel: 6.12.117...)" or "... is turned
// off by the configuration (ublk_features_off)". Empty when it is enabled.
std::string optional_feature_refusal(uint64_t flag, uint64_t available, uint64_t turned_off,
                                     std::string_view release);

}  // namespace ublkvol::ublk
