// NBD exports of volumes (volume.export / volume.unexport, docs/nbd-export.md):
// starting one from its ExportRecord on the volume's export queue, with
// BLOCK_STATUS answered from the replicas' DBS mappings; stopping it; its
// JSON. Runs on the daemon's control thread; the export itself runs on its
// own thread (nbd/server.h).
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "ublkvol/daemon/protocol.h"
#include "ublkvol/daemon/state_file.h"

namespace ublkvol::dbs {
class Store;
}
namespace ublkvol::engine {
class StoreExecutor;
}

namespace ublkvol::daemon {

class Registry;
struct VolumeEntry;

// Where an export's BLOCK_STATUS reads mappings: the DBS volume of each
// replica the volume had when the export started. Shared by the export's
// query and the volume's replica slots: closing any slot (replica removed,
// replaced, volume closed) invalidates it under the mutex - waiting for a
// query that runs - and from then on the export reports everything as data
// (never wrong: a hole is only claimed where no replica has data).
struct ExportAllocation {
  struct Source {
    engine::StoreExecutor* thread = nullptr;
    dbs::Store* store = nullptr;
    std::string volume;  // the replica's DBS volume name
  };
  std::mutex mutex;
  bool valid = true;
  std::vector<Source> sources;
  void invalidate() {
    const std::lock_guard lock(mutex);
    valid = false;
    sources.clear();
  }
};

// Starts the export `record` describes on `v` (open): EADDRINUSE, EINVAL for
// a bad address or TLS file, naming them. Sets v.nbd_export and v.exported.
Status start_export(Registry& r, VolumeEntry& v, const ExportRecord& record);
// Stops v's export (if running): new clients refused at once, connections
// closed after their requests completed.
void stop_export(VolumeEntry& v);
// At daemon start: starts the export of every open volume that has one
// recorded; a failure is logged and the volume stays unexported (its record
// is kept, so the next start tries again).
void start_recorded_exports(Registry& r);
// daemon.status's "exports": one {volume, listen, address, control_address}
// per exported volume - the bound NBD and peer control addresses (the real
// ports of a port-0 export; null while not running / without a channel).
Json exports_status_json(const Registry& r);
// The volume object's "export": null, or {listen, address, tls, connections, ...}.
Json export_json(const VolumeEntry& v);

}  // namespace ublkvol::daemon
