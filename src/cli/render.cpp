#include "render.h"

#include <algorithm>
#include <cstdio>

#include "size.h"
#include "table.h"

namespace ublkvol::cli {
namespace {

// Optional fields: "" / 0 / false when absent or null.
std::string str(const Json& object, const char* key) {
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) {
    return {};
  }
  if (it->is_string()) {
    return it->get<std::string>();
  }
  return it->dump();
}
uint64_t num(const Json& object, const char* key) {
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) {
    return 0;
  }
  return it->get<uint64_t>();
}
double real(const Json& object, const char* key, double missing = -1) {
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) {
    return missing;
  }
  return it->get<double>();
}
bool flag(const Json& object, const char* key) {
  auto it = object.find(key);
  return it != object.end() && it->is_boolean() && it->get<bool>();
}
const Json& array(const Json& object, const char* key) {
  static const Json kEmpty = Json::array();
  auto it = object.find(key);
  if (it == object.end() || !it->is_array()) {
    return kEmpty;
  }
  return *it;
}
std::string size_of(const Json& object, const char* key) {
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) {
    return {};
  }
  return format_size(it->get<uint64_t>());
}
std::string join(const Json& names, const char* separator = ", ") {
  std::string out;
  for (const auto& n : names) {
    if (!out.empty()) {
      out += separator;
    }
    out += n.is_string() ? n.get<std::string>() : str(n, "name");
  }
  return out;
}
void field(std::ostream& out, const char* key, const std::string& value) {
  std::string label = std::string(key) + ":";
  label.resize(std::max<size_t>(label.size() + 1, 14), ' ');
  out << label << (value.empty() ? "-" : value) << '\n';
}
size_t in_sync_count(const Json& volume) {
  size_t n = 0;
  for (const auto& r : array(volume, "replicas")) {
    n += str(r, "state") == "in_sync";
  }
  return n;
}
// Replicas the volume has: those the engine reports (not removed) plus those
// on stores that are not available (missing_stores): a missing replica
// counts, or "2/2 in sync" would hide it.
size_t replica_count(const Json& volume) {
  size_t n = array(volume, "missing_stores").size() + array(volume, "pending_remotes").size();
  for (const auto& r : array(volume, "replicas")) {
    n += str(r, "state") != "removed";
  }
  return n;
}
std::string rebuild_summary(const Json& volume) {
  auto it = volume.find("rebuild");
  if (it == volume.end() || !it->is_object() || !flag(*it, "active")) {
    return {};
  }
  return format_fixed(real(*it, "percent", 0), 1) + "%";
}

}  // namespace

std::string format_generation(const Json& value) {
  if (!value.is_number_unsigned() && !(value.is_number_integer() && value.get<int64_t>() >= 0)) {
    return value.is_null() ? std::string() : value.dump();
  }
  const auto generation = value.get<uint64_t>();
  if (generation == 0) {
    return "-";  // no generation (a failed replica)
  }
  char buffer[24];
  (void)std::snprintf(buffer, sizeof(buffer), "%016llx",
                      static_cast<unsigned long long>(generation));
  return buffer;
}

std::string volume_health(const Json& volume) {
  if (!flag(volume, "online")) {
    return "offline";
  }
  return in_sync_count(volume) < replica_count(volume) ? "degraded" : "online";
}

void render_store_list(std::ostream& out, const Json& result) {
  using A = Table::Align;
  Table table({{"NAME"},
               {"SIZE", A::kRight},
               {"USED", A::kRight},
               {"FREE", A::kRight},
               {"USE%", A::kRight},
               {"STATE"},
               {"REPLICAS", A::kRight},
               {"PATH"}});
  for (const auto& s : array(result, "stores")) {
    const uint64_t size = num(s, "size_bytes");
    const uint64_t used = num(s, "used_bytes");
    table.add_row(
        {str(s, "name"), size_of(s, "size_bytes"), size_of(s, "used_bytes"),
         size_of(s, "free_bytes"),
         size > 0
             ? format_fixed(100.0 * static_cast<double>(used) / static_cast<double>(size), 0) + "%"
             : "",
         str(s, "state"), std::to_string(array(s, "replicas").size()), str(s, "path")});
  }
  if (table.rows() == 0) {
    out << "no stores (add one: ublk-volume store add NAME PATH --format --size 10G)\n";
    return;
  }
  table.print(out);
}

void render_store(std::ostream& out, const Json& store) {
  field(out, "Store", str(store, "name"));
  field(out, "Path", str(store, "path"));
  field(out, "UUID", str(store, "uuid"));
  std::string state = str(store, "state");
  if (!str(store, "error").empty()) {
    state += " (" + str(store, "error") + ")";
  }
  field(out, "State", state);
  field(out, "Size", size_of(store, "size_bytes"));
  field(out, "Used", size_of(store, "used_bytes"));
  field(out, "Free", size_of(store, "free_bytes"));
  field(out, "Extent size", size_of(store, "extent_size"));
  const auto& orphans = array(store, "orphans");
  if (!orphans.empty()) {
    std::string list;
    for (const auto& o : orphans) {
      list += (list.empty() ? "" : ", ") + str(o, "volume") + " (" + size_of(o, "size_bytes") + ")";
    }
    field(out, "Orphans",
          list +
              ": no volume owns them (adopt: ublk-volume volume import NAME "
              "--store " +
              str(store, "name") + " ...; delete: ublk-volume store gc " + str(store, "name") +
              ")");
  }
  const auto& replicas = array(store, "replicas");
  if (replicas.empty()) {
    field(out, "Replicas", "none");
    return;
  }
  out << "Replicas:\n";
  Table table({{"VOLUME"}, {"REPLICA", Table::Align::kRight}});
  for (const auto& r : replicas) {
    table.add_row({str(r, "volume"), str(r, "replica")});
  }
  table.print(out, 2);
}

void render_store_check(std::ostream& out, const std::string& name, const Json& result) {
  const auto& problems = array(result, "problems");
  if (flag(result, "ok")) {
    out << "store '" << name << "': check passed, no problems found\n";
    return;
  }
  out << "store '" << name << "': check FAILED, " << problems.size() << " problem(s):\n";
  for (const auto& p : problems) {
    out << "  - " << (p.is_string() ? p.get<std::string>() : p.dump()) << '\n';
  }
}

void render_volume_list(std::ostream& out, const Json& result) {
  using A = Table::Align;
  Table table({{"NAME"},
               {"SIZE", A::kRight},
               {"STATE"},
               {"IN-SYNC", A::kRight},
               {"MIN", A::kRight},
               {"REBUILD", A::kRight},
               {"DEVICE"},
               {"SNAPSHOTS", A::kRight}});
  for (const auto& v : array(result, "volumes")) {
    std::string device;
    if (auto d = v.find("device"); d != v.end() && d->is_object()) {
      device = str(*d, "path");
    }
    table.add_row({str(v, "name"), size_of(v, "size_bytes"), volume_health(v),
                   std::to_string(in_sync_count(v)) + "/" + std::to_string(replica_count(v)),
                   str(v, "min_replicas"), rebuild_summary(v), device,
                   std::to_string(array(v, "snapshots").size())});
  }
  if (table.rows() == 0) {
    out << "no volumes (create one: ublk-volume volume create NAME --size 10G --store S1 S2 S3)\n";
    return;
  }
  table.print(out);
}

void render_replica_list(std::ostream& out, const Json& replicas) {
  using A = Table::Align;
  Table table(
      {{"INDEX", A::kRight}, {"STORE"}, {"STATE"}, {"GENERATION", A::kRight}, {"LAST-ERROR"}});
  for (const auto& r : replicas) {
    // A remote replica (on an NBD export) shows its URI where a store name goes.
    const Json remote = r.value("remote", Json());
    table.add_row({str(r, "index"), remote.is_object() ? str(remote, "uri") : str(r, "store"),
                   str(r, "state"), format_generation(r.value("generation", Json())),
                   str(r, "last_error")});
  }
  table.print(out);
}

// volume show's "Remote replicas:" table: one row per replica on an NBD
// export (in the engine, then those not reached since start).
void render_remote_replicas(std::ostream& out, const Json& volume) {
  Json rows = Json::array();
  for (const auto& r : array(volume, "replicas")) {
    if (r.value("remote", Json()).is_object()) {
      Json row = r["remote"];
      row["index"] = r.value("index", Json());
      rows.push_back(row);
    }
  }
  for (const auto& p : array(volume, "pending_remotes")) {
    rows.push_back({{"index", "-"},
                    {"uri", p.value("uri", "")},
                    {"state", "connecting"},
                    {"last_error", p.value("error", "")}});
  }
  if (rows.empty()) {
    return;
  }
  out << "Remote replicas:\n";
  using A = Table::Align;
  Table table({{"INDEX", A::kRight},
               {"URI"},
               {"STATE"},
               {"CONN", A::kRight},
               {"P50", A::kRight},
               {"P99", A::kRight},
               {"RECONNECTS", A::kRight},
               {"LAST-ERROR"}});
  for (const auto& r : rows) {
    const auto us = [&](const char* key) {
      return r.contains(key) ? str(r, key) + "us" : std::string("-");
    };
    table.add_row(
        {str(r, "index"), str(r, "uri"), str(r, "state"),
         r.contains("connections") ? str(r, "live_connections") + "/" + str(r, "connections")
                                   : std::string("-"),
         us("latency_p50_us"), us("latency_p99_us"),
         r.contains("reconnects") ? str(r, "reconnects") : std::string("-"), str(r, "last_error")});
  }
  table.print(out);
}

// The "Verify" line(s) of volume show: a run in progress, the last result.
void render_verify(std::ostream& out, const Json& verify) {
  if (flag(verify, "active")) {
    field(out, "Verify",
          std::string(flag(verify, "repair") ? "repairing " : "running ") +
              format_fixed(real(verify, "percent", 0), 1) + "% (" + size_of(verify, "done_bytes") +
              " of " + size_of(verify, "total_bytes") + ", " +
              format_rate(real(verify, "bytes_per_second", 0)) + ", " +
              size_of(verify, "mismatched_bytes") + " differing so far)");
  }
  const Json last = verify.value("last", Json());
  if (!last.is_object()) {
    if (!flag(verify, "active")) {
      field(out, "Last verify", "never");
    }
    return;
  }
  std::string text = str(last, "time") + ": " + size_of(last, "bytes") + " compared, " +
                     size_of(last, "mismatched_bytes") + " differing";
  if (flag(last, "repair")) {
    text += ", " + size_of(last, "repaired_bytes") + " repaired, " +
            size_of(last, "unrepaired_bytes") + " not repaired";
  }
  if (!str(last, "error").empty()) {
    text += " (" + str(last, "error") + ")";
  }
  field(out, "Last verify", text);
  for (const auto& m : array(last, "mismatches")) {
    out << "  mismatch at byte " << str(m, "offset") << ", " << str(m, "length") << " bytes\n";
  }
}

void render_volume(std::ostream& out, const Json& volume) {
  field(out, "Volume", str(volume, "name"));
  field(out, "Size", size_of(volume, "size_bytes"));
  const auto& missing = array(volume, "missing_stores");
  field(out, "State",
        volume_health(volume) + " (" + std::to_string(in_sync_count(volume)) + "/" +
            std::to_string(replica_count(volume)) + " replicas in sync, min " +
            str(volume, "min_replicas") + ")");
  if (!str(volume, "error").empty()) {
    field(out, "Error", str(volume, "error"));
  }
  if (!missing.empty()) {
    field(out, "Missing",
          "replica(s) on unavailable store(s) " + join(missing) + " (see ublk-volume store show)");
  }
  field(out, "Generation", format_generation(volume.value("generation", Json())));
  if (auto d = volume.find("device"); d != volume.end() && d->is_object()) {
    field(out, "Device",
          str(*d, "path") + " (dev_id " + str(*d, "dev_id") + ", " + str(*d, "queues") +
              " queue(s) x depth " + str(*d, "queue_depth") + ")");
  } else {
    field(out, "Device", "not exposed");
  }
  if (auto e = volume.find("export"); e != volume.end() && e->is_object()) {
    field(out, "Export",
          flag(*e, "running")
              ? "nbd on " + str(*e, "address") + " (TLS " + str(*e, "tls") + ", " +
                    str(*e, "connections") + " of " + str(*e, "max_connections") + " connections)"
              : "nbd on " + str(*e, "listen") + " - not running (see the daemon's log)");
    // The export's peer control channel (remote replicas' snapshots; docs/nbd.md).
    if (auto c = e->find("control"); c != e->end() && c->is_object()) {
      field(out, "Peer control",
            (*c)["address"].is_string() ? "snapshots on " + str(*c, "address")
                                        : "not running: " + str(*c, "error"));
    }
  }
  const auto& snapshots = array(volume, "snapshots");
  field(out, "Snapshots", snapshots.empty() ? "none" : join(snapshots));
  if (auto rb = volume.find("rebuild"); rb != volume.end() && rb->is_object()) {
    if (flag(*rb, "active")) {
      field(out, "Rebuild",
            format_fixed(real(*rb, "percent", 0), 1) + "% (" + size_of(*rb, "done_bytes") + " of " +
                size_of(*rb, "total_bytes") + ", " + format_rate(real(*rb, "bytes_per_second", 0)) +
                ", ETA " + format_duration(real(*rb, "eta_seconds")) + ")");
    } else if (!str(*rb, "last_error").empty()) {
      field(out, "Rebuild", "stopped: " + str(*rb, "last_error"));
    } else {
      field(out, "Rebuild", "idle");
    }
  }
  if (auto vf = volume.find("verify"); vf != volume.end() && vf->is_object()) {
    render_verify(out, *vf);
  }
  out << "Replicas:\n";
  Json replicas = array(volume, "replicas");
  for (const auto& store : missing) {
    replicas.push_back({{"index", "-"},
                        {"store", store},
                        {"state", "missing"},
                        {"generation", nullptr},
                        {"last_error", "store unavailable"}});
  }
  for (const auto& p : array(volume, "pending_remotes")) {
    replicas.push_back({{"index", "-"},
                        {"store", p.value("uri", "")},
                        {"state", "connecting"},
                        {"generation", nullptr},
                        {"last_error", p.value("error", "")}});
  }
  render_replica_list(out, replicas);
  render_remote_replicas(out, volume);
  const auto& events = array(volume, "events");
  if (!events.empty()) {
    out << "Events:\n";
    for (const auto& e : events) {
      out << "  " << str(e, "time");
      // replica -1 is the volume itself.
      const Json replica = e.value("replica", Json());
      if (replica.is_number_unsigned() ||
          (replica.is_number_integer() && replica.get<int64_t>() >= 0)) {
        out << "  replica " << replica.dump();
      } else {
        out << "  volume";
      }
      out << "  " << str(e, "message") << '\n';
    }
  }
}

void render_snapshot_list(std::ostream& out, const Json& result) {
  const auto& snapshots = array(result, "snapshots");
  if (snapshots.empty()) {
    out << "no snapshots\n";
    return;
  }
  Table table({{"NAME"}});
  for (const auto& s : snapshots) {
    table.add_row({s.is_string() ? s.get<std::string>() : str(s, "name")});
  }
  table.print(out);
}

namespace {

// One line per reactor: its CPU, its load over the daemon's last sampling
// interval (a second), the stores it serves and the ublk queues it runs.
void render_reactors(std::ostream& out, const Json& reactors) {
  if (reactors.empty()) {
    field(out, "Reactors", "none (config \"reactors\": null: a thread per store and per queue)");
    return;
  }
  field(out, "Reactors",
        std::to_string(reactors.size()) + " (busy and messages to other threads: last second)");
  for (const auto& r : reactors) {
    const std::string cpu = str(r, "cpu");
    char load[96];
    (void)std::snprintf(load, sizeof(load), "busy %5.1f%%  %9.0f msg/s",
                        std::max(0.0, real(r, "busy_percent", 0)),
                        std::max(0.0, real(r, "messages_per_second", 0)));
    const std::string stores = join(array(r, "stores"));
    const std::string queues = join(array(r, "queues"));
    out << "  " << str(r, "name") << "  CPU " << (cpu.empty() ? "-" : cpu) << "  " << load
        << "  stores: " << (stores.empty() ? "-" : stores)
        << "  queues: " << (queues.empty() ? "-" : queues) << '\n';
  }
}

}  // namespace

void render_status(std::ostream& out, const Json& status) {
  field(out, "Daemon",
        "ublk-volumed " + str(status, "version") + " (pid " + str(status, "pid") + ", up " +
            format_duration(real(status, "uptime_seconds")) + ")");
  field(out, "State dir", str(status, "state_dir"));
  if (auto u = status.find("ublk"); u != status.end() && u->is_object()) {
    field(out, "ublk",
          flag(*u, "available") ? "available" : "NOT available: " + str(*u, "message"));
  }
  if (auto k = status.find("kernel"); k != status.end() && k->is_object()) {
    const std::string features = str(*k, "ublk_features");
    field(out, "Kernel",
          str(*k, "release") + (features.empty() ? ", ublk features unknown (ublk_drv not loaded)"
                                                 : ", ublk features " + features +
                                                       "; enabled: " + str(*k, "features_enabled") +
                                                       "; turned off: " + str(*k, "features_off")));
    if (const std::string w = str(*k, "warning"); !w.empty()) {
      out << "WARNING: " << w << "\n";
    }
  }
  field(out, "Stores", str(status, "stores"));
  const bool exports = status.contains("exported") && str(status, "exported") != "0";
  field(out, "Volumes",
        str(status, "volumes") + " (" + str(status, "exposed") + " exposed" +
            (exports ? ", " + str(status, "exported") + " exported over NBD" : "") + ")");
  if (status.contains("reactors")) {
    render_reactors(out, array(status, "reactors"));
  }
  const auto& orphans = array(status, "orphans");
  if (!orphans.empty()) {
    std::string list;
    for (const auto& o : orphans) {
      list += (list.empty() ? "" : ", ") + str(o, "store") + "/" + str(o, "volume");
    }
    out << "WARNING: " << orphans.size()
        << " orphan volume(s) no volume owns, left by an interrupted operation: " << list
        << "\n  adopt: ublk-volume volume import NAME --store S...; delete: ublk-volume store gc "
           "STORE\n";
  }
  if (num(status, "pending_intents") > 0) {
    out << "WARNING: " << num(status, "pending_intents")
        << " interrupted operation(s) still recorded in intents.json (the state could not be "
           "saved); the next start finishes or undoes them\n";
  }
}

void render_store_gc(std::ostream& out, const std::string& name, const Json& result) {
  const auto& orphans = array(result, "orphans");
  if (orphans.empty()) {
    out << "store '" << name << "': no orphan volumes\n";
    return;
  }
  out << "store '" << name << "': " << (flag(result, "removed") ? "deleted" : "would delete") << " "
      << orphans.size() << " orphan volume(s):\n";
  for (const auto& o : orphans) {
    out << "  " << str(o, "volume") << " (" << size_of(o, "size_bytes") << ")\n";
  }
}

}  // namespace ublkvol::cli
