// NBD exports of volumes (exports.h, docs/nbd-export.md).
#include "exports.h"

#include <algorithm>
#include <cerrno>
#include <spdlog/spdlog.h>

#include "ublkvol/dbs/store.h"
#include "ublkvol/engine/store_executor.h"

#include "registry.h"

namespace ublkvol::daemon {

namespace {

// BLOCK_STATUS base:allocation: the union of the replicas' mapped ranges
// (every in-sync replica is among them, so a range none maps reads as
// zeros). Anything it cannot tell - a source gone, a store error - answers
// "all data", which is never wrong.
nbd::AllocationQuery allocation_query(std::shared_ptr<ExportAllocation> alloc) {
  return [alloc = std::move(alloc)](uint64_t offset, uint64_t length) -> Result<nbd::MappedRanges> {
    const nbd::MappedRanges all{{offset, length}};
    const std::lock_guard lock(alloc->mutex);
    if (!alloc->valid || alloc->sources.empty()) {
      return all;
    }
    nbd::MappedRanges ranges;
    const uint64_t end = offset + length;
    for (const auto& source : alloc->sources) {
      const Status found = source.thread->call([&]() -> Status {
        UBLKVOL_ASSIGN_OR_RETURN(const dbs::VolumeId id, source.store->find_volume(source.volume));
        UBLKVOL_ASSIGN_OR_RETURN(const auto mapped, source.store->mapped_ranges(id));
        for (const auto& [o, l] : mapped) {
          if (o < end && o + l > offset) {
            ranges.emplace_back(o, l);
          }
        }
        return ok_status();
      });
      if (!found.ok()) {
        return all;
      }
    }
    std::sort(ranges.begin(), ranges.end());
    return ranges;
  };
}

const char* tls_mode(const ExportRecord& record) {
  if (!record.tls_psk.empty()) {
    return "psk";
  }
  return record.tls_cert.empty() ? "none" : "x509";
}

}  // namespace

Status start_export(Registry& r, VolumeEntry& v, const ExportRecord& record) {
  if (!v.frontend) {
    return Error(EIO, "volume " + named(v.name) + " is not open" +
                          (v.error.empty() ? std::string() : ": " + v.error));
  }
  if (v.nbd_export) {
    return Error(EEXIST,
                 "volume " + named(v.name) + " is already exported on " + v.nbd_export->address());
  }
  auto alloc = std::make_shared<ExportAllocation>();
  // A remote replica's mappings cannot be read here (and it may be the only
  // one in sync): then no sources, every range is data.
  const bool any_remote = std::any_of(v.slots.begin(), v.slots.end(), [](const ReplicaSlot& slot) {
    return slot.remote != nullptr;
  });
  for (const auto& slot : v.slots) {
    if (!any_remote && slot.store != nullptr && slot.replica && slot.store->online()) {
      alloc->sources.push_back({slot.store->thread.get(), slot.store->store.get(), v.name});
    }
  }
  nbd::ExportOptions o;
  o.name = v.name;
  o.listen = record.listen;
  o.max_connections = record.max_connections;
  o.queue_index = r.engine_queues;  // the engine's queue reserved for exports
  o.insecure_plain = record.insecure_plain;
  o.tls.psk_file = record.tls_psk;
  o.tls.cert_file = record.tls_cert;
  o.tls.key_file = record.tls_key;
  o.tls.ca_file = record.tls_ca;
  o.allocation = allocation_query(alloc);
  auto started = nbd::NbdExport::start(*v.frontend, o);
  if (!started.ok()) {
    const Error e = started.error().with_context("volume " + named(v.name));
    // Another listener holds the address: busy, not an internal error.
    return started.error().errno_value() == EADDRINUSE ? e.with_kind(ErrorKind::kBusy) : e;
  }
  for (auto& slot : v.slots) {
    if (slot.store != nullptr && slot.replica) {
      slot.export_allocation = alloc;
    }
  }
  v.nbd_export = std::move(*started);
  v.exported = record;
  if (wants_peer_control(record)) {
    // Without it the export still serves data; only the snapshots of a
    // remote replica on it fail (and say why).
    auto control =
        start_peer_control(v.name, record, v.nbd_export->address(), r.config.control_socket);
    if (control.ok()) {
      v.peer_control = std::move(*control);
      spdlog::info("volume '{}': peer control channel (snapshots) on {}", v.name,
                   v.peer_control->listener->address());
    } else {
      v.peer_control = std::make_unique<PeerControl>();
      v.peer_control->error = control.error().message();
      spdlog::warn("volume '{}': no peer control channel: {}", v.name, v.peer_control->error);
    }
  }
  spdlog::info("volume '{}' exported over NBD on {} (TLS: {}, at most {} connections)", v.name,
               v.nbd_export->address(), tls_mode(record), record.max_connections);
  return ok_status();
}

void stop_export(VolumeEntry& v) {
  if (!v.nbd_export) {
    return;
  }
  const std::string address = v.nbd_export->address();
  v.peer_control.reset();
  v.nbd_export.reset();  // joins the export's thread
  spdlog::info("volume '{}': NBD export on {} stopped", v.name, address);
}

void start_recorded_exports(Registry& r) {
  for (auto& v : r.volumes) {
    if (!v->exported || !v->frontend) {
      continue;
    }
    const Status started = start_export(r, *v, *v->exported);
    if (!started.ok()) {
      spdlog::error("volume '{}' stays unexported: {}", v->name, started.error().message());
    }
  }
}

Json exports_status_json(const Registry& r) {
  Json list = Json::array();
  for (const auto& v : r.volumes) {
    if (!v->exported) {
      continue;
    }
    const bool control = v->peer_control && v->peer_control->listener;
    list.push_back({{"volume", v->name},
                    {"listen", v->exported->listen},
                    {"address", v->nbd_export ? Json(v->nbd_export->address()) : Json(nullptr)},
                    {"control_address",
                     control ? Json(v->peer_control->listener->address()) : Json(nullptr)}});
  }
  return list;
}

Json export_json(const VolumeEntry& v) {
  if (!v.exported) {
    return nullptr;
  }
  const ExportRecord& rec = *v.exported;
  Json j = {{"listen", rec.listen},
            {"tls", tls_mode(rec)},
            {"insecure_plain", rec.insecure_plain},
            {"max_connections", rec.max_connections},
            {"running", v.nbd_export != nullptr},
            {"address", nullptr},
            {"connections", 0}};
  if (v.nbd_export) {
    const nbd::ExportStats s = v.nbd_export->stats();
    j["address"] = v.nbd_export->address();
    j["connections"] = s.connections;
    j["accepted"] = s.accepted;
    j["refused"] = s.refused;
    j["tls_failures"] = s.tls_failures;
    j["protocol_errors"] = s.protocol_errors;
    j["requests"] = s.requests;
  }
  j["control"] = peer_control_json(v.peer_control.get());
  return j;
}

}  // namespace ublkvol::daemon
