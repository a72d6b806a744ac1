#include "request.h"

#include <gtest/gtest.h>

namespace ublkvol::ublk {
namespace {

uapi::IoDesc desc(uint8_t op, uint32_t flags, uint64_t sector, uint32_t sectors) {
  uapi::IoDesc d{};
  d.op_flags = op | flags;
  d.start_sector = sector;
  d.nr_sectors = sectors;
  return d;
}

TEST(RequestTest, ReadAndWriteUseTheTagBuffer) {
  alignas(4096) static std::byte buffer[8192];
  engine::VolumeIo io;
  ASSERT_EQ(translate_request(desc(uapi::kOpRead, 0, 16, 8), buffer, sizeof(buffer), io), 0);
  EXPECT_EQ(io.op, engine::VolumeOp::kRead);
  EXPECT_EQ(io.offset, 16U * 512U);
  EXPECT_EQ(io.length, 4096U);
  EXPECT_EQ(io.buffer, buffer);
  EXPECT_FALSE(io.fua);
  ASSERT_EQ(translate_request(desc(uapi::kOpWrite, uapi::kIoFFua, 8, 16), buffer, 8192, io), 0);
  EXPECT_EQ(io.op, engine::VolumeOp::kWrite);
  EXPECT_TRUE(io.fua);
  EXPECT_EQ(io.length, 8192U);
  ASSERT_EQ(translate_request(desc(uapi::kOpWrite, uapi::kIoFMeta, 8, 16), buffer, 8192, io), 0);
  EXPECT_FALSE(io.fua);
}

TEST(RequestTest, DatalessOperations) {
  alignas(4096) static std::byte buffer[4096];
  engine::VolumeIo io;
  ASSERT_EQ(translate_request(desc(uapi::kOpFlush, 0, 0, 0), buffer, 4096, io), 0);
  EXPECT_EQ(io.op, engine::VolumeOp::kFlush);
  EXPECT_EQ(io.buffer, nullptr);
  // Discards are not limited by the tag buffer.
  ASSERT_EQ(translate_request(desc(uapi::kOpDiscard, 0, 2048, 131072), buffer, 4096, io), 0);
  EXPECT_EQ(io.op, engine::VolumeOp::kDiscard);
  EXPECT_EQ(io.offset, 1U << 20U);
  EXPECT_EQ(io.length, 64U << 20U);
  EXPECT_EQ(io.buffer, nullptr);
  ASSERT_EQ(
      translate_request(desc(uapi::kOpWriteZeroes, uapi::kIoFNoUnmap, 8, 8), buffer, 4096, io), 0);
  EXPECT_EQ(io.op, engine::VolumeOp::kWriteZeroes);
}

TEST(RequestTest, UnservedOperationsAndOversizedRequestsAreAnsweredAtOnce) {
  alignas(4096) static std::byte buffer[4096];
  engine::VolumeIo io;
  EXPECT_EQ(translate_request(desc(uapi::kOpWriteSame, 0, 0, 8), buffer, 4096, io), -EOPNOTSUPP);
  EXPECT_EQ(translate_request(desc(13 /* ZONE_APPEND */, 0, 0, 8), buffer, 4096, io), -EOPNOTSUPP);
  EXPECT_EQ(translate_request(desc(uapi::kOpRead, 0, 0, 16), buffer, 4096, io), -EIO);
}

TEST(RequestTest, CommitResults) {
  EXPECT_EQ(commit_result(engine::VolumeOp::kRead, 4096, 0), 4096);
  EXPECT_EQ(commit_result(engine::VolumeOp::kWrite, 1U << 20U, 0), 1 << 20);
  EXPECT_EQ(commit_result(engine::VolumeOp::kFlush, 0, 0), 0);
  EXPECT_EQ(commit_result(engine::VolumeOp::kDiscard, 8192, 0), 0);
  EXPECT_EQ(commit_result(engine::VolumeOp::kRead, 4096, -EIO), -EIO);
  EXPECT_EQ(commit_result(engine::VolumeOp::kWriteZeroes, 4096, -ENOSPC), -ENOSPC);
}

}  // namespace
}  // namespace ublkvol::ublk
