#include "exit_code.h"

namespace ublkvol::cli {

ExitCode exit_code_for(daemon::ErrorCode code) {
  using daemon::ErrorCode;
  switch (code) {
    case ErrorCode::kInvalidArgument:
      return ExitCode::kUsage;
    case ErrorCode::kNotFound:
      return ExitCode::kNotFound;
    case ErrorCode::kAlreadyExists:
    case ErrorCode::kBusy:
      return ExitCode::kConflict;
    case ErrorCode::kPermissionDenied:
    case ErrorCode::kUnsupportedVersion:
      return ExitCode::kUnreachable;
    case ErrorCode::kUnavailable:
      return ExitCode::kUnavailable;
    case ErrorCode::kCorruption:
      return ExitCode::kCorrupt;
    case ErrorCode::kBadRequest:
    case ErrorCode::kUnknownMethod:
    case ErrorCode::kTooLarge:
    case ErrorCode::kIoError:
    case ErrorCode::kTimeout:
    case ErrorCode::kInternal:
      return ExitCode::kFailed;
  }
  return ExitCode::kFailed;
}

const char* exit_code_help() {
  return "Exit status:\n"
         "  0  ok\n"
         "  1  operation failed (I/O error, check found problems, rebuild failed)\n"
         "  2  usage error (bad command, option, size or name; argument refused)\n"
         "  3  cannot talk to the daemon (not running, no socket, permission denied)\n"
         "  4  not found (store, volume, snapshot or replica)\n"
         "  5  conflict (name taken, object busy: exposed, mounted, holds replicas)\n"
         "  6  unavailable on this host (e.g. ublk_drv is not loaded)\n"
         "  7  the daemon did not answer within --timeout seconds\n"
         "  8  corruption: a store's data or metadata failed validation (see store check)\n";
}

}  // namespace ublkvol::cli
