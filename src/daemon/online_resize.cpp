// volume.resize of an exposed volume (UBLK_F_UPDATE_SIZE + UBLK_F_QUIESCE,
// Linux >= 6.16). The engine takes its size from the replicas when it opens
// and keeps it immutable while open (engine/replicated/impl.h), so instead
// of growing it in place the device is quiesced around the offline grow:
//   1. QUIESCE_DEV, the queues finish what they hold and end (the driver
//      keeps new requests waiting);
//   2. grow_volume(): engine closed, every replica grown and committed,
//      engine reopened, state.json saved;
//   3. UPDATE_SIZE: the kernel's capacity, only once every replica has it;
//   4. user recovery re-attaches this process's new queues.
// Applications see one pause (measured and logged), never an error.
#include <chrono>
#include <spdlog/spdlog.h>

#include "ublkvol/ublk/control.h"
#include "ublkvol/ublk/uapi.h"

#include "render.h"
#include "resize.h"

namespace ublkvol::daemon {
namespace {

// Bounds, not expected times: the queues' last requests complete in
// milliseconds; the ring teardown that releases the device likewise.
constexpr std::chrono::seconds kQuiesceTimeout{30};
constexpr std::chrono::seconds kReleaseTimeout{30};

const std::string kOffline = "; unexpose it, resize, expose it again";

}  // namespace

Status check_online_resize(Registry& r, VolumeEntry& volume) {
  const std::string path = volume.device ? volume.device->block_path() : "a ublk device";
  const std::string what = "volume " + named(volume.name) + " is exposed as " + path;
  // EBUSY whatever is missing: the volume is busy being a device.
  if (Status live = r.require_optional_feature(ublk::uapi::kFUpdateSize); !live.ok()) {
    return Error(EBUSY, what + ": " + live.error().message() + kOffline);
  }
  if (Status quiesce = r.require_optional_feature(ublk::uapi::kFQuiesce); !quiesce.ok()) {
    const bool off = (r.kernel.turned_off & ublk::uapi::kFQuiesce) != 0;
    return Error(EBUSY, what + ": online resize needs UBLK_F_QUIESCE" +
                            (off ? ", which the configuration turns off (ublk_features_off)"
                                 : " (" + quiesce.error().message() + ")") +
                            kOffline);
  }
  if (!volume.device) {
    return Error(
        EBUSY, what + " but its device is not attached (ublk was unavailable at start)" + kOffline);
  }
  if (!volume.device->quiescable()) {
    return Error(EBUSY, what +
                            ", which was created without UBLK_F_QUIESCE (by an older "
                            "ublk-volumed, with QUIESCE in ublk_features_off, or with "
                            "recoverable_devices false): online resize quiesces the device" +
                            kOffline);
  }
  return ok_status();
}

Result<Json> grow_exposed_volume(Registry& r, VolumeEntry& volume, uint64_t new_size) {
  const uint32_t dev_id = volume.device->id();
  const std::string path = volume.device->block_path();
  const std::string what = "volume " + named(volume.name) + " (" + path + ")";
  const auto paused = std::chrono::steady_clock::now();
  if (Status quiesced = volume.device->quiesce_and_detach(kQuiesceTimeout); !quiesced.ok()) {
    // A QUIESCE_DEV that timed out leaves the driver holding new requests
    // back: go on with a plain detach - the re-attach below releases them,
    // and what the queues held is re-issued, as after a restart.
    spdlog::warn("{}: {}; detaching without quiescing", what, quiesced.error().message());
    if (Status detached = volume.device->detach(); !detached.ok()) {
      return detached.error().with_context(what + ": cannot detach the device for the resize");
    }
  }
  volume.device.reset();
  // From here on the device waits, quiesced, for a server: it is re-attached
  // whatever the grow does (at the old size if the grow failed).
  Result<Json> grown = Error(EIO, "not run");
  if (Status released = ublk::UblkDevice::wait_released(dev_id, kReleaseTimeout); !released.ok()) {
    grown = released.error();
  } else {
    grown = grow_volume(r, volume, new_size);
  }
  if (grown.ok()) {
    auto control = ublk::ControlDevice::open();
    Status updated =
        control.ok() ? control->update_size(dev_id, new_size) : Status(control.error());
    if (!updated.ok()) {
      grown =
          updated.error().with_context(what + ": every replica holds " + std::to_string(new_size) +
                                       " bytes but the device's size could not be updated");
    }
  }
  if (!volume.engine) {
    const std::string why = grown.ok() ? "the volume is not open" : grown.error().message();
    return Error(EIO, why + "; " + path +
                          " stays quiesced (applications wait) until the volume opens: repeat "
                          "the resize or restart ublk-volumed");
  }
  ublk::DeviceOptions options = r.device_base_options(volume);
  options.dev_id = static_cast<int32_t>(dev_id);
  options.recoverable = true;
  auto recovered = ublk::UblkDevice::recover(*volume.frontend, dev_id, options);
  if (!recovered.ok()) {
    return Error(recovered.error().errno_value(),
                 (grown.ok() ? "" : grown.error().message() + "; ") +
                     recovered.error().with_context("re-attaching " + path).message() +
                     " (it stays quiesced: restart ublk-volumed to re-attach it)");
  }
  volume.device = std::move(*recovered);
  r.note_queue_places(volume, options);
  const auto pause_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                            std::chrono::steady_clock::now() - paused)
                            .count();
  if (!grown.ok()) {
    spdlog::error("{}: resize failed, device re-attached after {} ms: {}", what, pause_ms,
                  grown.error().message());
    return grown.error();
  }
  spdlog::info("{}: grown online to {} bytes (quiesce, grow, UPDATE_SIZE, re-attach: {} ms)", what,
               new_size, pause_ms);
  return volume_json(r, volume);
}

}  // namespace ublkvol::daemon
