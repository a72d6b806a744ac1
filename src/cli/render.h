// Human output of the daemon's results: tables for lists, "key: value"
// blocks for single objects. Pure functions of the result JSON (the shapes
// are in docs/control-protocol.md), so tests feed them canned results.
//
// They tolerate missing optional fields (printed as "-"), and throw
// nlohmann::json::exception only when a field has a type the protocol does
// not allow; the caller reports that as an unexpected daemon answer.
#pragma once

#include <ostream>

#include "control_client.h"

namespace ublkvol::cli {

void render_store_list(std::ostream& out, const Json& result);  // store.list
void render_store(std::ostream& out, const Json& store);        // store.show
void render_store_check(std::ostream& out, const std::string& name, const Json& result);
void render_volume_list(std::ostream& out, const Json& result);     // volume.list
void render_volume(std::ostream& out, const Json& volume);          // volume.show
void render_verify(std::ostream& out, const Json& verify);          // volume.show "verify"
void render_replica_list(std::ostream& out, const Json& replicas);  // array
// volume.show's remote replicas (URI, state, connections, latency, errors).
void render_remote_replicas(std::ostream& out, const Json& volume);
void render_snapshot_list(std::ostream& out, const Json& result);  // snapshot.list
void render_status(std::ostream& out, const Json& status);         // daemon.status
void render_store_gc(std::ostream& out, const std::string& name, const Json& result);  // store.gc

// A generation id (random 64-bit, docs/engine.md) as 16 hex digits, as the
// daemon's events print it; 0 (none) as "-".
std::string format_generation(const Json& value);

// "online", "degraded" (online but a replica is not in sync), "offline".
std::string volume_health(const Json& volume);

}  // namespace ublkvol::cli
