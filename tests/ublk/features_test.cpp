#include "ublkvol/ublk/features.h"

#include <gtest/gtest.h>

#include "ublkvol/ublk/uapi.h"

namespace ublkvol::ublk {
namespace {

TEST(FeaturesTest, DescribesKnownAndUnknownBits) {
  EXPECT_EQ(describe_features(0), "none");
  EXPECT_EQ(describe_features(uapi::kFUserRecovery | uapi::kFCmdIoctlEncode),
            "USER_RECOVERY|CMD_IOCTL_ENCODE");
  EXPECT_EQ(describe_features(uapi::kFZoned | (1ULL << 40)), "ZONED|0x10000000000");
  EXPECT_EQ(feature_name(uapi::kFUserRecoveryReissue), "UBLK_F_USER_RECOVERY_REISSUE");
  EXPECT_EQ(feature_name(1ULL << 50), "bit 50");
}

TEST(FeaturesTest, RequiredFeatureSetsAreTheDocumentedBits) {
  EXPECT_EQ(kRequiredFeatures, uapi::kFCmdIoctlEncode);
  EXPECT_EQ(kRecoveryFeatures, uapi::kFUserRecovery | uapi::kFUserRecoveryReissue);
}

TEST(FeaturesTest, MissingFeatureIsNamed) {
  // What a 6.12 driver offers (UBLK_F_ALL minus zero copy).
  const uint64_t linux_6_12 = 0x1feULL;
  EXPECT_TRUE(require_features(linux_6_12, kRequiredFeatures | kRecoveryFeatures, "x").ok());
  Status s = require_features(uapi::kFCmdIoctlEncode | uapi::kFUserRecovery, kRecoveryFeatures,
                              "transparent daemon restart");
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().errno_value(), EOPNOTSUPP);
  EXPECT_NE(s.error().message().find("lacks UBLK_F_USER_RECOVERY_REISSUE, needed for "
                                     "transparent daemon restart"),
            std::string::npos)
      << s.error().message();
  Status two = require_features(0, kRecoveryFeatures | kRequiredFeatures, "y");
  ASSERT_FALSE(two.ok());
  EXPECT_NE(two.error().message().find(
                "UBLK_F_USER_RECOVERY, UBLK_F_USER_RECOVERY_REISSUE, UBLK_F_CMD_IOCTL_ENCODE"),
            std::string::npos)
      << two.error().message();
}

}  // namespace
}  // namespace ublkvol::ublk
