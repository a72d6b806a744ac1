// Whether a ublk block device or a store's block device is held by someone
// (mounted, opened O_EXCL): volume.unexpose and shutdown refuse or detach,
// store.add --format refuses. Who holds it is dbs::describe_device_users()
// (the /proc scan, include/ublkvol/dbs/device_users.h).
#pragma once

#include <string>

#include "ublkvol/common/result.h"

namespace ublkvol::daemon {

// True if an exclusive open of `block_path` fails with EBUSY; false if it
// succeeds or the device is gone (ENOENT, ENXIO, ENODEV).
Result<bool> block_device_in_use(const std::string& block_path);

}  // namespace ublkvol::daemon
