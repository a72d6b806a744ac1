// The JSON the control protocol answers with (docs/control-protocol.md
// "store object", "volume object", "orphan object", "stats"): built from the
// registry's entries and their engines, never stored.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "ublkvol/daemon/protocol.h"
#include "ublkvol/ublk/device.h"

#include "recovery.h"
#include "registry.h"

namespace ublkvol::daemon {

Json store_json(Registry& registry, StoreEntry& s);
Json volume_json(Registry& registry, VolumeEntry& v);
Json orphan_json(const std::string& store, const Orphan& o);
// daemon.status's result; `ublk` is Registry::probe_ublk()'s answer.
Json daemon_status_json(Registry& registry, const Status& ublk);
// One volume's entry in stats: the frontend's counters since expose.
Json volume_stats_json(const VolumeEntry& v);
// stats' result around the entries (volumes, and reactors_json()).
Json stats_json(Json volumes, Json reactors);
// The "reactors" list of daemon.status and stats (docs/control-protocol.md).
Json reactors_json(const Registry& registry);
Json histogram_json(const ublk::LatencyHistogram& h);

// "2026-12-07T06:55:05Z"
std::string rfc3339(std::chrono::system_clock::time_point when);
uint64_t monotonic_ns();

}  // namespace ublkvol::daemon
