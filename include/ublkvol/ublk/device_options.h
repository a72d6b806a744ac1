// DeviceOptions: how a volume is exposed as /dev/ublkbN, and the checks and
// translation into the driver's parameters.
//
// Bad options are refused before anything is created, with a message that
// names the option and the allowed range (e.g. "queue depth 100000 is out of
// range 1..4096").
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ublkvol/common/result.h"
#include "ublkvol/engine/volume.h"
#include "ublkvol/ublk/queue_host.h"
#include "ublkvol/ublk/uapi.h"

namespace ublkvol::ublk {

// Who runs the hardware queues (docs/ublk.md, "Queue loops").
enum class QueueLoop : uint8_t {
  // One thread per queue, created by the device, sleeping in io_uring_enter.
  kThread,
  // DeviceOptions::queue_host runs every queue as a reactor::Poller on the
  // thread(s) it picks (queue_host.h); the device creates no thread.
  kExternal,
};

// "thread" / "external".
const char* to_string(QueueLoop loop);
Result<QueueLoop> parse_queue_loop(const std::string& text);

struct DeviceOptions {
  // Device number N of /dev/ublkbN; -1 lets the driver pick the lowest free.
  int32_t dev_id = -1;
  // Hardware queues: one server thread (and one VolumeQueue) each. The driver
  // caps this at the number of CPUs.
  unsigned queues = 1;
  // Requests in flight per queue (tags).
  unsigned queue_depth = 128;
  // Largest request, in bytes (a multiple of 4 KiB); also the size of each
  // tag's buffer. 0: the volume's max_io_bytes.
  uint32_t max_io_bytes = 0;
  // Create the device with UBLK_F_USER_RECOVERY | UBLK_F_USER_RECOVERY_REISSUE:
  // it outlives this process, and a new one can re-attach (UblkDevice::recover).
  bool recoverable = false;
  // With `recoverable`, also create it with UBLK_F_QUIESCE when the kernel
  // has it (Linux >= 6.16): UblkDevice::quiesce_and_detach() can then hand
  // the device over with nothing in flight.
  bool quiesce = false;
  // Pin each queue thread to the CPUs the driver maps to its queue.
  bool pin_queue_threads = true;
  // Mark queue threads PR_SET_IO_FLUSHER (needs CAP_SYS_RESOURCE; a warning
  // otherwise) so that memory reclaim never waits on them while they write.
  // Thread mode only (external: the host's threads, its business).
  bool io_flusher = true;
  // Zero copy (docs/zero-copy.md): create the device with
  // UBLK_F_AUTO_BUF_REG | UBLK_F_USER_COPY when the kernel has both (Linux
  // >= 6.16); on older kernels (6.12) it is ignored: copy mode as before.
  bool zero_copy = false;
  // With zero_copy: each queue asks its VolumeQueue, per READ/WRITE, whether
  // every replica the request can reach does its I/O on the queue's thread
  // through a dbs::FileDevice (all_targets_local()); if so the request goes
  // to the volume as a fixed-buffer window address and nothing is copied,
  // else it is copied by pread/pwrite on /dev/ublkcN. Without it every data
  // request of a zero-copy device is copied.
  bool zero_copy_direct = false;
  QueueLoop queue_loop = QueueLoop::kThread;
  // kExternal: runs the queues; must outlive the device. Not owned.
  QueueHost* queue_host = nullptr;
  // kExternal: which of the host's threads runs queue q - queue_places[q mod
  // size()], an index the host understands (a reactor's, for a reactor
  // host); empty: the host's own choice (queue q on thread q mod N). The
  // daemon puts a volume's queues only on reactors that serve one of its
  // replicas: a queue elsewhere would send every request to another thread
  // and back (docs/architecture.md, "Where a queue runs").
  std::vector<unsigned> queue_places;

  // Queue q of device `device` as the host sees it (place from queue_places).
  [[nodiscard]] QueueRef queue_ref(uint32_t device, unsigned q) const {
    QueueRef ref{device, static_cast<uint16_t>(q)};
    if (!queue_places.empty()) {
      ref.place = static_cast<int32_t>(queue_places[q % queue_places.size()]);
    }
    return ref;
  }
};

inline constexpr uint32_t kMinBlockSize = 512;
// The driver accepts logical blocks up to the page size.
inline constexpr uint32_t kMaxBlockSize = 4096;
inline constexpr uint32_t kDefaultMaxIoBytes = 1U << 20U;
// Largest DISCARD / WRITE_ZEROES request handed to the volume at once (and
// never more than the volume's max_io_bytes, which bounds every request).
inline constexpr uint32_t kMaxDiscardBytes = 64U << 20U;
// Device numbers are minor numbers (MINORBITS = 20).
inline constexpr int32_t kMaxDevId = (1 << 20) - 1;

// Checks `options` and the volume's description. Every message names the
// problem: "block size 3000 is not a power of two between 512 and 4096",
// "queue depth 0 is out of range 1..4096", "volume size is 0", ...
Status validate_device_options(const DeviceOptions& options, const engine::VolumeInfo& volume);

// The request buffer size used for `options` on `volume`.
uint32_t effective_max_io_bytes(const DeviceOptions& options, const engine::VolumeInfo& volume);

// SET_PARAMS contents for `volume`: logical block = volume block size,
// physical block 4 KiB (or the block size if larger), max request
// `max_io_bytes`, discard / write-zeroes limits (min(kMaxDiscardBytes,
// volume.max_io_bytes)) if the volume supports them,
// volatile write cache + FUA if the volume has a volatile cache.
uapi::Params make_device_params(const engine::VolumeInfo& volume, uint32_t max_io_bytes);

}  // namespace ublkvol::ublk
