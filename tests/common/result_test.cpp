#include "ublkvol/common/result.h"

#include <algorithm>
#include <gtest/gtest.h>
#include <string>
#include <string_view>
#include <vector>

namespace ublkvol {
namespace {

Result<int> parse_positive(int v) {
  if (v <= 0) {
    return Error(std::errc::invalid_argument, "value must be positive, got " + std::to_string(v));
  }
  return v;
}

Status chain(int v) {
  UBLKVOL_TRY(parse_positive(v));
  return ok_status();
}

TEST(Result, CarriesValue) {
  auto r = parse_positive(7);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, 7);
}

TEST(Result, CarriesErrorWithMessage) {
  auto r = parse_positive(-1);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), std::make_error_code(std::errc::invalid_argument));
  EXPECT_EQ(r.error().message(), "value must be positive, got -1");
  EXPECT_EQ(r.error().with_context("config").message(), "config: value must be positive, got -1");
}

TEST(Result, TryPropagates) {
  EXPECT_TRUE(chain(3).ok());
  const Status s = chain(0);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().errno_value(), EINVAL);
}

// Every errno rule of default_error_kind (error_kind.h), one line each, so a
// changed rule shows up here and in the header comment together.
TEST(ErrorKind, DefaultKindFromErrno) {
  struct Case {
    int errno_value;
    ErrorKind kind;
  };
  constexpr Case kCases[] = {
      {EINVAL, ErrorKind::kInvalidArgument},
      {ERANGE, ErrorKind::kInvalidArgument},
      {ENAMETOOLONG, ErrorKind::kInvalidArgument},
      {EFBIG, ErrorKind::kInvalidArgument},
      {EMSGSIZE, ErrorKind::kInvalidArgument},
      {ENOSYS, ErrorKind::kInvalidArgument},
      {ENOENT, ErrorKind::kNotFound},
      {EEXIST, ErrorKind::kAlreadyExists},
      {EBUSY, ErrorKind::kBusy},
      {EAGAIN, ErrorKind::kBusy},
      {EACCES, ErrorKind::kPermissionDenied},
      {EPERM, ErrorKind::kPermissionDenied},
      {ESHUTDOWN, ErrorKind::kUnavailable},
      {ENODEV, ErrorKind::kUnavailable},
      {EOPNOTSUPP, ErrorKind::kUnavailable},
      {ECANCELED, ErrorKind::kUnavailable},
      {EIO, ErrorKind::kIoError},
      {ENOSPC, ErrorKind::kIoError},
      {EROFS, ErrorKind::kIoError},
      {EUCLEAN, ErrorKind::kCorruption},
      {EBADMSG, ErrorKind::kCorruption},
      {ETIMEDOUT, ErrorKind::kTimeout},
      {0, ErrorKind::kInternal},
      {ENOTRECOVERABLE, ErrorKind::kInternal},
  };
  for (const Case& c : kCases) {
    EXPECT_EQ(default_error_kind(c.errno_value), c.kind) << "errno " << c.errno_value;
    EXPECT_EQ(Error(c.errno_value, "x").kind(), c.kind) << "errno " << c.errno_value;
  }
  EXPECT_EQ(Error(std::errc::timed_out, "x").kind(), ErrorKind::kTimeout);
}

// default_errno is the inverse direction: its errno maps back to the kind,
// and every kind has its own name.
TEST(ErrorKind, DefaultErrnoRoundTripsAndNamesAreDistinct) {
  std::vector<std::string_view> names;
  for (const ErrorKind kind : kAllErrorKinds) {
    EXPECT_EQ(default_error_kind(default_errno(kind)), kind) << to_string(kind);
    names.push_back(to_string(kind));
  }
  std::sort(names.begin(), names.end());
  EXPECT_EQ(std::adjacent_find(names.begin(), names.end()), names.end());
  EXPECT_EQ(to_string(ErrorKind::kCorruption), "corruption");
}

// An explicit kind wins over the errno, and context or re-classification
// keep what they do not change.
TEST(ErrorKind, ExplicitKindSurvivesContext) {
  const Error e(ErrorKind::kCorruption, EINVAL, "superblock: checksum mismatch");
  EXPECT_EQ(e.kind(), ErrorKind::kCorruption);
  EXPECT_EQ(e.errno_value(), EINVAL);
  const Error wrapped = e.with_context("store a");
  EXPECT_EQ(wrapped.kind(), ErrorKind::kCorruption);
  EXPECT_EQ(wrapped.errno_value(), EINVAL);
  EXPECT_EQ(wrapped.message(), "store a: superblock: checksum mismatch");
  const Error retagged = Error(EIO, "read failed").with_kind(ErrorKind::kCorruption);
  EXPECT_EQ(retagged.kind(), ErrorKind::kCorruption);
  EXPECT_EQ(retagged.errno_value(), EIO);
  // Propagation through UBLKVOL_TRY copies the Error whole.
  auto fails = [&]() -> Status { return e; };
  auto outer = [&]() -> Status {
    UBLKVOL_TRY(fails());
    return ok_status();
  };
  EXPECT_EQ(outer().error().kind(), ErrorKind::kCorruption);
}

}  // namespace
}  // namespace ublkvol
