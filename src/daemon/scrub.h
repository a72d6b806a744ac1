// Online verify / scrub in the daemon (issue 12 item 7): the JSON the
// daemon reports for a volume's verify state (volume.show, stats) and the
// engine options a volume's scheduled scrub gets from the config. The runs
// themselves are the engine's (ReplicatedVolume::start_verify and its
// scheduled scrub, docs/engine.md "Verify, repair and scrub").
#pragma once

#include "ublkvol/daemon/config.h"
#include "ublkvol/daemon/protocol.h"
#include "ublkvol/engine/replicated_volume.h"

namespace ublkvol::daemon {

// {"active", "repair", "done_bytes", "total_bytes", "percent",
//  "bytes_per_second", "mismatched_bytes", "repaired_bytes",
//  "last": null | {"time", "repair", "bytes", "mismatched_bytes",
//  "repaired_bytes", "unrepaired_bytes", "seconds", "error",
//  "mismatches": [{"offset", "length"}...]}, "runs"}
Json verify_json(const engine::VerifyStatus& status);

// The scheduled scrub of every volume: scrub_interval_s, scrub_mb_per_s,
// scrub_repair.
void apply_scrub_config(const DaemonConfig& config, engine::ReplicatedVolumeOptions& options);

}  // namespace ublkvol::daemon
