#include "ublkvol/ublk/control.h"

#include <fcntl.h>
#include <liburing.h>

#include <cerrno>
#include <cstring>
#include <system_error>
#include <utility>

namespace ublkvol::ublk {

std::string char_device_path(uint32_t dev_id) { return "/dev/ublkc" + std::to_string(dev_id); }
std::string block_device_path(uint32_t dev_id) { return "/dev/ublkb" + std::to_string(dev_id); }

const char* device_state_name(uint16_t state) {
  switch (state) {
    case uapi::kDevStateDead:
      return "dead";
    case uapi::kDevStateLive:
      return "live";
    case uapi::kDevStateQuiesced:
      return "quiesced";
    case uapi::kDevStateFailIo:
      return "fail-io";
    default:
      return "unknown";
  }
}

const char* control_command_name(uint32_t op) {
  switch (op) {
    case uapi::kCmdGetQueueAffinity:
      return "GET_QUEUE_AFFINITY";
    case uapi::kCmdGetDevInfo:
      return "GET_DEV_INFO";
    case uapi::kCmdAddDev:
      return "ADD_DEV";
    case uapi::kCmdDelDev:
      return "DEL_DEV";
    case uapi::kCmdStartDev:
      return "START_DEV";
    case uapi::kCmdStopDev:
      return "STOP_DEV";
    case uapi::kCmdSetParams:
      return "SET_PARAMS";
    case uapi::kCmdGetParams:
      return "GET_PARAMS";
    case uapi::kCmdStartUserRecovery:
      return "START_USER_RECOVERY";
    case uapi::kCmdEndUserRecovery:
      return "END_USER_RECOVERY";
    case uapi::kCmdGetDevInfo2:
      return "GET_DEV_INFO2";
    case uapi::kCmdGetFeatures:
      return "GET_FEATURES";
    case uapi::kCmdDelDevAsync:
      return "DEL_DEV_ASYNC";
    case uapi::kCmdUpdateSize:
      return "UPDATE_SIZE";
    case uapi::kCmdQuiesceDev:
      return "QUIESCE_DEV";
    default:
      return "unknown command";
  }
}

Error describe_control_failure(uint32_t op, uint32_t dev_id, int negative_errno) {
  const int err = -negative_errno;
  std::string what = std::string("ublk ") + control_command_name(op);
  if (op != uapi::kCmdGetFeatures && dev_id != uapi::kAutoDevId) {
    what += " (device " + std::to_string(dev_id) + ")";
  }
  std::string cause;
  switch (err) {
    case ENODEV:
      cause = op == uapi::kCmdGetFeatures
                  ? "the driver does not know this command: kernel older than 6.5"
                  : "no such ublk device";
      break;
    case EEXIST:
      cause = op == uapi::kCmdAddDev ? "the device id is in use" : "the device is already started";
      break;
    case EPERM:
      cause = "permission denied: ublk devices need CAP_SYS_ADMIN";
      break;
    case EACCES:
      if (op == uapi::kCmdAddDev) {
        // ublk_drv's only EACCES on ADD_DEV for a server that could open
        // /dev/ublk-control: ublks_added >= ublks_max.
        cause =
            "the host's ublk device limit is reached: the ublk_drv module parameter ublks_max "
            "(default 64; /sys/module/ublk_drv/parameters/ublks_max) caps all ublk devices on "
            "Linux <= 6.14 (unprivileged ones on later kernels); raise it (echo N > "
            "/sys/module/ublk_drv/parameters/ublks_max, or modprobe ublk_drv ublks_max=N) or "
            "delete unused devices";
      } else {
        cause = op == uapi::kCmdSetParams ? "parameters cannot change once the device is started"
                                          : "permission denied";
      }
      break;
    case EOPNOTSUPP:
      cause = "not supported by this kernel's ublk_drv (or not a ublk control device)";
      break;
    case EBUSY:
      if (op == uapi::kCmdStartUserRecovery) {
        cause = "the device is not quiesced yet (its old server has not fully exited)";
      } else if (op == uapi::kCmdQuiesceDev) {
        cause = "the server still held requests when the quiesce timeout expired";
      } else {
        cause = "the device is busy";
      }
      break;
    case EINVAL:
      switch (op) {
        case uapi::kCmdAddDev:
          cause = "the driver refused the device description (queues, depth, id or flags)";
          break;
        case uapi::kCmdSetParams:
          cause = "the driver refused the parameters";
          break;
        case uapi::kCmdStartUserRecovery:
        case uapi::kCmdEndUserRecovery:
          cause =
              "the device cannot be recovered (created without UBLK_F_USER_RECOVERY, or never "
              "started)";
          break;
        default:
          cause = "invalid argument";
      }
      break;
    case EINTR:
      cause = "interrupted while waiting for the device's queues";
      break;
    default:
      cause = std::error_code(err, std::generic_category()).message();
  }
  return Error(err, what + ": " + cause);
}

struct ControlDevice::Ring {
  io_uring ring{};
  ~Ring() { io_uring_queue_exit(&ring); }
};

ControlDevice::ControlDevice(UniqueFd fd, std::unique_ptr<Ring> ring, std::string path)
    : fd_(std::move(fd)), ring_(std::move(ring)), path_(std::move(path)) {}
ControlDevice::ControlDevice(ControlDevice&&) noexcept = default;
ControlDevice& ControlDevice::operator=(ControlDevice&&) noexcept = default;
ControlDevice::~ControlDevice() = default;

Result<ControlDevice> ControlDevice::open(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
  if (!fd) {
    const int err = errno;
    if (err == ENOENT) {
      return Error(ENOENT,
                   "ublk_drv is not loaded: run modprobe ublk_drv (" + path + " does not exist)");
    }
    if (err == EACCES || err == EPERM) {
      return Error(err, "cannot open " + path + ": ublk devices need root (CAP_SYS_ADMIN)");
    }
    return Error(err, "cannot open " + path);
  }
  auto ring = std::make_unique<Ring>();
  // Commands run one at a time; a tiny ring is enough.
  const int rc = io_uring_queue_init(4, &ring->ring, IORING_SETUP_SQE128);
  if (rc < 0) {
    return Error(-rc,
                 "cannot set up the io_uring for " + path +
                     " (128-byte SQEs need Linux >= 5.19; io_uring may be disabled by sysctl)");
  }
  return ControlDevice(std::move(fd), std::move(ring), path);
}

Result<int> ControlDevice::run(uint32_t op, const uapi::CtrlCmd& cmd) {
  io_uring* ring = &ring_->ring;
  io_uring_sqe* sqe = io_uring_get_sqe(ring);
  if (sqe == nullptr) {
    return Error(EBUSY, std::string("ublk ") + control_command_name(op) + ": control ring full");
  }
  // A 128-byte SQE: the command lives in the 80 bytes after the first 48.
  std::memset(static_cast<void*>(sqe), 0, 2 * sizeof(io_uring_sqe));
  sqe->opcode = IORING_OP_URING_CMD;
  sqe->fd = fd_.get();
  sqe->cmd_op = op;
  static_assert(sizeof(uapi::CtrlCmd) <= 80);
  std::memcpy(static_cast<void*>(sqe->cmd), &cmd, sizeof(cmd));
  int rc = io_uring_submit(ring);
  if (rc < 0) {
    return Error(-rc, std::string("ublk ") + control_command_name(op) + ": io_uring submit failed");
  }
  io_uring_cqe* cqe = nullptr;
  do {
    rc = io_uring_wait_cqe(ring, &cqe);
  } while (rc == -EINTR);
  if (rc < 0) {
    return Error(-rc, std::string("ublk ") + control_command_name(op) + ": io_uring wait failed");
  }
  const int res = cqe->res;
  io_uring_cqe_seen(ring, cqe);
  if (res < 0) {
    return describe_control_failure(op, cmd.dev_id, res);
  }
  return res;
}

namespace {
uapi::CtrlCmd command_for(uint32_t dev_id) {
  uapi::CtrlCmd cmd{};
  cmd.dev_id = dev_id;
  cmd.queue_id = uapi::kNoQueue;
  return cmd;
}
uint64_t address_of(const void* p) { return reinterpret_cast<uintptr_t>(p); }
}  // namespace

Result<uint64_t> ControlDevice::get_features() {
  uint64_t features = 0;
  uapi::CtrlCmd cmd = command_for(uapi::kAutoDevId);
  cmd.addr = address_of(&features);
  cmd.len = uapi::kFeaturesLen;
  auto r = run(uapi::kCmdGetFeatures, cmd);
  if (!r) {
    return r.error();
  }
  return features;
}

Result<uapi::CtrlDevInfo> ControlDevice::add_device(const uapi::CtrlDevInfo& request) {
  uapi::CtrlDevInfo info = request;
  uapi::CtrlCmd cmd = command_for(request.dev_id);
  cmd.addr = address_of(&info);
  cmd.len = sizeof(info);
  auto r = run(uapi::kCmdAddDev, cmd);
  if (!r) {
    if (r.error().errno_value() == EEXIST) {
      return Error(EEXIST, "ublk ADD_DEV: device id " + std::to_string(request.dev_id) +
                               " is in use (delete it first, or let the driver pick an id)");
    }
    return r.error();
  }
  return info;
}

Status ControlDevice::set_params(uint32_t dev_id, const uapi::Params& params) {
  uapi::Params copy = params;
  copy.len = sizeof(copy);
  uapi::CtrlCmd cmd = command_for(dev_id);
  cmd.addr = address_of(&copy);
  cmd.len = sizeof(copy);
  auto r = run(uapi::kCmdSetParams, cmd);
  if (!r) {
    return r.error();
  }
  return ok_status();
}

Result<uapi::Params> ControlDevice::get_params(uint32_t dev_id) {
  uapi::Params params{};
  params.len = sizeof(params);
  uapi::CtrlCmd cmd = command_for(dev_id);
  cmd.addr = address_of(&params);
  cmd.len = sizeof(params);
  auto r = run(uapi::kCmdGetParams, cmd);
  if (!r) {
    return r.error();
  }
  return params;
}

Status ControlDevice::start_device(uint32_t dev_id, pid_t server_pid) {
  uapi::CtrlCmd cmd = command_for(dev_id);
  cmd.data[0] = static_cast<uint64_t>(server_pid);
  auto r = run(uapi::kCmdStartDev, cmd);
  return r ? ok_status() : Status(r.error());
}

Status ControlDevice::stop_device(uint32_t dev_id) {
  auto r = run(uapi::kCmdStopDev, command_for(dev_id));
  return r ? ok_status() : Status(r.error());
}

Status ControlDevice::delete_device(uint32_t dev_id, DeleteMode mode) {
  if (mode == DeleteMode::kAsync) {
    auto r = run(uapi::kCmdDelDevAsync, command_for(dev_id));
    if (r) {
      return ok_status();
    }
    // Kernels before DEL_DEV_ASYNC answer EOPNOTSUPP: fall back to waiting.
    if (r.error().errno_value() != EOPNOTSUPP) {
      return r.error();
    }
  }
  auto r = run(uapi::kCmdDelDev, command_for(dev_id));
  return r ? ok_status() : Status(r.error());
}

Result<uapi::CtrlDevInfo> ControlDevice::get_device_info(uint32_t dev_id) {
  // GET_DEV_INFO2's buffer starts with the path of /dev/ublkcN (the driver
  // checks permissions on it), then the info.
  const std::string path = char_device_path(dev_id);
  struct {
    char path[64];
    uapi::CtrlDevInfo info;
  } buffer{};
  static_assert(offsetof(decltype(buffer), info) == 64);
  std::memcpy(buffer.path, path.c_str(), path.size() + 1);
  uapi::CtrlCmd cmd = command_for(dev_id);
  cmd.addr = address_of(&buffer);
  cmd.len = sizeof(buffer);
  cmd.dev_path_len = sizeof(buffer.path);
  auto r = run(uapi::kCmdGetDevInfo2, cmd);
  if (!r) {
    return r.error();
  }
  return buffer.info;
}

Result<cpu_set_t> ControlDevice::get_queue_affinity(uint32_t dev_id, uint16_t queue_id) {
  cpu_set_t set;
  CPU_ZERO(&set);
  uapi::CtrlCmd cmd = command_for(dev_id);
  cmd.addr = address_of(&set);
  cmd.len = sizeof(set);
  cmd.data[0] = queue_id;
  auto r = run(uapi::kCmdGetQueueAffinity, cmd);
  if (!r) {
    return r.error();
  }
  return set;
}

Status ControlDevice::start_user_recovery(uint32_t dev_id) {
  auto r = run(uapi::kCmdStartUserRecovery, command_for(dev_id));
  return r ? ok_status() : Status(r.error());
}

Status ControlDevice::end_user_recovery(uint32_t dev_id, pid_t server_pid) {
  uapi::CtrlCmd cmd = command_for(dev_id);
  cmd.data[0] = static_cast<uint64_t>(server_pid);
  auto r = run(uapi::kCmdEndUserRecovery, cmd);
  return r ? ok_status() : Status(r.error());
}

Status ControlDevice::update_size(uint32_t dev_id, uint64_t size_bytes) {
  uapi::CtrlCmd cmd = command_for(dev_id);
  cmd.data[0] = size_bytes / 512;
  auto r = run(uapi::kCmdUpdateSize, cmd);
  return r ? ok_status() : Status(r.error());
}

Status ControlDevice::quiesce_device(uint32_t dev_id, uint32_t timeout_ms) {
  uapi::CtrlCmd cmd = command_for(dev_id);
  cmd.data[0] = timeout_ms;
  auto r = run(uapi::kCmdQuiesceDev, cmd);
  return r ? ok_status() : Status(r.error());
}

}  // namespace ublkvol::ublk
