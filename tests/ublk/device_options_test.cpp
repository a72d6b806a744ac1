#include "ublkvol/ublk/device_options.h"

#include <gtest/gtest.h>

namespace ublkvol::ublk {
namespace {

engine::VolumeInfo volume(uint64_t size = 1ULL << 30U, uint32_t block = 4096) {
  engine::VolumeInfo v;
  v.name = "v";
  v.size_bytes = size;
  v.block_size = block;
  return v;
}

std::string message(const Status& s) { return s.ok() ? "<ok>" : s.error().message(); }

TEST(DeviceOptionsTest, DefaultsAreValid) {
  EXPECT_TRUE(validate_device_options(DeviceOptions{}, volume()).ok());
}

TEST(DeviceOptionsTest, QueueLoopExternalNeedsAHost) {
  DeviceOptions o;
  EXPECT_EQ(o.queue_loop, QueueLoop::kThread);
  o.queue_loop = QueueLoop::kExternal;
  EXPECT_EQ(message(validate_device_options(o, volume())),
            "queue loop 'external' needs a queue host to run the queues (none was given)");
  auto parsed = parse_queue_loop("external");
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(*parsed, QueueLoop::kExternal);
  EXPECT_STREQ(to_string(*parsed), "external");
  ASSERT_TRUE(parse_queue_loop("thread").ok());
  EXPECT_EQ(*parse_queue_loop("thread"), QueueLoop::kThread);
  auto bad = parse_queue_loop("reactor");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().message(), "unknown queue loop 'reactor' (use thread or external)");
}

TEST(DeviceOptionsTest, BadParametersAreRefusedWithClearMessages) {
  DeviceOptions o;
  EXPECT_EQ(message(validate_device_options(o, volume(1ULL << 30U, 3000))),
            "block size 3000 is not a power of two between 512 and 4096");
  EXPECT_EQ(message(validate_device_options(o, volume(1ULL << 30U, 8192))),
            "block size 8192 is not a power of two between 512 and 4096");
  EXPECT_EQ(message(validate_device_options(o, volume(0))),
            "volume size is 0; a device needs at least one block");
  EXPECT_EQ(message(validate_device_options(o, volume(4096 * 3 + 512))),
            "volume size 12800 is not a multiple of the block size 4096");
  o.queue_depth = 0;
  EXPECT_EQ(message(validate_device_options(o, volume())), "queue depth 0 is out of range 1..4096");
  o.queue_depth = 100000;
  EXPECT_EQ(message(validate_device_options(o, volume())),
            "queue depth 100000 is out of range 1..4096");
  o = DeviceOptions{};
  o.queues = 0;
  EXPECT_EQ(message(validate_device_options(o, volume())), "queue count 0 is out of range 1..4096");
  o = DeviceOptions{};
  o.dev_id = -2;
  EXPECT_NE(message(validate_device_options(o, volume())).find("device id -2 is out of range"),
            std::string::npos);
  o = DeviceOptions{};
  o.max_io_bytes = 6000;
  EXPECT_NE(message(validate_device_options(o, volume())).find("max I/O size 6000"),
            std::string::npos);
  o.max_io_bytes = 2U << 20U;
  EXPECT_EQ(message(validate_device_options(o, volume())),
            "max I/O size 2097152 exceeds what volume 'v' accepts (1048576)");
}

TEST(DeviceOptionsTest, ParamsDescribeTheVolume) {
  engine::VolumeInfo v = volume(1ULL << 30U, 512);
  uapi::Params p = make_device_params(v, 1U << 20U);
  EXPECT_EQ(p.len, sizeof(uapi::Params));
  EXPECT_EQ(p.types, uapi::kParamTypeBasic | uapi::kParamTypeDiscard);
  EXPECT_EQ(p.basic.logical_bs_shift, 9);
  EXPECT_EQ(p.basic.physical_bs_shift, 12);
  EXPECT_EQ(p.basic.io_min_shift, 9);
  EXPECT_EQ(p.basic.max_sectors, 2048U);
  EXPECT_EQ(p.basic.dev_sectors, (1ULL << 30U) / 512);
  EXPECT_EQ(p.basic.attrs, uapi::kAttrVolatileCache | uapi::kAttrFua);
  EXPECT_EQ(p.discard.discard_granularity, 512U);
  EXPECT_EQ(p.discard.max_discard_segments, 1);
  // Discards are requests too: capped at what the volume accepts at once.
  EXPECT_EQ(p.discard.max_discard_sectors, v.max_io_bytes / 512);
  EXPECT_EQ(p.discard.max_write_zeroes_sectors, v.max_io_bytes / 512);
  v.max_io_bytes = 128U << 20U;
  p = make_device_params(v, 1U << 20U);
  EXPECT_EQ(p.discard.max_discard_sectors, kMaxDiscardBytes / 512);
  EXPECT_EQ(p.discard.max_write_zeroes_sectors, kMaxDiscardBytes / 512);
}

TEST(DeviceOptionsTest, ParamsFollowVolumeCapabilities) {
  engine::VolumeInfo v = volume();
  v.volatile_cache = false;
  v.supports_discard = false;
  uapi::Params p = make_device_params(v, 256 * 1024);
  EXPECT_EQ(p.basic.attrs, 0U);  // no cache: the kernel sends no FLUSH or FUA
  EXPECT_EQ(p.basic.logical_bs_shift, 12);
  EXPECT_EQ(p.basic.max_sectors, 512U);
  EXPECT_EQ(p.discard.max_discard_sectors, 0U);
  EXPECT_EQ(p.discard.max_discard_segments, 0);
  EXPECT_NE(p.discard.max_write_zeroes_sectors, 0U);
  v.supports_write_zeroes = false;
  EXPECT_EQ(make_device_params(v, 4096).types, uapi::kParamTypeBasic);
}

TEST(DeviceOptionsTest, EffectiveMaxIoDefaultsToTheVolumes) {
  engine::VolumeInfo v = volume();
  v.max_io_bytes = 512 * 1024;
  EXPECT_EQ(effective_max_io_bytes(DeviceOptions{}, v), 512U * 1024U);
  DeviceOptions o;
  o.max_io_bytes = 128 * 1024;
  EXPECT_EQ(effective_max_io_bytes(o, v), 128U * 1024U);
}

}  // namespace
}  // namespace ublkvol::ublk
