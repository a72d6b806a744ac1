// Growing a volume (volume.resize): offline in methods_volume.cpp, online -
// the volume exposed as a ublk device - in online_resize.cpp.
#pragma once

#include <cstdint>

#include "ublkvol/common/result.h"
#include "ublkvol/daemon/protocol.h"

#include "registry.h"

namespace ublkvol::daemon {

// Grows a volume that has no device: closes its engine, grows every
// replica's DBS volume (each committed before the next), reopens the engine
// and records the size in state.json. Returns the volume's JSON.
Result<Json> grow_volume(Registry& r, VolumeEntry& volume, uint64_t new_size);

// Whether the exposed `volume` can be grown live; else EBUSY naming what is
// missing (kernel feature, config key, how the device was created).
Status check_online_resize(Registry& r, VolumeEntry& volume);

// Grows the exposed `volume` (check_online_resize() passed): quiesces and
// detaches its device (UBLK_F_QUIESCE: the requests in flight complete,
// new ones wait in the driver), grow_volume(), UBLK_U_CMD_UPDATE_SIZE, and
// re-attaches the device by user recovery - applications see a pause, no
// error. docs/operations.md "Kernels".
Result<Json> grow_exposed_volume(Registry& r, VolumeEntry& volume, uint64_t new_size);

}  // namespace ublkvol::daemon
