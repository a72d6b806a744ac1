#include "ublkvol/ublk/features.h"

#include <gtest/gtest.h>

#include "ublkvol/ublk/uapi.h"

namespace ublkvol::ublk {
namespace {

TEST(FeaturesTest, NamesTheFeaturesOfLinux6_16) {
  EXPECT_EQ(describe_features(uapi::kFUpdateSize | uapi::kFAutoBufReg | uapi::kFQuiesce |
                              uapi::kFPerIoDaemon | uapi::kFBufRegOffDaemon),
            "UPDATE_SIZE|AUTO_BUF_REG|QUIESCE|PER_IO_DAEMON|BUF_REG_OFF_DAEMON");
}

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
  EXPECT_EQ(kZeroCopyFeatures, uapi::kFAutoBufReg | uapi::kFUserCopy);
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

TEST(FeaturesTest, KernelReleaseIsParsed) {
  EXPECT_EQ(parse_kernel_release("6.12.117+deb13-cloud-amd64"), (KernelVersion{6, 12, 117}));
  EXPECT_EQ(parse_kernel_release("7.3.4+deb13-cloud-amd64"), (KernelVersion{7, 3, 4}));
  EXPECT_EQ(parse_kernel_release("7.0-rc3"), (KernelVersion{7, 0, 0}));
  EXPECT_EQ(parse_kernel_release("6.18.5-arch1-1"), (KernelVersion{6, 18, 5}));
  EXPECT_FALSE(parse_kernel_release("").has_value());
  EXPECT_FALSE(parse_kernel_release("6").has_value());
  EXPECT_FALSE(parse_kernel_release("linux").has_value());
  EXPECT_LT(*parse_kernel_release("6.12.117"), *parse_kernel_release("6.16.1"));
}

TEST(FeaturesTest, KnownBadKernelsGetAWarning) {
  for (const char* bad : {"6.17.0", "6.17.13+deb13-cloud-amd64", "6.18.4", "6.18.5-1-default"}) {
    const std::string w = known_bad_kernel_warning(bad);
    EXPECT_NE(w.find(std::string("Linux ") + bad), std::string::npos) << w;
    EXPECT_NE(w.find("known ublk_drv regressions"), std::string::npos) << w;
  }
  for (const char* good : {"6.12.117+deb13-cloud-amd64", "6.16.9", "6.18.3", "6.18.6",
                           "7.3.4+deb13-cloud-amd64", "not-a-release"}) {
    EXPECT_EQ(known_bad_kernel_warning(good), "") << good;
  }
}

TEST(FeaturesTest, OptionalFeaturesInUseAreOfferedAndNotTurnedOff) {
  const uint64_t linux_6_12 = 0x1feULL;
  const uint64_t linux_7_3 = 0x1fffffULL;
  EXPECT_EQ(optional_features_enabled(linux_6_12, 0), 0U);
  EXPECT_EQ(optional_features_enabled(linux_7_3, 0), uapi::kFUpdateSize | uapi::kFQuiesce);
  EXPECT_EQ(optional_features_enabled(linux_7_3, uapi::kFQuiesce), uapi::kFUpdateSize);
  EXPECT_EQ(describe_features(optional_features_enabled(linux_7_3, 0)), "UPDATE_SIZE|QUIESCE");

  auto mask = optional_features_mask({"QUIESCE", "UPDATE_SIZE"});
  ASSERT_TRUE(mask.ok());
  EXPECT_EQ(*mask, uapi::kFUpdateSize | uapi::kFQuiesce);
  EXPECT_EQ(*optional_features_mask({}), 0U);
  auto bad = optional_features_mask({"quiesce"});
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().message(),
            "unknown optional ublk feature 'quiesce' (known: UPDATE_SIZE, QUIESCE)");
}

TEST(FeaturesTest, RefusalNamesTheMissingKernelFeature) {
  const uint64_t linux_6_12 = 0x1feULL;
  const uint64_t linux_7_3 = 0x1fffffULL;
  EXPECT_EQ(
      optional_feature_refusal(uapi::kFUpdateSize, linux_6_12, 0, "6.12.117+deb13-cloud-amd64"),
      "the kernel's ublk_drv lacks UBLK_F_UPDATE_SIZE (Linux >= 6.16), needed for online "
      "resize of an exposed volume (this kernel: 6.12.117+deb13-cloud-amd64)");
  EXPECT_EQ(optional_feature_refusal(uapi::kFUpdateSize, linux_7_3, 0, "7.3.4"), "");
  EXPECT_EQ(optional_feature_refusal(uapi::kFUpdateSize, linux_7_3, uapi::kFUpdateSize, "7.3.4"),
            "online resize of an exposed volume needs UBLK_F_UPDATE_SIZE, which the "
            "configuration turns off (ublk_features_off)");
}

}  // namespace
}  // namespace ublkvol::ublk
