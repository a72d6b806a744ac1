// Result<T>: a value or an Error, returned instead of throwing.
//
// Control-path code (opening stores, parsing config, talking to the kernel's
// control device) returns Result<T> so that every failure carries a message
// naming the problem ("store /dev/nvme0n1: bad superblock magic"). The data
// path does not use Result: completions carry a plain negative errno so that
// no I/O ever allocates.
#pragma once

#include <cassert>
#include <cerrno>
#include <cstring>
#include <string>
#include <system_error>
#include <type_traits>
#include <utility>
#include <variant>

#include "ublkvol/common/error_kind.h"

namespace ublkvol {

// An errno-style code, the kind of failure (error_kind.h), and a
// human-readable message that names what failed.
class Error {
 public:
  // The kind comes from the code (default_error_kind).
  Error(std::errc code, std::string message)
      : code_(std::make_error_code(code)),
        kind_(default_error_kind(code_.value())),
        message_(std::move(message)) {}
  // `errno_value` is a positive errno (EIO, ENOENT, ...); the kind comes from
  // it (default_error_kind).
  Error(int errno_value, std::string message)
      : code_(errno_value, std::generic_category()),
        kind_(default_error_kind(errno_value)),
        message_(std::move(message)) {}
  // An explicit kind, where the errno alone would mislead: a checksum
  // mismatch reported with EINVAL is corruption, not a bad argument.
  Error(ErrorKind kind, int errno_value, std::string message)
      : code_(errno_value, std::generic_category()), kind_(kind), message_(std::move(message)) {}

  [[nodiscard]] std::error_code code() const { return code_; }
  // Positive errno value, for interfaces that speak errno.
  [[nodiscard]] int errno_value() const { return code_.value(); }
  [[nodiscard]] ErrorKind kind() const { return kind_; }
  [[nodiscard]] const std::string& message() const { return message_; }
  // "message (strerror)" - what a user should see.
  [[nodiscard]] std::string to_string() const { return message_ + " (" + code_.message() + ")"; }
  // Prepends context: Error(EIO,"read failed").with_context("store a") ->
  // "store a: read failed". Code and kind are kept.
  [[nodiscard]] Error with_context(const std::string& context) const {
    Error e = *this;
    e.message_ = context + ": " + message_;
    return e;
  }
  // The same error re-classified, for a caller that knows better than the
  // origin (a store that fails its check on open is corrupt, whatever errno
  // the failed read had).
  [[nodiscard]] Error with_kind(ErrorKind kind) const {
    Error e = *this;
    e.kind_ = kind;
    return e;
  }

 private:
  std::error_code code_;
  ErrorKind kind_;
  std::string message_;
};

// Builds an Error from the current errno.
inline Error errno_error(std::string message) { return Error(errno, std::move(message)); }

template <typename T>
class [[nodiscard]] Result {
 public:
  // NOLINTNEXTLINE(google-explicit-constructor): implicit by design.
  Result(T value) : state_(std::in_place_index<0>, std::move(value)) {}
  // NOLINTNEXTLINE(google-explicit-constructor): implicit by design.
  Result(Error error) : state_(std::in_place_index<1>, std::move(error)) {}

  [[nodiscard]] bool ok() const { return state_.index() == 0; }
  explicit operator bool() const { return ok(); }

  T& value() & {
    assert(ok());
    return std::get<0>(state_);
  }
  const T& value() const& {
    assert(ok());
    return std::get<0>(state_);
  }
  T&& value() && {
    assert(ok());
    return std::get<0>(std::move(state_));
  }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  [[nodiscard]] const Error& error() const {
    assert(!ok());
    return std::get<1>(state_);
  }

 private:
  std::variant<T, Error> state_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  // NOLINTNEXTLINE(google-explicit-constructor): implicit by design.
  Result(Error error) : error_(std::move(error)), ok_(false) {}

  [[nodiscard]] bool ok() const { return ok_; }
  explicit operator bool() const { return ok_; }
  [[nodiscard]] const Error& error() const {
    assert(!ok_);
    return error_;
  }

 private:
  Error error_{0, {}};
  bool ok_ = true;
};

using Status = Result<void>;

inline Status ok_status() { return {}; }

}  // namespace ublkvol

// Propagates an error from an expression returning Result<...>/Status.
#define UBLKVOL_TRY(expr)                 \
  do {                                    \
    auto ublkvol_try_result_ = (expr);    \
    if (!ublkvol_try_result_.ok()) {      \
      return ublkvol_try_result_.error(); \
    }                                     \
  } while (false)

// Declares or assigns `lhs` from an expression returning Result<T>, or
// propagates its error:
//   UBLKVOL_ASSIGN_OR_RETURN(auto volume, registry.volume_named(name));
//   UBLKVOL_ASSIGN_OR_RETURN(args.size, p.size("size"));
// `lhs` may be a declaration and `result` a name: neither can be parenthesised.
// NOLINTBEGIN(bugprone-macro-parentheses)
#define UBLKVOL_ASSIGN_OR_RETURN(lhs, expr) \
  UBLKVOL_ASSIGN_OR_RETURN_(UBLKVOL_CONCAT_(ublkvol_assign_result_, __LINE__), lhs, expr)
#define UBLKVOL_CONCAT_(a, b) UBLKVOL_CONCAT_INNER_(a, b)
#define UBLKVOL_CONCAT_INNER_(a, b) a##b
#define UBLKVOL_ASSIGN_OR_RETURN_(result, lhs, expr) \
  auto result = (expr);                              \
  if (!result.ok()) {                                \
    return result.error();                           \
  }                                                  \
  lhs = std::move(result).value()
// NOLINTEND(bugprone-macro-parentheses)
