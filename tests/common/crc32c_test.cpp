#include "ublkvol/common/crc32c.h"

#include <gtest/gtest.h>
#include <string_view>
#include <vector>

namespace ublkvol {
namespace {

TEST(Crc32c, KnownVector) {
  constexpr std::string_view kCheck = "123456789";
  EXPECT_EQ(crc32c(kCheck.data(), kCheck.size()), 0xE3069283U);
}

TEST(Crc32c, EmptyIsZero) { EXPECT_EQ(crc32c(nullptr, 0), 0U); }

TEST(Crc32c, ExtendEqualsWhole) {
  std::vector<std::byte> data(4096 + 13);
  for (size_t i = 0; i < data.size(); ++i) {
    data[i] = static_cast<std::byte>((i * 131U) & 0xFFU);
  }
  const std::span<const std::byte> all(data);
  const uint32_t whole = crc32c(all);
  const uint32_t split = crc32c_extend(crc32c(all.first(1000)), all.subspan(1000));
  EXPECT_EQ(whole, split);
}

TEST(Crc32c, DetectsSingleBitFlip) {
  std::vector<std::byte> data(4096, std::byte{0x5A});
  const uint32_t before = crc32c(std::span<const std::byte>(data));
  data[2049] ^= std::byte{0x01};
  EXPECT_NE(before, crc32c(std::span<const std::byte>(data)));
}

}  // namespace
}  // namespace ublkvol
