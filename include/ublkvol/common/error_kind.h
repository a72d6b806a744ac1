// ErrorKind: what kind of failure an Error is, for whoever has to react to it.
//
// An errno says which system call failed how; a caller (the control
// protocol, the CLI's exit status, a retry loop) needs to know what to do:
// fix the argument, try again later, repair the store. The kind is set where
// the error starts (Error(ErrorKind, errno, message)); an Error built from an
// errno alone gets default_error_kind(errno). with_context() keeps the kind.
//
// The data path does not use Error: its completions stay negative errnos.
#pragma once

#include <cerrno>
#include <cstdint>
#include <string_view>

namespace ublkvol {

enum class ErrorKind : uint8_t {
  kInvalidArgument,   // the caller asked for something impossible (bad size, name, shrink)
  kNotFound,          // the named object does not exist
  kAlreadyExists,     // the name is taken
  kBusy,              // in use or momentarily busy: try again later (EBUSY, EAGAIN)
  kPermissionDenied,  // the caller may not do this (a path outside store_dirs)
  kUnavailable,       // closing, stopped, or a facility is missing (ESHUTDOWN, ENODEV)
  kIoError,           // a device failed or is full
  kCorruption,        // stored data or metadata failed validation (checksum, magic, torn)
  kTimeout,           // something did not answer within its deadline
  kInternal,          // a bug: an errno no rule covers
};

// Every kind, in declaration order (for tests and tables).
inline constexpr ErrorKind kAllErrorKinds[] = {
    ErrorKind::kInvalidArgument,  ErrorKind::kNotFound,
    ErrorKind::kAlreadyExists,    ErrorKind::kBusy,
    ErrorKind::kPermissionDenied, ErrorKind::kUnavailable,
    ErrorKind::kIoError,          ErrorKind::kCorruption,
    ErrorKind::kTimeout,          ErrorKind::kInternal,
};

// The kind an errno means when the origin did not say. The rules:
//   EINVAL ERANGE EDOM ENAMETOOLONG EFBIG E2BIG EOVERFLOW EISDIR ENOTDIR
//     EMSGSIZE ENOSYS                                  -> invalid_argument
//   ENOENT                                             -> not_found
//   EEXIST ENOTEMPTY                                   -> already_exists
//   EBUSY EAGAIN EALREADY EINPROGRESS                  -> busy
//   EACCES EPERM                                       -> permission_denied
//   ESHUTDOWN ENODEV ENXIO ENOTSUP/EOPNOTSUPP ECANCELED
//     ENOTCONN ECONNREFUSED ECONNRESET EPIPE EPROTONOSUPPORT -> unavailable
//   EIO ENOSPC EDQUOT EROFS ENOMEM                     -> io_error
//   EUCLEAN EBADMSG EILSEQ                             -> corruption
//   ETIMEDOUT                                          -> timeout
//   anything else (0 included)                         -> internal
// ENOSPC is an I/O error, not a bad argument: the store or device is full,
// nothing is wrong with the request. ENOMEM likewise: the host, not the
// caller. EBADMSG is corruption: every origin that means "a message from a
// peer is malformed" (the control protocol) sets its own kind.
constexpr ErrorKind default_error_kind(int errno_value) {
  switch (errno_value) {
    case EINVAL:
    case ERANGE:
    case EDOM:
    case ENAMETOOLONG:
    case EFBIG:
    case E2BIG:
    case EOVERFLOW:
    case EISDIR:
    case ENOTDIR:
    case EMSGSIZE:
    case ENOSYS:
      return ErrorKind::kInvalidArgument;
    case ENOENT:
      return ErrorKind::kNotFound;
    case EEXIST:
    case ENOTEMPTY:
      return ErrorKind::kAlreadyExists;
    case EBUSY:
    case EAGAIN:
    case EALREADY:
    case EINPROGRESS:
      return ErrorKind::kBusy;
    case EACCES:
    case EPERM:
      return ErrorKind::kPermissionDenied;
    case ESHUTDOWN:
    case ENODEV:
    case ENXIO:
    case ENOTSUP:
    case ECANCELED:
    case ENOTCONN:
    case ECONNREFUSED:
    case ECONNRESET:
    case EPIPE:
    case EPROTONOSUPPORT:
      return ErrorKind::kUnavailable;
    case EIO:
    case ENOSPC:
    case EDQUOT:
    case EROFS:
    case ENOMEM:
      return ErrorKind::kIoError;
    case EUCLEAN:
    case EBADMSG:
    case EILSEQ:
      return ErrorKind::kCorruption;
    case ETIMEDOUT:
      return ErrorKind::kTimeout;
    default:
      return ErrorKind::kInternal;
  }
}

// The errno that stands for a kind where an interface speaks errno only (a
// client turning a protocol code back into an Error).
constexpr int default_errno(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kInvalidArgument:
      return EINVAL;
    case ErrorKind::kNotFound:
      return ENOENT;
    case ErrorKind::kAlreadyExists:
      return EEXIST;
    case ErrorKind::kBusy:
      return EBUSY;
    case ErrorKind::kPermissionDenied:
      return EACCES;
    case ErrorKind::kUnavailable:
      return ESHUTDOWN;
    case ErrorKind::kIoError:
      return EIO;
    case ErrorKind::kCorruption:
      return EUCLEAN;
    case ErrorKind::kTimeout:
      return ETIMEDOUT;
    case ErrorKind::kInternal:
      break;
  }
  return ENOTRECOVERABLE;
}

// snake_case name ("io_error"), the same word the control protocol uses.
constexpr std::string_view to_string(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kInvalidArgument:
      return "invalid_argument";
    case ErrorKind::kNotFound:
      return "not_found";
    case ErrorKind::kAlreadyExists:
      return "already_exists";
    case ErrorKind::kBusy:
      return "busy";
    case ErrorKind::kPermissionDenied:
      return "permission_denied";
    case ErrorKind::kUnavailable:
      return "unavailable";
    case ErrorKind::kIoError:
      return "io_error";
    case ErrorKind::kCorruption:
      return "corruption";
    case ErrorKind::kTimeout:
      return "timeout";
    case ErrorKind::kInternal:
      break;
  }
  return "internal";
}

}  // namespace ublkvol
