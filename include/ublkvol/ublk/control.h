// ControlDevice: the ublk driver's control channel, /dev/ublk-control.
//
// Every command is one IORING_OP_URING_CMD on a private io_uring set up with
// 128-byte SQEs (the driver refuses control commands from 64-byte ones). The
// calls are synchronous: each waits for its completion. Some commands block
// in the kernel until the device's queues are ready (START_DEV,
// END_USER_RECOVERY), so issue them only after the queue threads have
// submitted their FETCH_REQs - UblkDevice does this.
//
// Errors name the command, the device and the cause, e.g.
//   "ublk_drv is not loaded: run modprobe ublk_drv (/dev/ublk-control does not exist)"
//   "ublk ADD_DEV (device 3): device id 3 is in use"
#pragma once

#include <sched.h>
#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>

#include "ublkvol/common/result.h"
#include "ublkvol/common/unique_fd.h"
#include "ublkvol/ublk/uapi.h"

namespace ublkvol::ublk {

inline constexpr const char* kControlPath = "/dev/ublk-control";

// Path of the character device the server drives (/dev/ublkcN) and of the
// block device applications use (/dev/ublkbN).
std::string char_device_path(uint32_t dev_id);
std::string block_device_path(uint32_t dev_id);

// How DEL_DEV waits.
enum class DeleteMode : uint8_t {
  // DEL_DEV: returns once the last reference is gone and the id is free for
  // reuse. Hangs while any process holds /dev/ublkcN open - never use it from
  // the process that serves the device before closing that.
  kWait,
  // DEL_DEV_ASYNC (Linux >= 6.9; falls back to kWait on older kernels):
  // returns at once; the id frees when the last reference goes.
  kAsync,
};

class ControlDevice {
 public:
  // Opens the control device. `path` is for tests.
  static Result<ControlDevice> open(const std::string& path = kControlPath);

  ControlDevice(ControlDevice&&) noexcept;
  ControlDevice& operator=(ControlDevice&&) noexcept;
  ~ControlDevice();

  // The driver's feature flags (uapi::kF*). Fails with a clear message on
  // kernels older than GET_FEATURES (6.5).
  Result<uint64_t> get_features();

  // ADD_DEV: creates /dev/ublkcN. `request.dev_id` is a number or
  // uapi::kAutoDevId. Returns what the driver set up: the id, the enabled
  // feature flags, and the queue count (the driver caps it at the number of
  // CPUs).
  Result<uapi::CtrlDevInfo> add_device(const uapi::CtrlDevInfo& request);
  Status set_params(uint32_t dev_id, const uapi::Params& params);
  Result<uapi::Params> get_params(uint32_t dev_id);
  // START_DEV: creates /dev/ublkbN. Blocks until every queue has fetched.
  Status start_device(uint32_t dev_id, pid_t server_pid);
  // STOP_DEV: removes /dev/ublkbN; outstanding FETCHes complete with
  // uapi::kIoResAbort. Needs the queues served until it returns.
  Status stop_device(uint32_t dev_id);
  Status delete_device(uint32_t dev_id, DeleteMode mode);
  // GET_DEV_INFO2 (checks permissions against /dev/ublkcN).
  Result<uapi::CtrlDevInfo> get_device_info(uint32_t dev_id);
  // The CPUs whose I/O lands on queue `queue_id`.
  Result<cpu_set_t> get_queue_affinity(uint32_t dev_id, uint16_t queue_id);
  // START_USER_RECOVERY: the device must be quiesced (its server gone and
  // /dev/ublkcN closed); fails with EBUSY while it is not yet.
  Status start_user_recovery(uint32_t dev_id);
  // END_USER_RECOVERY: blocks until every queue has fetched, then resumes
  // I/O (re-issuing what the old server held).
  Status end_user_recovery(uint32_t dev_id, pid_t server_pid);
  // UPDATE_SIZE (UBLK_F_UPDATE_SIZE, Linux >= 6.16): the live device's new
  // capacity in bytes (a multiple of 512).
  Status update_size(uint32_t dev_id, uint64_t size_bytes);
  // QUIESCE_DEV (UBLK_F_QUIESCE, Linux >= 6.16): stops the device's request
  // flow for a server hand-over; EBUSY if requests are still held by the
  // server after `timeout_ms`.
  Status quiesce_device(uint32_t dev_id, uint32_t timeout_ms);

 private:
  struct Ring;
  ControlDevice(UniqueFd fd, std::unique_ptr<Ring> ring, std::string path);

  // Runs one command; returns the CQE result (>= 0) or an Error built by
  // describe_failure().
  Result<int> run(uint32_t op, const uapi::CtrlCmd& cmd);

  UniqueFd fd_;
  std::unique_ptr<Ring> ring_;
  std::string path_;
};

// "live", "quiesced", ... for CtrlDevInfo::state.
const char* device_state_name(uint16_t state);

// Name of a control opcode for messages ("ADD_DEV").
const char* control_command_name(uint32_t op);

// The message for a failed control command: command, device and a cause in
// words for the errno values the driver uses. Exposed for tests.
Error describe_control_failure(uint32_t op, uint32_t dev_id, int negative_errno);

}  // namespace ublkvol::ublk
