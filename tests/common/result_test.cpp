#include "ublkvol/common/result.h"

#include <gtest/gtest.h>
#include <string>

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

}  // namespace
}  // namespace ublkvol
