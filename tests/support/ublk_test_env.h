// Where a test runs: on the host (usually no ublk driver) or in the VM test bed.
//
// The same gtest binary is registered twice with ctest: once on the host (label unit)
// and once inside the VM test bed (label e2e, via scripts/vm/run.sh, which exports
// UBLKVOL_IN_VM=1). A test that needs the kernel's ublk driver starts with
//
//   TEST(Frontend, ServesReads) {
//     UBLKVOL_REQUIRE_UBLK();
//     ...
//   }
//
// On the host it is skipped with the reason printed. In the VM it must run: a missing
// /dev/ublk-control there is a test failure, never a skip, so a broken bed cannot turn
// the e2e suite green. On a host that does have ublk_drv loaded, set UBLKVOL_HOST_UBLK=1
// to run these tests against the host's driver (they create and delete real devices).
//
// Link with the `ublkvol_test_support` INTERFACE target (tests/UblkvolTesting.cmake).
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <gtest/gtest.h>
#include <string>
#include <string_view>
#include <system_error>

// Not named `testing`: inside namespace ublkvol that would hide gtest's ::testing.
namespace ublkvol::test_env {

inline constexpr const char* kUblkControlPath = "/dev/ublk-control";

// strerror() text for an errno value, without strerror's shared buffer.
inline std::string ErrnoText(int errno_value) {
  return std::error_code(errno_value, std::generic_category()).message();
}

// True inside the VM test bed (scripts/vm/guest-init.sh exports UBLKVOL_IN_VM=1).
inline bool InVm() {
  // NOLINTNEXTLINE(concurrency-mt-unsafe): tests never modify the environment.
  const char* value = std::getenv("UBLKVOL_IN_VM");
  return value != nullptr && std::string_view(value) == "1";
}

// True when the user asked to run ublk tests against the host's own driver.
inline bool HostUblkOptIn() {
  // NOLINTNEXTLINE(concurrency-mt-unsafe): tests never modify the environment.
  const char* value = std::getenv("UBLKVOL_HOST_UBLK");
  return value != nullptr && std::string_view(value) == "1";
}

// True when kernel module `name` is loaded (or built in with parameters in sysfs).
inline bool KernelModuleLoaded(std::string_view name) {
  struct stat st {};
  const std::string path = "/sys/module/" + std::string(name);
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// Empty when /dev/ublk-control is a character device this process can open read-write;
// otherwise why not (for skip and failure messages).
inline std::string UblkControlProblem() {
  struct stat st {};
  if (::stat(kUblkControlPath, &st) != 0) {
    const int err = errno;
    std::string why = std::string(kUblkControlPath) + ": " + ErrnoText(err);
    if (!KernelModuleLoaded("ublk_drv")) {
      why += " (ublk_drv is not loaded)";
    }
    return why;
  }
  if (!S_ISCHR(st.st_mode)) {
    return std::string(kUblkControlPath) + " exists but is not a character device";
  }
  const int fd = ::open(kUblkControlPath, O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    return std::string("open(") + kUblkControlPath + ", O_RDWR): " + ErrnoText(err);
  }
  ::close(fd);
  return {};
}

// In the VM: loads a kernel module packed into the bed (loop, null_blk, brd, virtio_blk;
// list in scripts/vm/lib.sh) with its dependencies. False on failure or outside the VM.
inline bool LoadVmKernelModule(std::string_view name) {
  if (!InVm()) {
    return false;
  }
  const std::string command = "vm-load-module " + std::string(name);
  // NOLINTNEXTLINE(concurrency-mt-unsafe,cert-env33-c): test helper runs the guest's loader.
  return std::system(command.c_str()) == 0;
}

// In the VM: the block device of the index-th `--disk SIZE` given to scripts/vm/run.sh
// (an empty, sparse NVMe disk; one controller per disk, so nvme<index>n1).
inline std::string VmScratchDiskPath(int index) {
  return "/dev/nvme" + std::to_string(index) + "n1";
}

// What UBLKVOL_REQUIRE_UBLK() does here.
enum class UblkVerdict {
  kRun,   // the driver is usable: run the test
  kSkip,  // host without (opted-in) ublk: skip with the reason
  kFail,  // in the VM but the driver is unusable: the bed is broken
};

struct UblkRequirement {
  UblkVerdict verdict;
  std::string reason;
};

inline UblkRequirement CheckUblkRequirement() {
  if (InVm()) {
    std::string problem = UblkControlProblem();
    if (problem.empty()) {
      return {UblkVerdict::kRun, {}};
    }
    return {UblkVerdict::kFail,
            "in the VM test bed (UBLKVOL_IN_VM=1) the ublk driver must be usable: " + problem};
  }
  if (HostUblkOptIn()) {
    std::string problem = UblkControlProblem();
    if (problem.empty()) {
      return {UblkVerdict::kRun, {}};
    }
    return {UblkVerdict::kFail,
            "UBLKVOL_HOST_UBLK=1 but the host's ublk driver is unusable: " + problem};
  }
  return {UblkVerdict::kSkip,
          "needs the kernel ublk driver; this is a host run, the VM test bed runs it "
          "(ctest -L e2e; set UBLKVOL_HOST_UBLK=1 to use this host's driver)"};
}

}  // namespace ublkvol::test_env

// Skip on the host, fail in the VM if the driver is missing, otherwise carry on.
// Use at the top of a TEST body or a fixture's SetUp() (it may `return`).
#define UBLKVOL_REQUIRE_UBLK()                                                     \
  do {                                                                             \
    const ::ublkvol::test_env::UblkRequirement ublkvol_requirement_ =              \
        ::ublkvol::test_env::CheckUblkRequirement();                               \
    if (ublkvol_requirement_.verdict == ::ublkvol::test_env::UblkVerdict::kFail) { \
      FAIL() << ublkvol_requirement_.reason;                                       \
    }                                                                              \
    if (ublkvol_requirement_.verdict == ::ublkvol::test_env::UblkVerdict::kSkip) { \
      GTEST_SKIP() << ublkvol_requirement_.reason;                                 \
    }                                                                              \
  } while (false)
