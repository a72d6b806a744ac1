// Proves the VM test bed works: the guest booted our kernel, ublk_drv is loaded,
// /dev/ublk-control is the driver's character device, and a binary built by this project
// runs in the guest and opens it read-write.
//
// One binary, two ctest tests (ublkvol_add_host_and_vm_test): vm_smoke_test on the host
// (skips, printing why) and vm_smoke_test_vm inside the VM (must pass, never skip).
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/utsname.h>

#include <cerrno>
#include <fstream>
#include <gtest/gtest.h>
#include <string>

#include "ublkvol/common/unique_fd.h"

#include "support/ublk_test_env.h"

namespace {

using ublkvol::UniqueFd;
namespace test_env = ublkvol::test_env;

// Misc character devices (like /dev/ublk-control) all have major number 10.
constexpr unsigned kMiscMajor = 10;

TEST(VmTestBed, UblkDriverModuleIsLoaded) {
  UBLKVOL_REQUIRE_UBLK();
  EXPECT_TRUE(test_env::KernelModuleLoaded("ublk_drv"))
      << "/sys/module/ublk_drv is missing although /dev/ublk-control is usable";
  // The bed loads ublk_drv as a module (it is =m in the Debian kernel): its state file
  // must say it finished initialising.
  std::ifstream state("/sys/module/ublk_drv/initstate");
  std::string word;
  if (test_env::InVm()) {
    ASSERT_TRUE(state >> word) << "cannot read /sys/module/ublk_drv/initstate";
    EXPECT_EQ(word, "live");
  }
}

TEST(VmTestBed, ControlNodeIsTheDriversMiscCharDevice) {
  UBLKVOL_REQUIRE_UBLK();
  struct stat st {};
  ASSERT_EQ(::stat(test_env::kUblkControlPath, &st), 0) << test_env::ErrnoText(errno);
  EXPECT_TRUE(S_ISCHR(st.st_mode)) << "mode " << std::oct << st.st_mode;
  EXPECT_EQ(major(st.st_rdev), kMiscMajor);
  // The misc minor the driver got is published in sysfs; the node must point at it.
  std::ifstream dev("/sys/class/misc/ublk-control/dev");
  std::string major_minor;
  ASSERT_TRUE(dev >> major_minor) << "cannot read /sys/class/misc/ublk-control/dev";
  EXPECT_EQ(major_minor,
            std::to_string(major(st.st_rdev)) + ":" + std::to_string(minor(st.st_rdev)));
}

TEST(VmTestBed, ControlDeviceOpensReadWrite) {
  UBLKVOL_REQUIRE_UBLK();
  UniqueFd control(::open(test_env::kUblkControlPath, O_RDWR | O_CLOEXEC));
  ASSERT_TRUE(control.valid()) << "open(" << test_env::kUblkControlPath
                               << ", O_RDWR): " << test_env::ErrnoText(errno);
  struct stat st {};
  ASSERT_EQ(::fstat(control.get(), &st), 0) << test_env::ErrnoText(errno);
  EXPECT_TRUE(S_ISCHR(st.st_mode));
}

TEST(VmTestBed, GuestRunsTheTestKernel) {
  UBLKVOL_REQUIRE_UBLK();
  if (!test_env::InVm()) {
    GTEST_SKIP() << "checks the VM's kernel; this run uses the host's ublk driver";
  }
  struct utsname uts {};
  ASSERT_EQ(::uname(&uts), 0);
  // scripts/vm/fetch-kernel.sh fetches Debian's 6.12 cloud kernel: USER_RECOVERY and the
  // other features the daemon relies on are there.
  EXPECT_EQ(std::string(uts.release).rfind("6.12.", 0), 0U) << uts.release;
}

// Runs everywhere: the decision the macro takes must match the environment.
TEST(VmTestBed, RequirementMatchesEnvironment) {
  const test_env::UblkRequirement requirement = test_env::CheckUblkRequirement();
  if (test_env::InVm()) {
    EXPECT_EQ(requirement.verdict, test_env::UblkVerdict::kRun) << requirement.reason;
  } else if (!test_env::HostUblkOptIn()) {
    EXPECT_EQ(requirement.verdict, test_env::UblkVerdict::kSkip);
    EXPECT_NE(requirement.reason.find("ublk"), std::string::npos) << requirement.reason;
  }
}

}  // namespace
