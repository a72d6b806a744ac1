// ublk-volume's exit status: what a script can branch on.
//
//   0  ok
//   1  the operation failed (I/O error, a device timeout, internal error,
//      `store check` found problems, a rebuild waited for failed, ...)
//   2  usage error: unknown command or option, bad size or name, or the
//      daemon refused an argument (invalid_argument, e.g. shrinking a volume)
//   3  cannot talk to the daemon: not running, no socket, permission denied,
//      connection lost, protocol version mismatch
//   4  not found: the named store, volume, snapshot or replica does not exist
//   5  conflict: the name is taken or the object is busy (exposed, mounted,
//      holds replicas)
//   6  unavailable on this host: the daemon lacks a facility (ublk_drv not
//      loaded, feature not supported by the kernel)
//   7  the daemon did not answer within --timeout seconds (stuck, stopped,
//      or overloaded): connected, but no response
//   8  corruption: the daemon found a store's data or metadata damaged
//      (checksum, magic, torn journal; code `corruption`): repair or restore
//      the store, retrying will not help
//
// docs/operations.md repeats this table; `ublk-volume --help` prints it.
#pragma once

#include "ublkvol/daemon/protocol.h"

namespace ublkvol::cli {

enum class ExitCode : int {
  kOk = 0,
  kFailed = 1,
  kUsage = 2,
  kUnreachable = 3,
  kNotFound = 4,
  kConflict = 5,
  kUnavailable = 6,
  kTimeout = 7,
  kCorrupt = 8,
};

inline int to_int(ExitCode code) { return static_cast<int>(code); }

// The exit status for a daemon error response.
ExitCode exit_code_for(daemon::ErrorCode code);

// The table above, for --help footers.
const char* exit_code_help();

}  // namespace ublkvol::cli
