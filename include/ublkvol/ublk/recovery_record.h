// RecoveryRecord: what a new server process needs to re-attach to a device
// whose previous server died (UblkDevice::recover).
//
// The driver keeps the device itself (id, queues, depth, parameters); the
// record adds what only the server knows: which volume backs the device. It
// is written atomically (temporary file, fsync, rename, directory fsync)
// when the device is created, and removed when it is deleted.
//
// File format (JSON, versioned):
//   {"format": "ublkvol-recovery", "version": 1, "dev_id": 3, "queues": 2,
//    "queue_depth": 128, "backend": {"type": "memory", ...}}
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "ublkvol/common/result.h"

namespace ublkvol::ublk {

struct RecoveryRecord {
  uint32_t dev_id = 0;
  unsigned queues = 0;
  unsigned queue_depth = 0;
  // The backend's description, in the owner's own keys (the test server uses
  // "type", "size", "block_size", "backing_file").
  std::map<std::string, std::string> backend;
};

Status save_recovery_record(const std::string& path, const RecoveryRecord& record);

// Fails with a message naming the file and the problem: missing, not JSON,
// wrong format or version, a missing or mistyped field.
Result<RecoveryRecord> load_recovery_record(const std::string& path);

Status remove_recovery_record(const std::string& path);

}  // namespace ublkvol::ublk
