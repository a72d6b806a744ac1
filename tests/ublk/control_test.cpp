// The control path without ublk_drv: the messages a user gets when the
// driver is missing or the path is not a ublk control device, and the words
// for the errors the driver answers with.
#include "ublkvol/ublk/control.h"

#include <gtest/gtest.h>

#include "ublkvol/ublk/uapi.h"

namespace ublkvol::ublk {
namespace {

TEST(ControlTest, MissingDriverSaysModprobe) {
  auto c = ControlDevice::open("/nonexistent/ublk-control");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.error().errno_value(), ENOENT);
  EXPECT_EQ(c.error().message(),
            "ublk_drv is not loaded: run modprobe ublk_drv (/nonexistent/ublk-control does not "
            "exist)");
}

TEST(ControlTest, CommandsReachTheFileThroughA128ByteSqeRing) {
  // /dev/zero has no uring_cmd handler (/dev/null has one, for io_uring
  // benchmarks): the command travels the real io_uring path and the kernel
  // answers EOPNOTSUPP.
  auto c = ControlDevice::open("/dev/zero");
  ASSERT_TRUE(c.ok()) << c.error().to_string();
  auto f = c->get_features();
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.error().errno_value(), EOPNOTSUPP);
  EXPECT_EQ(f.error().message(),
            "ublk GET_FEATURES: not supported by this kernel's ublk_drv (or not a ublk control "
            "device)");
  // The 6.16 commands travel the same path and are named in the errors.
  Status grown = c->update_size(3, 1ULL << 30U);
  ASSERT_FALSE(grown.ok());
  EXPECT_EQ(grown.error().message(),
            "ublk UPDATE_SIZE (device 3): not supported by this kernel's ublk_drv (or not a ublk "
            "control device)");
  Status quiesced = c->quiesce_device(4, 1000);
  ASSERT_FALSE(quiesced.ok());
  EXPECT_NE(quiesced.error().message().find("ublk QUIESCE_DEV (device 4)"), std::string::npos);
  auto info = c->get_device_info(7);
  ASSERT_FALSE(info.ok());
  EXPECT_NE(info.error().message().find("ublk GET_DEV_INFO2 (device 7)"), std::string::npos);
}

TEST(ControlTest, FailureMessagesNameCommandDeviceAndCause) {
  EXPECT_EQ(describe_control_failure(uapi::kCmdAddDev, 3, -EEXIST).message(),
            "ublk ADD_DEV (device 3): the device id is in use");
  EXPECT_EQ(describe_control_failure(uapi::kCmdStopDev, 5, -ENODEV).message(),
            "ublk STOP_DEV (device 5): no such ublk device");
  EXPECT_EQ(describe_control_failure(uapi::kCmdGetFeatures, uapi::kAutoDevId, -ENODEV).message(),
            "ublk GET_FEATURES: the driver does not know this command: kernel older than 6.5");
  EXPECT_EQ(describe_control_failure(uapi::kCmdStartUserRecovery, 1, -EBUSY).message(),
            "ublk START_USER_RECOVERY (device 1): the device is not quiesced yet (its old server "
            "has not fully exited)");
  EXPECT_EQ(describe_control_failure(uapi::kCmdSetParams, 2, -EACCES).message(),
            "ublk SET_PARAMS (device 2): parameters cannot change once the device is started");
  EXPECT_EQ(describe_control_failure(uapi::kCmdStartDev, 0, -EPERM).errno_value(), EPERM);
  // ADD_DEV's EACCES is the driver's device limit (root passed the open of
  // /dev/ublk-control): the message names the module parameter.
  EXPECT_EQ(describe_control_failure(uapi::kCmdAddDev, uapi::kAutoDevId, -EACCES).message(),
            "ublk ADD_DEV: the host's ublk device limit is reached: the ublk_drv module "
            "parameter ublks_max (default 64; /sys/module/ublk_drv/parameters/ublks_max) caps "
            "all ublk devices on Linux <= 6.14 (unprivileged ones on later kernels); raise it "
            "(echo N > /sys/module/ublk_drv/parameters/ublks_max, or modprobe ublk_drv "
            "ublks_max=N) or delete unused devices");
  EXPECT_STREQ(control_command_name(uapi::kCmdDelDevAsync), "DEL_DEV_ASYNC");
  EXPECT_EQ(describe_control_failure(uapi::kCmdQuiesceDev, 2, -EBUSY).message(),
            "ublk QUIESCE_DEV (device 2): the server still held requests when the quiesce "
            "timeout expired");
  // The ioctl encodings of the uapi (_IOWR('u', 0x15/0x16, struct ublksrv_ctrl_cmd)).
  EXPECT_EQ(uapi::kCmdUpdateSize, 0xc0207515U);
  EXPECT_EQ(uapi::kCmdQuiesceDev, 0xc0207516U);
  EXPECT_STREQ(device_state_name(uapi::kDevStateQuiesced), "quiesced");
  EXPECT_EQ(block_device_path(12), "/dev/ublkb12");
  EXPECT_EQ(char_device_path(12), "/dev/ublkc12");
}

}  // namespace
}  // namespace ublkvol::ublk
