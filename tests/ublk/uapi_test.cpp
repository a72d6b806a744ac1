// The project's ublk UAPI against known values: the ioctl encodings the 6.12
// driver expects, and the struct layouts of the system's (6.1) header, which
// the driver has kept stable since.
#include "ublkvol/ublk/uapi.h"

#include <linux/ioctl.h>
#include <linux/ublk_cmd.h>

#include <cstddef>
#include <gtest/gtest.h>

namespace ublkvol::ublk::uapi {
namespace {

TEST(UapiTest, ControlOpcodesAreIoctlEncoded) {
  // Values as computed by the kernel's _IOR/_IOWR('u', nr, struct ublksrv_ctrl_cmd).
  EXPECT_EQ(kCmdGetQueueAffinity, 0x80207501U);
  EXPECT_EQ(kCmdGetDevInfo, 0x80207502U);
  EXPECT_EQ(kCmdAddDev, 0xc0207504U);
  EXPECT_EQ(kCmdDelDev, 0xc0207505U);
  EXPECT_EQ(kCmdStartDev, 0xc0207506U);
  EXPECT_EQ(kCmdStopDev, 0xc0207507U);
  EXPECT_EQ(kCmdSetParams, 0xc0207508U);
  EXPECT_EQ(kCmdGetParams, 0x80207509U);
  EXPECT_EQ(kCmdStartUserRecovery, 0xc0207510U);
  EXPECT_EQ(kCmdEndUserRecovery, 0xc0207511U);
  EXPECT_EQ(kCmdGetDevInfo2, 0x80207512U);
  EXPECT_EQ(kCmdGetFeatures, 0x80207513U);
  EXPECT_EQ(kCmdDelDevAsync, 0x80207514U);
}

TEST(UapiTest, IoOpcodesAreIoctlEncoded) {
  EXPECT_EQ(kIoFetchReq, 0xc0107520U);
  EXPECT_EQ(kIoCommitAndFetchReq, 0xc0107521U);
}

TEST(UapiTest, EncodingMatchesLinuxIoctlMacros) {
  EXPECT_EQ(kCmdAddDev, static_cast<uint32_t>(_IOWR('u', UBLK_CMD_ADD_DEV, ublksrv_ctrl_cmd)));
  EXPECT_EQ(kCmdGetDevInfo,
            static_cast<uint32_t>(_IOR('u', UBLK_CMD_GET_DEV_INFO, ublksrv_ctrl_cmd)));
  EXPECT_EQ(kIoFetchReq, static_cast<uint32_t>(_IOWR('u', UBLK_IO_FETCH_REQ, ublksrv_io_cmd)));
  EXPECT_EQ(kIoCommitAndFetchReq,
            static_cast<uint32_t>(_IOWR('u', UBLK_IO_COMMIT_AND_FETCH_REQ, ublksrv_io_cmd)));
  EXPECT_EQ(ioc_nr(kCmdStartUserRecovery), static_cast<uint32_t>(UBLK_CMD_START_USER_RECOVERY));
}

TEST(UapiTest, StructLayoutsMatchTheSystemHeader) {
  EXPECT_EQ(sizeof(CtrlCmd), sizeof(ublksrv_ctrl_cmd));
  EXPECT_EQ(offsetof(CtrlCmd, addr), offsetof(ublksrv_ctrl_cmd, addr));
  EXPECT_EQ(offsetof(CtrlCmd, data), offsetof(ublksrv_ctrl_cmd, data));
  // dev_path_len (6.2+) sits where 6.1 has its reserved tail.
  EXPECT_EQ(offsetof(CtrlCmd, dev_path_len), offsetof(ublksrv_ctrl_cmd, data) + 8);
  EXPECT_EQ(sizeof(CtrlDevInfo), sizeof(ublksrv_ctrl_dev_info));
  EXPECT_EQ(offsetof(CtrlDevInfo, max_io_buf_bytes),
            offsetof(ublksrv_ctrl_dev_info, max_io_buf_bytes));
  EXPECT_EQ(offsetof(CtrlDevInfo, ublksrv_pid), offsetof(ublksrv_ctrl_dev_info, ublksrv_pid));
  EXPECT_EQ(offsetof(CtrlDevInfo, flags), offsetof(ublksrv_ctrl_dev_info, flags));
  EXPECT_EQ(sizeof(IoDesc), sizeof(ublksrv_io_desc));
  EXPECT_EQ(offsetof(IoDesc, start_sector), offsetof(ublksrv_io_desc, start_sector));
  EXPECT_EQ(offsetof(IoDesc, addr), offsetof(ublksrv_io_desc, addr));
  EXPECT_EQ(sizeof(IoCmd), sizeof(ublksrv_io_cmd));
  EXPECT_EQ(offsetof(IoCmd, result), offsetof(ublksrv_io_cmd, result));
  EXPECT_EQ(offsetof(IoCmd, addr), offsetof(ublksrv_io_cmd, addr));
  EXPECT_EQ(sizeof(ParamBasic), sizeof(ublk_param_basic));
  EXPECT_EQ(offsetof(ParamBasic, max_sectors), offsetof(ublk_param_basic, max_sectors));
  EXPECT_EQ(offsetof(ParamBasic, dev_sectors), offsetof(ublk_param_basic, dev_sectors));
  EXPECT_EQ(sizeof(ParamDiscard), sizeof(ublk_param_discard));
  EXPECT_EQ(offsetof(ParamDiscard, max_write_zeroes_sectors),
            offsetof(ublk_param_discard, max_write_zeroes_sectors));
  EXPECT_EQ(offsetof(Params, basic), offsetof(ublk_params, basic));
  EXPECT_EQ(offsetof(Params, discard), offsetof(ublk_params, discard));
}

TEST(UapiTest, FlagAndOpValuesMatchTheSystemHeader) {
  EXPECT_EQ(kFUserRecovery, static_cast<uint64_t>(UBLK_F_USER_RECOVERY));
  EXPECT_EQ(kFUserRecoveryReissue, static_cast<uint64_t>(UBLK_F_USER_RECOVERY_REISSUE));
  EXPECT_EQ(kFNeedGetData, static_cast<uint64_t>(UBLK_F_NEED_GET_DATA));
  EXPECT_EQ(kOpWriteZeroes, UBLK_IO_OP_WRITE_ZEROES);
  EXPECT_EQ(kOpDiscard, UBLK_IO_OP_DISCARD);
  EXPECT_EQ(kIoFFua, static_cast<uint32_t>(UBLK_IO_F_FUA));
  EXPECT_EQ(kAttrVolatileCache, static_cast<uint32_t>(UBLK_ATTR_VOLATILE_CACHE));
  EXPECT_EQ(kAttrFua, static_cast<uint32_t>(UBLK_ATTR_FUA));
  EXPECT_EQ(kIoResAbort, UBLK_IO_RES_ABORT);
  EXPECT_EQ(kDevStateQuiesced, UBLK_S_DEV_QUIESCED);
}

TEST(UapiTest, DescriptorMmapLayout) {
  // Each queue's window has room for the deepest queue: 4096 * 24 bytes.
  EXPECT_EQ(io_desc_mmap_offset(0, 4096), 0U);
  EXPECT_EQ(io_desc_mmap_offset(1, 4096), 98304U);
  EXPECT_EQ(io_desc_mmap_offset(3, 4096), 3U * 98304U);
  // A queue maps only its own depth, in whole pages.
  EXPECT_EQ(io_desc_array_bytes(1, 4096), 4096U);
  EXPECT_EQ(io_desc_array_bytes(128, 4096), 4096U);
  EXPECT_EQ(io_desc_array_bytes(171, 4096), 8192U);
  EXPECT_EQ(io_desc_array_bytes(4096, 4096), 98304U);
}

TEST(UapiTest, AutoBufRegAddressCarriesIndexAndFlags) {
  // ublk_auto_buf_reg_to_sqe_addr(): index bits 0-15, flags 16-23, reserved 0.
  EXPECT_EQ(auto_buf_reg_addr(0, 0), 0U);
  EXPECT_EQ(auto_buf_reg_addr(7, kAutoBufRegFallback), 0x10007U);
  EXPECT_EQ(auto_buf_reg_addr(4095, kAutoBufRegFallback), 0x10fffU);
  EXPECT_EQ(kIoFNeedRegBuf, 1U << 17);
  EXPECT_EQ(kFAutoBufReg, 1ULL << 11);
  EXPECT_EQ(kFUserCopy, 1ULL << 7);
}

TEST(UapiTest, UserCopyOffsetsNameQueueAndTag) {
  // UBLKSRV_IO_BUF_OFFSET + (q_id << UBLK_QID_OFF) + (tag << UBLK_TAG_OFF),
  // UBLK_TAG_OFF = 25, UBLK_QID_OFF = 41.
  EXPECT_EQ(user_copy_offset(0, 0), 0x80000000ULL);
  EXPECT_EQ(user_copy_offset(0, 1), 0x80000000ULL + (1ULL << 25));
  EXPECT_EQ(user_copy_offset(2, 3), 0x80000000ULL + (2ULL << 41) + (3ULL << 25));
}

}  // namespace
}  // namespace ublkvol::ublk::uapi
