#include "ublkvol/daemon/service.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <exception>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <spdlog/spdlog.h>
#include <string_view>
#include <thread>
#include <utility>

#include "ublkvol/common/unique_fd.h"
#include "ublkvol/common/version.h"
#include "ublkvol/dbs/device_users.h"
#include "ublkvol/dbs/file_device.h"
#include "ublkvol/dbs/store.h"
#include "ublkvol/engine/dbs_replica_store.h"
#include "ublkvol/engine/replicated_volume.h"
#include "ublkvol/engine/store_thread.h"
#include "ublkvol/ublk/control.h"
#include "ublkvol/ublk/device.h"
#include "ublkvol/ublk/features.h"

#include "frontend_volume.h"
#include "intent_log.h"
#include "recovery.h"
#include "scrub.h"
#include "store_identity.h"
#include "store_paths.h"

namespace ublkvol::daemon {
namespace {

using engine::ReplicaState;
constexpr const char* kMetaSuffix = ".engine-meta";

Error invalid(std::string message) { return Error(EINVAL, std::move(message)); }

std::string named(const std::string& name) { return "'" + name + "'"; }

std::string list_names(const std::vector<std::string>& names) {
  std::string list;
  for (const auto& n : names) {
    list += (list.empty() ? "" : ", ") + named(n);
  }
  return list;
}

uint64_t monotonic_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000ULL + static_cast<uint64_t>(ts.tv_nsec);
}

std::string rfc3339(std::chrono::system_clock::time_point when) {
  const std::time_t t = std::chrono::system_clock::to_time_t(when);
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  char text[32];
  // 21 bytes for any year up to 9999: the count returned cannot be 0.
  (void)std::strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return text;
}

// The protocol spells states with underscores (docs/control-protocol.md); only
// "in-sync" differs from the engine's own names.
const char* state_name(ReplicaState state) {
  return state == ReplicaState::kInSync ? "in_sync" : engine::to_string(state);
}

// The block device is in use if an exclusive open fails with EBUSY (mounted,
// or opened O_EXCL by someone, e.g. mkfs or a filesystem).
Result<bool> block_device_in_use(const std::string& block_path) {
  const int fd = ::open(block_path.c_str(), O_RDONLY | O_EXCL | O_CLOEXEC | O_NONBLOCK);
  if (fd >= 0) {
    ::close(fd);
    return false;
  }
  if (errno == EBUSY) {
    return true;
  }
  if (errno == ENOENT || errno == ENXIO || errno == ENODEV) {
    return false;  // already gone
  }
  return errno_error("cannot check whether " + block_path + " is in use");
}

// Runs `fn` on the store's thread and returns its value.
template <typename T>
Result<T> on_thread(engine::StoreThread& thread, const std::function<Result<T>()>& fn) {
  std::optional<Result<T>> result;
  Status called = thread.call([&]() -> Status {
    result.emplace(fn());
    return ok_status();
  });
  if (!called.ok()) {
    return called.error();
  }
  return std::move(*result);
}

}  // namespace

// ---------------------------------------------------------------------------

struct StoreEntry {
  std::string name;
  std::string path;
  std::string uuid;
  std::unique_ptr<dbs::FileDevice> device;
  std::unique_ptr<dbs::Store> store;
  std::unique_ptr<engine::StoreThread> thread;
  // The store's file, held open to tell it apart from other paths to it and
  // to notice its deletion or replacement (store_identity.h).
  StoreWatch watch;
  // Why the store is not usable ("" = online).
  std::string error;
  // What happened to the store while open: (RFC 3339 time, message).
  std::vector<std::pair<std::string, std::string>> events;

  // The file the store is on: the watched one, else what its path names now.
  [[nodiscard]] std::optional<FileIdentity> identity() const {
    if (watch.valid()) {
      return watch.identity();
    }
    auto id = identity_of_path(path);
    return id.ok() ? std::optional<FileIdentity>(*id) : std::nullopt;
  }

  [[nodiscard]] bool online() const { return store && thread && error.empty(); }

  // Runs `fn(store)` on the store thread.
  // NOLINTNEXTLINE(readability-make-member-function-const): hands the store it owns to fn
  Status run(const std::function<Status(dbs::Store&)>& fn) {
    if (!online()) {
      return Error(EIO, "store " + named(name) + " is failed: " + error);
    }
    return thread->call([&]() { return fn(*store); });
  }

  void close() {
    if (thread) {
      if (store && error.empty()) {
        Status committed = thread->call([&]() { return store->commit(); });
        if (!committed.ok()) {
          spdlog::error("store '{}': final commit failed: {}", name, committed.error().message());
        }
      }
      thread->stop();
      thread.reset();
    }
    store.reset();
    device.reset();
  }
};

struct ReplicaSlot {
  StoreEntry* store = nullptr;  // nullptr: no replica at this engine index
  std::unique_ptr<engine::DbsReplicaStore> replica;
};

struct VolumeEntry {
  std::string name;
  uint64_t size_bytes = 0;
  unsigned min_replicas = 1;
  // By engine replica index.
  std::array<ReplicaSlot, engine::kMaxReplicas> slots;
  // Replicas on stores that were not online at start: kept in the state file
  // so that nothing is forgotten, reported by volume.show.
  std::vector<std::string> missing_stores;
  std::unique_ptr<engine::ReplicatedVolume> engine;
  std::unique_ptr<FrontendVolume> frontend;
  std::unique_ptr<ublk::UblkDevice> device;
  // Persisted intent: exposed as this device (also while the device is not
  // there because ublk is unavailable).
  std::optional<ExposeRecord> exposed;
  std::string error;  // the volume could not be opened
};

struct Service::Impl {
  DaemonConfig config;
  std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
  std::vector<std::unique_ptr<StoreEntry>> stores;
  std::vector<std::unique_ptr<VolumeEntry>> volumes;
  SaveHook save_hook;
  // Multi-step operations record their intent here first (intent_log.h).
  IntentLog intents;
  CrashPoints crash;
  bool shut_down = false;
  unsigned engine_queues = 1;

  // ---- lookup -------------------------------------------------------------
  StoreEntry* find_store(const std::string& name) {
    for (auto& s : stores) {
      if (s->name == name) {
        return s.get();
      }
    }
    return nullptr;
  }
  VolumeEntry* find_volume(const std::string& name) {
    for (auto& v : volumes) {
      if (v->name == name) {
        return v.get();
      }
    }
    return nullptr;
  }
  Result<StoreEntry*> store_named(const std::string& name) {
    StoreEntry* s = find_store(name);
    if (s == nullptr) {
      return Error(ENOENT, "store " + named(name) + " does not exist");
    }
    return s;
  }
  Result<VolumeEntry*> volume_named(const std::string& name) {
    VolumeEntry* v = find_volume(name);
    if (v == nullptr) {
      return Error(ENOENT, "volume " + named(name) + " does not exist");
    }
    return v;
  }
  Result<VolumeEntry*> open_volume_named(const std::string& name) {
    auto v = volume_named(name);
    if (!v.ok()) {
      return v;
    }
    if (!(*v)->engine) {
      return Error(EIO, "volume " + named(name) + " is not open: " + (*v)->error);
    }
    return v;
  }

  // ---- state --------------------------------------------------------------
  DaemonState snapshot_state() const {
    DaemonState state;
    for (const auto& s : stores) {
      state.stores.push_back({s->name, s->path, s->uuid});
    }
    for (const auto& v : volumes) {
      VolumeRecord record;
      record.name = v->name;
      record.size_bytes = v->size_bytes;
      record.min_replicas = v->min_replicas;
      for (const auto& slot : v->slots) {
        if (slot.store != nullptr) {
          record.stores.push_back(slot.store->name);
        }
      }
      for (const auto& missing : v->missing_stores) {
        record.stores.push_back(missing);
      }
      record.exposed = v->exposed;
      state.volumes.push_back(std::move(record));
    }
    return state;
  }

  // save(); if it fails, start-up recovery decides the operation (the
  // intent stays).
  Status saved_or_kept(IntentGuard& guard) const {
    Status saved = save();
    if (!saved.ok()) {
      guard.keep();
    }
    return saved;
  }

  Status save() const {
    Status saved = save_state(config.state_dir, snapshot_state(), save_hook);
    if (!saved.ok()) {
      spdlog::error("saving the state failed: {}", saved.error().message());
      return Error(EIO, "the change was made but the state file could not be saved: " +
                            saved.error().message());
    }
    return ok_status();
  }

  // Records the intent of a multi-step operation before its first step.
  Result<uint64_t> begin(IntentOp op, const std::string& volume, std::vector<std::string> on,
                         const std::string& snapshot = "", const std::string& origin = "") {
    Intent intent;
    intent.op = op;
    intent.volume = volume;
    intent.stores = std::move(on);
    intent.snapshot = snapshot;
    intent.origin = origin;
    auto id = intents.record(std::move(intent));
    if (!id.ok()) {
      return Error(EIO, id.error().message());
    }
    crash.step(to_string(op));
    return id;
  }

  // ---- ublk ---------------------------------------------------------------
  // OK if ublk devices can be created; else an ENODEV error with the
  // frontend's message (module not loaded, features missing).
  Status probe_ublk() const {
    auto control = ublk::ControlDevice::open();
    if (!control.ok()) {
      return Error(ENODEV, control.error().message());
    }
    auto features = control->get_features();
    if (!features.ok()) {
      return Error(ENODEV, features.error().message());
    }
    Status needed = ublk::require_features(*features, ublk::kRequiredFeatures, "ublk-volumed");
    if (needed.ok() && config.recoverable_devices) {
      needed = ublk::require_features(*features, ublk::kRecoveryFeatures,
                                      "transparent daemon restart (recoverable_devices)");
    }
    if (!needed.ok()) {
      return Error(ENODEV, needed.error().message());
    }
    return ok_status();
  }

  // ---- stores -------------------------------------------------------------
  // Opens the device and the store on this thread, checks it, then hands it
  // to a new store thread.
  // `opened`: the device if the caller has it open already (store.add just
  // formatted it). Block devices are opened O_EXCL, and the kernel drops that
  // claim only when the io_uring that registered the fd is torn down -
  // asynchronously - so a close and re-open right after can fail with EBUSY.
  dbs::FileDeviceOptions device_options() const {
    dbs::FileDeviceOptions options;
    options.queue_depth = 256;
    options.submit_batch = config.store_submit_batch;
    return options;
  }

  dbs::OpenOptions store_open_options() const {
    dbs::OpenOptions options;
    options.mapping_data_order = config.store_data_order == "fua"
                                     ? dbs::OpenOptions::MappingDataOrder::kFuaData
                                     : dbs::OpenOptions::MappingDataOrder::kFlushBeforeRecord;
    return options;
  }

  // The store (other than `self`) that `entry` is the same file or the same
  // DBS store (superblock uuid) as, with the reason; "" if none.
  std::string same_store(const std::optional<FileIdentity>& identity, const std::string& uuid,
                         const StoreEntry* self) const {
    for (const auto& s : stores) {
      if (s.get() == self) {
        continue;
      }
      if (identity && s->identity() == identity) {
        return "is the same file as store " + named(s->name) + " (" + s->path + ")";
      }
      if (!uuid.empty() && s->uuid == uuid) {
        return "holds DBS store uuid " + uuid + ", the same as store " + named(s->name) + " (" +
               s->path + "): a copy of that store's image";
      }
    }
    return "";
  }

  Status open_store(StoreEntry& entry, std::unique_ptr<dbs::FileDevice> opened = nullptr) const {
    // The watch fd is opened before the device and compared after, so both
    // name one file even if the path is swapped meanwhile.
    auto watch = StoreWatch::open(entry.path);
    if (!watch.ok()) {
      return watch.error().with_context("store " + named(entry.name));
    }
    Result<std::unique_ptr<dbs::FileDevice>> device =
        opened ? Result<std::unique_ptr<dbs::FileDevice>>(std::move(opened))
               : dbs::FileDevice::open(entry.path, device_options());
    if (!device.ok()) {
      return device.error().with_context("store " + named(entry.name));
    }
    if (std::string moved = watch->check(entry.path); !moved.empty()) {
      return Error(EBUSY, "store " + named(entry.name) + ": " + moved);
    }
    auto store = dbs::Store::open(**device, store_open_options());
    if (!store.ok()) {
      return store.error().with_context("store " + named(entry.name) + " (" + entry.path +
                                        ") is not a usable DBS store");
    }
    auto uuid = read_store_uuid(**device);
    if (!uuid.ok()) {
      return uuid.error().with_context("store " + named(entry.name));
    }
    if (!entry.uuid.empty() && entry.uuid != *uuid) {
      // State files before store identity kept a random id here.
      spdlog::warn("store '{}': state.json recorded uuid {}, its superblock says {}; using {}",
                   entry.name, entry.uuid, *uuid, *uuid);
    }
    entry.uuid = *uuid;
    if (std::string same = same_store(watch->identity(), entry.uuid, &entry); !same.empty()) {
      return Error(EEXIST, "store " + named(entry.name) + " (" + entry.path + ") " + same);
    }
    const std::vector<std::string> problems = (*store)->check();
    if (!problems.empty()) {
      std::string text = problems.front();
      if (problems.size() > 1) {
        text += " (and " + std::to_string(problems.size() - 1) + " more problems)";
      }
      return Error(EUCLEAN, "store " + named(entry.name) + " (" + entry.path +
                                ") failed its check: " + text);
    }
    engine::StoreThreadOptions thread_options;
    thread_options.name = "store-" + entry.name.substr(0, 8);
    auto thread = engine::StoreThread::start(thread_options);
    if (!thread.ok()) {
      return thread.error();
    }
    entry.watch = std::move(*watch);
    entry.device = std::move(*device);
    entry.store = std::move(*store);
    entry.thread = std::move(*thread);
    entry.error.clear();
    return ok_status();
  }

  Json store_json(StoreEntry& s) {
    Json out = {{"name", s.name},   {"path", s.path},    {"uuid", s.uuid},
                {"size_bytes", 0},  {"extent_size", 0},  {"used_bytes", 0},
                {"free_bytes", 0},  {"state", "online"}, {"error", nullptr},
                {"read_errors", 0}, {"write_errors", 0}, {"replicas", Json::array()}};
    // Counters are read while the store object exists, also after the
    // daemon marked it failed: the errors that failed it are the point.
    if (s.store && s.thread) {
      dbs::StoreStats stats;
      Status got = s.thread->call([&] {
        stats = s.store->stats();
        return s.store->health();
      });
      out["size_bytes"] = s.device->size_bytes();
      out["extent_size"] = stats.extent_bytes;
      out["used_bytes"] = (stats.total_extents - stats.free_extents) * stats.extent_bytes;
      out["free_bytes"] = stats.free_extents * stats.extent_bytes;
      // Data-path device errors since the store was opened (the store stays
      // usable; the engine fails the replicas that saw them).
      out["read_errors"] = stats.read_errors;
      out["write_errors"] = stats.write_errors;
      if (!s.error.empty()) {
        out["state"] = "failed";
        out["error"] = s.error;
      } else if (!got.ok()) {
        out["state"] = "failed";
        out["error"] = got.error().message();
      }
    } else {
      out["state"] = "failed";
      out["error"] = s.error;
    }
    out["events"] = Json::array();
    for (const auto& [when, message] : s.events) {
      out["events"].push_back({{"time", when}, {"message", message}});
    }
    out["orphans"] = Json::array();
    for (const Orphan& o : orphans_on(s)) {
      out["orphans"].push_back(orphan_json(s.name, o));
    }
    for (const auto& v : volumes) {
      for (size_t i = 0; i < v->slots.size(); ++i) {
        if (v->slots[i].store == &s) {
          out["replicas"].push_back({{"volume", v->name}, {"replica", i}});
        }
      }
      for (const auto& missing : v->missing_stores) {
        if (missing == s.name) {
          out["replicas"].push_back({{"volume", v->name}, {"replica", nullptr}});
        }
      }
    }
    return out;
  }

  // --format erases the target: refused if it is in use (a block device
  // someone holds exclusively: mounted, another store, mkfs), and - unless
  // forced - if it holds a DBS store or a filesystem signature.
  static Status check_format_target(const std::string& path, bool force) {
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0 && S_ISBLK(st.st_mode)) {
      auto in_use = block_device_in_use(path);
      if (!in_use.ok()) {
        return in_use.error();
      }
      if (*in_use) {
        const std::string holder = dbs::describe_device_users(path);
        return Error(EBUSY, path + " is in use" + (holder.empty() ? "" : ": " + holder) +
                                "; refusing to format it");
      }
    }
    const UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
    if (!fd) {
      return errno_error("cannot open " + path);
    }
    const std::string contents = describe_contents(fd.get());
    if (!contents.empty() && !force) {
      return Error(EEXIST, path + " holds " + contents +
                               "; formatting would erase it (to open an existing store add it "
                               "without format; to erase it give force=true, CLI --force)");
    }
    if (!contents.empty()) {
      spdlog::warn("formatting {} over {} (forced)", path, contents);
    }
    return ok_status();
  }

  Result<Json> store_add(Params& p) {
    auto name = p.name("name");
    auto path = p.string("path");
    auto format = p.optional_bool("format");
    auto size = p.optional_size("size");
    auto extent = p.optional_size("extent_size");
    auto force = p.optional_bool("force");
    for (const Status& s : {name.ok() ? ok_status() : Status(name.error()),
                            force.ok() ? ok_status() : Status(force.error()),
                            path.ok() ? ok_status() : Status(path.error()),
                            format.ok() ? ok_status() : Status(format.error()),
                            size.ok() ? ok_status() : Status(size.error()),
                            extent.ok() ? ok_status() : Status(extent.error())}) {
      UBLKVOL_TRY(s);
    }
    UBLKVOL_TRY(p.finish());
    const bool do_format = format->value_or(false);
    if (size->has_value() && !do_format) {
      return invalid("field 'size' is only allowed with format=true (it creates the file)");
    }
    if (extent->has_value() && !do_format) {
      return invalid("field 'extent_size' is only allowed with format=true");
    }
    if (force->has_value() && !do_format) {
      return invalid("field 'force' is only allowed with format=true");
    }
    uint32_t extent_blocks = 256;
    if (extent->has_value()) {
      const uint64_t blocks = **extent / 4096;
      if (blocks < 8 || blocks > 256 || (blocks & (blocks - 1)) != 0) {
        return invalid("field 'extent_size' must be a power of two between 32768 and 1048576");
      }
      extent_blocks = static_cast<uint32_t>(blocks);
    }
    if (find_store(*name) != nullptr) {
      return Error(EEXIST, "store " + named(*name) + " already exists");
    }
    if (do_format && size->has_value()) {
      UBLKVOL_TRY(validate_new_store_size(**size));
    }
    // Only paths this client may name (store_paths.h); `open_path` is what
    // to open from here on.
    auto admitted =
        admit_store_path(p.peer(), *path, config.store_dirs, do_format && size->has_value());
    if (!admitted.ok()) {
      return admitted.error();
    }
    CreatedFileGuard remove_on_failure(*admitted);
    const std::string& open_path = admitted->open_path;
    // By the file it names, not the path string (aliases, links).
    auto identity = identity_of_path(open_path);
    if (identity.ok()) {
      if (std::string same = same_store(*identity, "", nullptr); !same.empty()) {
        return Error(EEXIST,
                     *path + " " + same + (do_format ? "; refusing to format a live store" : ""));
      }
    }
    auto entry = std::make_unique<StoreEntry>();
    entry->name = *name;
    entry->path = open_path;  // the record path once opened
    std::unique_ptr<dbs::FileDevice> formatted_device;
    if (do_format && identity.ok()) {
      UBLKVOL_TRY(check_format_target(open_path, force->value_or(false)));
    }
    if (do_format) {
      struct stat st {};
      const bool exists = !admitted->missing && ::stat(open_path.c_str(), &st) == 0;
      if (!exists && !size->has_value()) {
        return Error(ENOENT, *path + " does not exist (give 'size' to create a file)");
      }
      if (exists && !S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
        return invalid(*path + " is neither a regular file nor a block device");
      }
      if (exists && S_ISBLK(st.st_mode) && size->has_value()) {
        return invalid("field 'size' cannot be used with a block device (" + *path + ")");
      }
      if (exists && size->has_value() && static_cast<uint64_t>(st.st_size) != **size) {
        // 'size' creates a file; it never extends or shrinks an existing one.
        return invalid(*path + " already exists with " + std::to_string(st.st_size) +
                       " bytes; 'size' (" + std::to_string(**size) +
                       ") is only for creating a new file (omit it to format the file at its "
                       "size)");
      }
      dbs::FileDeviceOptions options = device_options();
      options.create_size = size->value_or(0);
      auto device = dbs::FileDevice::open(open_path, options);
      if (!device.ok()) {
        return device.error().with_context("store " + named(*name));
      }
      dbs::FormatOptions format_options;
      format_options.extent_blocks = extent_blocks;
      Status formatted = dbs::Store::format(**device, format_options);
      if (!formatted.ok()) {
        return formatted.error().with_context("formatting store " + named(*name) + " on " + *path);
      }
      formatted_device = std::move(*device);
    }
    Status opened = open_store(*entry, std::move(formatted_device));
    if (!opened.ok()) {
      // A device that is not a store is a bad argument, not an I/O failure.
      const int err = opened.error().errno_value();
      const bool keep =
          err == EIO || err == ENOENT || err == EACCES || err == EEXIST || err == EBUSY;
      return Error(keep ? err : EINVAL, opened.error().message());
    }
    entry->path = admitted->record_path;
    remove_on_failure.keep();
    spdlog::info("store '{}' added: {}{}", entry->name, entry->path,
                 do_format ? " (formatted)" : "");
    StoreEntry& added = *entry;
    stores.push_back(std::move(entry));
    UBLKVOL_TRY(save());
    return store_json(added);
  }

  // ---- orphans (recovery.h) ------------------------------------------------
  // The volumes state.json has a replica of on `s`.
  std::set<std::string> replicas_on(const StoreEntry& s) const {
    std::set<std::string> known;
    for (const auto& v : volumes) {
      bool uses = std::find(v->missing_stores.begin(), v->missing_stores.end(), s.name) !=
                  v->missing_stores.end();
      for (const auto& slot : v->slots) {
        uses = uses || slot.store == &s;
      }
      if (uses) {
        known.insert(v->name);
      }
    }
    return known;
  }

  std::vector<Orphan> orphans_on(StoreEntry& s) const {
    std::vector<Orphan> found;
    if (s.online()) {
      const std::set<std::string> known = replicas_on(s);
      (void)s.run([&](dbs::Store& store) {
        found = find_orphans(store, known);
        return ok_status();
      });
    }
    return found;
  }

  std::vector<std::pair<std::string, Orphan>> orphans() const {
    std::vector<std::pair<std::string, Orphan>> all;
    for (auto& s : stores) {
      for (auto& o : orphans_on(*s)) {
        all.emplace_back(s->name, std::move(o));
      }
    }
    return all;
  }

  static Json orphan_json(const std::string& store, const Orphan& o) {
    return {{"store", store},
            {"volume", o.volume},
            {"size_bytes", o.size_bytes},
            {"complete", o.complete}};
  }

  // store.gc: deletes the orphans on a store (dry_run: lists them).
  Result<Json> store_gc(Params& p) {
    auto name = p.name("name");
    auto dry_run = p.optional_bool("dry_run");
    UBLKVOL_TRY(p.finish());
    if (!name.ok()) {
      return name.error();
    }
    if (!dry_run.ok()) {
      return dry_run.error();
    }
    auto s = store_named(*name);
    if (!s.ok()) {
      return s.error();
    }
    if (!(*s)->online()) {
      return Error(EIO, "store " + named(*name) + " is failed: " + (*s)->error);
    }
    Json list = Json::array();
    for (const Orphan& o : orphans_on(**s)) {
      if (!dry_run->value_or(false)) {
        UBLKVOL_TRY(delete_replica_data(**s, o.volume));
        spdlog::info("store '{}': orphan volume '{}' deleted (store gc)", *name, o.volume);
      }
      list.push_back(orphan_json(*name, o));
    }
    return Json{{"orphans", list}, {"removed", !dry_run->value_or(false)}};
  }

  // volume.import: adopts orphan replicas (one per store, all of one name)
  // as a volume; the engine opens them as it opens any volume (newest
  // generation wins, stale replicas rebuild).
  Result<Json> volume_import(Params& p) {
    auto name = p.name("name");
    auto store_names = p.name_list("stores", 1, engine::kMaxReplicas);
    auto min = p.optional_uint("min_replicas");
    UBLKVOL_TRY(p.finish());
    if (!name.ok()) {
      return name.error();
    }
    if (!store_names.ok()) {
      return store_names.error();
    }
    if (!min.ok()) {
      return min.error();
    }
    UBLKVOL_TRY(check_new_volume_name(*name));
    const auto count = static_cast<unsigned>(store_names->size());
    const unsigned min_replicas =
        min->has_value() ? static_cast<unsigned>(**min) : std::min(config.min_replicas, count);
    if (min_replicas < 1 || min_replicas > count) {
      return invalid("field 'min_replicas' " + std::to_string(min_replicas) +
                     " must be between 1 and the replica count " + std::to_string(count));
    }
    std::vector<StoreEntry*> chosen;
    uint64_t size = 0;
    for (const auto& store_name : *store_names) {
      auto s = store_named(store_name);
      if (!s.ok()) {
        return s.error();
      }
      if (!(*s)->online()) {
        return invalid("store " + named(store_name) + " is failed: " + (*s)->error);
      }
      const auto found = orphans_on(**s);
      auto it = std::find_if(found.begin(), found.end(),
                             [&](const Orphan& o) { return o.volume == *name; });
      if (it == found.end() || !it->complete) {
        return Error(ENOENT,
                     "store " + named(store_name) + " holds no " +
                         (it == found.end() ? "orphan" : "complete orphan") + " replica " +
                         named(*name) +
                         (it == found.end() ? "" : " (its meta or data volume is missing)"));
      }
      size = std::max(size, it->size_bytes);
      chosen.push_back(*s);
    }
    auto v = open_new_volume(*name, size, min_replicas, chosen);
    if (!v.ok()) {
      return v.error().with_context("importing volume " + named(*name));
    }
    spdlog::info("volume '{}' imported from orphan replicas on {}", *name,
                 list_names(*store_names));
    UBLKVOL_TRY(save());
    return volume_json(**v);
  }

  Result<Json> store_remove(Params& p) {
    auto name = p.name("name");
    UBLKVOL_TRY(p.finish());
    if (!name.ok()) {
      return name.error();
    }
    auto s = store_named(*name);
    if (!s.ok()) {
      return s.error();
    }
    std::vector<std::string> users;
    for (const auto& v : volumes) {
      bool uses = std::find(v->missing_stores.begin(), v->missing_stores.end(), *name) !=
                  v->missing_stores.end();
      for (const auto& slot : v->slots) {
        uses = uses || slot.store == *s;
      }
      if (uses) {
        users.push_back(v->name);
      }
    }
    if (!users.empty()) {
      std::string list;
      for (const auto& u : users) {
        list += (list.empty() ? "" : ", ") + named(u);
      }
      return Error(EBUSY, "store " + named(*name) + " holds replicas of volume(s) " + list +
                              " (remove those replicas or volumes first)");
    }
    (*s)->close();
    stores.erase(
        std::find_if(stores.begin(), stores.end(), [&](const auto& e) { return e.get() == *s; }));
    spdlog::info("store '{}' removed (its content stays on the device)", *name);
    UBLKVOL_TRY(save());
    return Json::object();
  }

  Result<Json> store_check(Params& p) {
    auto name = p.name("name");
    UBLKVOL_TRY(p.finish());
    if (!name.ok()) {
      return name.error();
    }
    auto s = store_named(*name);
    if (!s.ok()) {
      return s.error();
    }
    std::vector<std::string> problems;
    if (!(*s)->online()) {
      problems.push_back((*s)->error);
    } else {
      UBLKVOL_TRY((*s)->run([&](dbs::Store& store) {
        problems = store.check();
        return ok_status();
      }));
    }
    return Json{{"ok", problems.empty()}, {"problems", problems}};
  }

  // ---- volumes ------------------------------------------------------------
  engine::ReplicatedVolumeOptions engine_options(const VolumeEntry& v) const {
    engine::ReplicatedVolumeOptions options;
    options.name = v.name;
    options.queues = engine_queues;
    options.queue_depth = config.queue_depth;
    options.min_replicas = v.min_replicas;
    options.io_deadline = std::chrono::milliseconds(config.io_deadline_ms);
    options.rebuild_bytes_per_second = config.rebuild_mb_per_s << 20U;
    apply_scrub_config(config, options);
    return options;
  }

  // Opens the replica `v.name` in the slot's store and attaches it.
  Status open_slot(VolumeEntry& v, ReplicaSlot& slot, const std::string& replica_name) {
    StoreEntry& s = *slot.store;
    auto replica = on_thread<std::unique_ptr<engine::DbsReplicaStore>>(
        *s.thread, [&]() { return engine::open_dbs_replica(*s.store, replica_name); });
    if (!replica.ok()) {
      return replica.error().with_context("volume " + named(v.name) + " on store " + named(s.name));
    }
    slot.replica = std::move(*replica);
    Status attached = s.thread->attach(*slot.replica);
    if (!attached.ok()) {
      close_slot(slot);
      return attached.error();
    }
    return ok_status();
  }

  // Detaches the slot's replica from its thread and destroys it there.
  void close_slot(ReplicaSlot& slot) {
    if (slot.replica && slot.store != nullptr && slot.store->thread) {
      (void)slot.store->thread->detach(*slot.replica);
      (void)slot.store->thread->call([&]() {
        slot.replica.reset();
        return ok_status();
      });
    }
    slot.replica.reset();
  }

  // Deletes the DBS volumes of replica `name` from a store (if present).
  Status delete_replica_data(StoreEntry& s, const std::string& name) {
    return s.run([&](dbs::Store& store) { return delete_replica_volumes(store, name); });
  }

  Status open_engine(VolumeEntry& v) {
    std::vector<engine::ReplicaBinding> bindings;
    for (auto& slot : v.slots) {
      if (slot.store != nullptr) {
        bindings.push_back({slot.replica.get(), slot.store->thread.get()});
      }
    }
    engine::ReplicatedVolumeOptions options = engine_options(v);
    options.min_replicas = std::min<unsigned>(v.min_replicas, bindings.size());
    auto engine = engine::ReplicatedVolume::open(options, std::move(bindings));
    if (!engine.ok()) {
      return engine.error();
    }
    v.engine = std::move(*engine);
    v.frontend = std::make_unique<FrontendVolume>(*v.engine, config.write_through);
    v.error.clear();
    return ok_status();
  }

  void close_volume(VolumeEntry& v) {
    if (v.engine) {
      Status closed = v.engine->close();
      if (!closed.ok()) {
        spdlog::error("volume '{}': close: {}", v.name, closed.error().message());
      }
    }
    v.frontend.reset();
    v.engine.reset();
    for (auto& slot : v.slots) {
      close_slot(slot);
    }
  }

  Json volume_json(VolumeEntry& v) {
    Json out = {{"name", v.name},
                {"size_bytes", v.size_bytes},
                {"generation", 0},
                {"min_replicas", v.min_replicas},
                {"in_sync", 0},
                {"online", false},
                {"device", nullptr},
                {"replicas", Json::array()},
                {"rebuild",
                 {{"active", false},
                  {"percent", 0},
                  {"bytes_per_second", 0},
                  {"eta_seconds", 0},
                  {"done_bytes", 0},
                  {"total_bytes", 0},
                  {"last_error", ""}}},
                {"events", Json::array()},
                {"verify", verify_json({})},
                {"snapshots", Json::array()},
                {"missing_stores", v.missing_stores},
                {"error", v.error.empty() ? Json(nullptr) : Json(v.error)}};
    if (v.device) {
      const auto& info = v.device->info();
      out["device"] = {{"path", v.device->block_path()},
                       {"dev_id", v.device->id()},
                       {"queues", info.nr_hw_queues},
                       {"queue_depth", info.queue_depth}};
    }
    if (!v.engine) {
      return out;
    }
    const engine::VolumeStatus status = v.engine->status();
    out["generation"] = status.generation;
    unsigned in_sync = status.in_sync;
    for (size_t i = 0; i < status.replicas.size() && i < v.slots.size(); ++i) {
      const auto& r = status.replicas[i];
      if (r.state == ReplicaState::kRemoved || v.slots[i].store == nullptr) {
        continue;
      }
      // A replica on a failed store is never reported in sync, even while
      // the engine refuses to fail it (the last one in sync).
      const StoreEntry& on = *v.slots[i].store;
      const bool store_failed = !on.error.empty() && r.state == ReplicaState::kInSync;
      in_sync -= store_failed ? 1 : 0;
      out["replicas"].push_back(
          {{"index", i},
           {"store", on.name},
           {"state", store_failed ? "failed" : state_name(r.state)},
           {"generation", r.generation},
           {"last_error",
            store_failed ? "store " + named(on.name) + " failed: " + on.error : r.last_error}});
    }
    out["in_sync"] = in_sync;
    out["online"] = status.online && in_sync >= status.min_replicas;
    const auto& rb = status.rebuild;
    out["rebuild"] = {{"active", rb.active},
                      {"percent", rb.percent},
                      {"bytes_per_second", rb.bytes_per_second},
                      {"eta_seconds", rb.eta_seconds},
                      {"done_bytes", rb.done_bytes},
                      {"total_bytes", rb.total_bytes},
                      {"last_error", rb.last_error}};
    out["verify"] = verify_json(status.verify);
    for (const auto& e : status.events) {
      out["events"].push_back(
          {{"time", rfc3339(e.when)}, {"replica", e.replica}, {"message", e.message}});
    }
    auto snapshots = list_snapshots(v);
    if (snapshots.ok()) {
      out["snapshots"] = *snapshots;
    }
    return out;
  }

  // The snapshot names, read from the first in-sync replica's store.
  Result<std::vector<std::string>> list_snapshots(VolumeEntry& v) {
    const engine::VolumeStatus status = v.engine->status();
    for (size_t i = 0; i < status.replicas.size() && i < v.slots.size(); ++i) {
      ReplicaSlot& slot = v.slots[i];
      if (status.replicas[i].state != ReplicaState::kInSync || !slot.replica ||
          slot.store == nullptr || !slot.store->thread) {
        continue;
      }
      std::vector<std::string> names;
      Status called = slot.store->thread->call([&]() {
        names = slot.replica->list_snapshots();
        return ok_status();
      });
      if (called.ok()) {
        return names;
      }
    }
    return Error(EIO, "volume " + named(v.name) + " has no in-sync replica to list snapshots");
  }

  // Opens a volume whose replicas exist in `slot_stores` (by index), adds it.
  Result<VolumeEntry*> open_new_volume(const std::string& name, uint64_t size,
                                       unsigned min_replicas,
                                       const std::vector<StoreEntry*>& slot_stores) {
    auto v = std::make_unique<VolumeEntry>();
    v->name = name;
    v->size_bytes = size;
    v->min_replicas = min_replicas;
    for (size_t i = 0; i < slot_stores.size(); ++i) {
      v->slots[i].store = slot_stores[i];
      Status opened = open_slot(*v, v->slots[i], name);
      if (!opened.ok()) {
        close_volume(*v);
        return opened.error();
      }
    }
    Status opened = open_engine(*v);
    if (!opened.ok()) {
      close_volume(*v);
      return opened.error().with_context("volume " + named(name));
    }
    VolumeEntry* added = v.get();
    volumes.push_back(std::move(v));
    return added;
  }

  Status check_new_volume_name(const std::string& name) {
    if (name.size() > std::strlen(kMetaSuffix) &&
        name.compare(name.size() - std::strlen(kMetaSuffix), std::string::npos, kMetaSuffix) == 0) {
      return invalid("volume names ending in '" + std::string(kMetaSuffix) + "' are reserved");
    }
    if (find_volume(name) != nullptr) {
      return Error(EEXIST, "volume " + named(name) + " already exists");
    }
    return ok_status();
  }

  Result<Json> volume_create(Params& p) {
    auto name = p.name("name");
    auto size = p.size("size");
    auto store_names = p.name_list("stores", 1, engine::kMaxReplicas);
    auto min = p.optional_uint("min_replicas");
    if (!name.ok()) {
      return name.error();
    }
    if (!size.ok()) {
      return size.error();
    }
    if (!store_names.ok()) {
      return store_names.error();
    }
    if (!min.ok()) {
      return min.error();
    }
    UBLKVOL_TRY(p.finish());
    UBLKVOL_TRY(check_new_volume_name(*name));
    const auto count = static_cast<unsigned>(store_names->size());
    unsigned min_replicas = std::min(config.min_replicas, count);
    if (min->has_value()) {
      if (**min < 1 || **min > count) {
        return invalid("field 'min_replicas' " + std::to_string(**min) +
                       " must be between 1 and the replica count " + std::to_string(count));
      }
      min_replicas = static_cast<unsigned>(**min);
    }
    std::vector<StoreEntry*> chosen;
    for (const auto& store_name : *store_names) {
      auto s = store_named(store_name);
      if (!s.ok()) {
        return s.error();
      }
      if (!(*s)->online()) {
        return invalid("store " + named(store_name) + " is failed: " + (*s)->error);
      }
      chosen.push_back(*s);
    }
    auto intent = begin(IntentOp::kVolumeCreate, *name, *store_names);
    if (!intent.ok()) {
      return intent.error();
    }
    IntentGuard guard(intents, *intent);
    // Create the replica volumes; undo them all if one fails.
    std::vector<StoreEntry*> created;
    auto undo = [&]() {
      for (StoreEntry* s : created) {
        (void)delete_replica_data(*s, *name);
      }
    };
    for (StoreEntry* s : chosen) {
      Status made = s->run([&](dbs::Store& store) {
        if (store.find_volume(*name).ok() || store.find_volume(*name + kMetaSuffix).ok()) {
          return Status(Error(EEXIST, "store " + named(s->name) + " already holds a volume " +
                                          named(*name) +
                                          " that no volume owns (an orphan: adopt it with "
                                          "volume.import or delete it with store.gc)"));
        }
        return engine::create_dbs_replica(store, *name, *size);
      });
      if (!made.ok()) {
        undo();
        const int err = made.error().errno_value();
        return Error(
            err == ENOSPC ? EINVAL : err,
            made.error()
                .with_context("creating volume " + named(*name) + " on store " + named(s->name))
                .message());
      }
      created.push_back(s);
      crash.step("volume.create: replica created");
    }
    auto v = open_new_volume(*name, *size, min_replicas, chosen);
    if (!v.ok()) {
      undo();
      return v.error();
    }
    crash.step("volume.create: volume opened");
    spdlog::info("volume '{}' created: {} bytes, {} replicas, min_replicas {}", *name, *size, count,
                 min_replicas);
    UBLKVOL_TRY(saved_or_kept(guard));
    crash.step("volume.create: state saved");
    return volume_json(**v);
  }

  Result<Json> volume_show(Params& p) {
    auto name = p.name("name");
    UBLKVOL_TRY(p.finish());
    if (!name.ok()) {
      return name.error();
    }
    auto v = volume_named(*name);
    if (!v.ok()) {
      return v.error();
    }
    return volume_json(**v);
  }

  Result<Json> volume_delete(Params& p) {
    auto name = p.name("name");
    UBLKVOL_TRY(p.finish());
    if (!name.ok()) {
      return name.error();
    }
    auto v = volume_named(*name);
    if (!v.ok()) {
      return v.error();
    }
    VolumeEntry& volume = **v;
    if (volume.device || volume.exposed) {
      return Error(EBUSY, "volume " + named(*name) + " is exposed (unexpose it first)");
    }
    std::vector<StoreEntry*> holders;
    std::vector<std::string> holder_names;
    for (auto& slot : volume.slots) {
      if (slot.store != nullptr) {
        holders.push_back(slot.store);
        holder_names.push_back(slot.store->name);
      }
    }
    // Rolled forward at start-up once recorded (recovery.h).
    auto intent = begin(IntentOp::kVolumeDelete, *name, holder_names);
    if (!intent.ok()) {
      return intent.error();
    }
    IntentGuard guard(intents, *intent);
    close_volume(volume);
    std::string problems;
    for (StoreEntry* s : holders) {
      Status deleted = delete_replica_data(*s, *name);
      if (!deleted.ok()) {
        problems += (problems.empty() ? "" : "; ") + deleted.error().message();
      }
      crash.step("volume.delete: replica deleted");
    }
    volumes.erase(std::find_if(volumes.begin(), volumes.end(),
                               [&](const auto& e) { return e.get() == &volume; }));
    spdlog::info("volume '{}' deleted", *name);
    UBLKVOL_TRY(saved_or_kept(guard));
    crash.step("volume.delete: state saved");
    if (!problems.empty()) {
      return Error(EIO, "volume " + named(*name) +
                            " was removed, but deleting its data failed on: " + problems);
    }
    return Json::object();
  }

  // NOLINTNEXTLINE(readability-make-member-function-const): exposes a volume this service owns
  Status create_device(VolumeEntry& v, unsigned queues, unsigned depth, int32_t dev_id) {
    ublk::DeviceOptions options;
    options.dev_id = dev_id;
    options.queues = queues;
    options.queue_depth = depth;
    options.recoverable = config.recoverable_devices;
    auto device = ublk::UblkDevice::create(*v.frontend, options);
    if (!device.ok()) {
      return device.error();
    }
    v.device = std::move(*device);
    const auto& info = v.device->info();
    v.exposed = ExposeRecord{v.device->id(), info.nr_hw_queues, info.queue_depth};
    return ok_status();
  }

  Result<Json> volume_expose(Params& p) {
    auto name = p.name("name");
    auto queues = p.optional_uint("queues");
    auto depth = p.optional_uint("queue_depth");
    if (!name.ok()) {
      return name.error();
    }
    if (!queues.ok()) {
      return queues.error();
    }
    if (!depth.ok()) {
      return depth.error();
    }
    UBLKVOL_TRY(p.finish());
    auto v = open_volume_named(*name);
    if (!v.ok()) {
      return v.error();
    }
    VolumeEntry& volume = **v;
    const uint64_t q = queues->value_or(config.queues);
    const uint64_t d = depth->value_or(config.queue_depth);
    if (q < 1 || q > engine_queues) {
      return invalid("field 'queues' " + std::to_string(q) + " is out of range 1.." +
                     std::to_string(engine_queues));
    }
    if (d < 4 || d > 4096) {
      return invalid("field 'queue_depth' " + std::to_string(d) + " is out of range 4..4096");
    }
    if (volume.device) {
      return Error(EBUSY, "volume " + named(*name) + " is already exposed as " +
                              volume.device->block_path());
    }
    UBLKVOL_TRY(probe_ublk());
    UBLKVOL_TRY(create_device(volume, static_cast<unsigned>(q), static_cast<unsigned>(d), -1));
    spdlog::info("volume '{}' exposed as {}", *name, volume.device->block_path());
    UBLKVOL_TRY(save());
    return volume_json(volume);
  }

  Result<Json> volume_unexpose(Params& p) {
    auto name = p.name("name");
    UBLKVOL_TRY(p.finish());
    if (!name.ok()) {
      return name.error();
    }
    auto v = volume_named(*name);
    if (!v.ok()) {
      return v.error();
    }
    VolumeEntry& volume = **v;
    if (!volume.device && !volume.exposed) {
      return invalid("volume " + named(*name) + " is not exposed");
    }
    if (volume.device) {
      const std::string path = volume.device->block_path();
      auto in_use = block_device_in_use(path);
      if (!in_use.ok()) {
        return in_use.error();
      }
      if (*in_use) {
        const std::string holder = dbs::describe_device_users(path);
        return Error(EBUSY, path + " (volume " + named(*name) + ") is in use" +
                                (holder.empty() ? "" : ": " + holder));
      }
      Status stopped = volume.device->stop_and_delete();
      if (!stopped.ok()) {
        return stopped.error().with_context("stopping " + path);
      }
      volume.device.reset();
      spdlog::info("volume '{}' unexposed ({} deleted)", *name, path);
    }
    volume.exposed.reset();
    UBLKVOL_TRY(save());
    return Json::object();
  }

  Result<Json> volume_resize(Params& p) {
    auto name = p.name("name");
    auto size = p.size("size");
    if (!name.ok()) {
      return name.error();
    }
    if (!size.ok()) {
      return size.error();
    }
    UBLKVOL_TRY(p.finish());
    auto v = volume_named(*name);
    if (!v.ok()) {
      return v.error();
    }
    if (*size < (*v)->size_bytes) {
      return invalid("volume " + named(*name) + " is " + std::to_string((*v)->size_bytes) +
                     " bytes; shrinking to " + std::to_string(*size) + " is not supported");
    }
    if (*size == (*v)->size_bytes) {
      return volume_json(**v);
    }
    VolumeEntry& volume = **v;
    if (volume.exposed || volume.device) {
      const std::string path = volume.device ? volume.device->block_path() : "a ublk device";
      return Error(EBUSY, "volume " + named(*name) + " is exposed as " + path +
                              ": unexpose it, resize, expose it again (changing the size of a "
                              "live ublk device needs UBLK_U_CMD_UPDATE_SIZE, Linux 6.14+)");
    }
    // A volume left closed (a resize that failed or crashed part-way leaves
    // replicas of different sizes, which the engine refuses to open) may be
    // resized again: that grows the remaining replicas and reopens it.
    if (!volume.engine &&
        std::none_of(volume.slots.begin(), volume.slots.end(),
                     [](const ReplicaSlot& slot) { return slot.store != nullptr; })) {
      return Error(EIO, "volume " + named(*name) + " is not open: " + volume.error);
    }
    if (!volume.missing_stores.empty()) {
      // Their replicas would keep the old size (and a different dirty-region
      // size), so the engine could not open them with the others later.
      return Error(ENODEV, "volume " + named(*name) + " has replicas on unavailable store(s) " +
                               list_names(volume.missing_stores) +
                               "; bring them back or remove those replicas before resizing");
    }
    if (volume.engine && volume.engine->status().rebuild.active) {
      return Error(EBUSY, "volume " + named(*name) +
                              " is rebuilding a replica; resize after the rebuild completes");
    }
    return grow_volume(volume, *size);
  }

  // Grows a volume that is not exposed: closes its engine and replicas, grows
  // every replica's DBS volume (new range reads as zeros, the dirty bitmap is
  // resized by DBS), reopens. DbsReplicaStore and the engine take the size
  // (and dirty-region size) from the DBS volume when they open, so nothing of
  // theirs needs changing. Each grow commits in DBS before the next; the
  // state file gets the new size once all replicas have it. If a grow fails
  // part-way, the grown replicas stay grown (DBS never shrinks) and the
  // engine cannot open replicas of different dirty-region sizes: the error
  // says so, and repeating the resize grows the rest (growing a replica to
  // its current size changes nothing).
  Result<Json> grow_volume(VolumeEntry& volume, uint64_t new_size) {
    const uint64_t old_size = volume.size_bytes;
    close_volume(volume);
    std::optional<Error> failed;
    for (auto& slot : volume.slots) {
      if (slot.store == nullptr) {
        continue;
      }
      Status grown = slot.store->run([&](dbs::Store& store) -> Status {
        auto id = store.find_volume(volume.name);
        if (!id.ok()) {
          return id.error();
        }
        auto info = store.volume_info(*id);
        if (!info.ok()) {
          return info.error();
        }
        if (info->size_bytes == new_size) {
          return ok_status();  // grown by an earlier, interrupted resize
        }
        return store.grow_volume(*id, new_size);
      });
      if (!grown.ok()) {
        failed = grown.error().with_context("growing volume " + named(volume.name) + " on store " +
                                            named(slot.store->name));
        break;
      }
    }
    if (!failed) {
      volume.size_bytes = new_size;
    }
    Status reopened = reopen_volume(volume);
    if (failed) {
      spdlog::error("volume '{}': resize to {} bytes failed: {}", volume.name, new_size,
                    failed->message());
      return Error(failed->errno_value(),
                   failed->message() +
                       (reopened.ok() ? ""
                                      : "; the volume is now closed (" +
                                            reopened.error().message() + "): repeat the resize"));
    }
    if (!reopened.ok()) {
      return reopened.error().with_context("volume " + named(volume.name) + " grown to " +
                                           std::to_string(new_size) +
                                           " bytes but could not be reopened");
    }
    const uint64_t engine_size = volume.engine->info().size_bytes;
    if (engine_size != new_size) {
      return Error(EIO, "volume " + named(volume.name) + " grown to " + std::to_string(new_size) +
                            " bytes but its engine opened with " + std::to_string(engine_size));
    }
    UBLKVOL_TRY(save());
    spdlog::info("volume '{}' grown from {} to {} bytes", volume.name, old_size, new_size);
    return volume_json(volume);
  }

  // Opens the replicas and the engine of a closed volume (its slots keep
  // their stores). On failure the volume stays closed with `error` set.
  Status reopen_volume(VolumeEntry& volume) {
    Status opened = ok_status();
    for (auto& slot : volume.slots) {
      if (slot.store != nullptr && opened.ok()) {
        opened = open_slot(volume, slot, volume.name);
      }
    }
    if (opened.ok()) {
      opened = open_engine(volume);
    }
    if (!opened.ok()) {
      close_volume(volume);
      volume.error = opened.error().message();
      spdlog::error("volume '{}' cannot be reopened: {}", volume.name, volume.error);
    }
    return opened;
  }

  // ---- snapshots ----------------------------------------------------------
  static std::vector<std::string> replica_stores(const VolumeEntry& v) {
    std::vector<std::string> names;
    for (const auto& slot : v.slots) {
      if (slot.store != nullptr) {
        names.push_back(slot.store->name);
      }
    }
    return names;
  }

  // A snapshot operation of the engine (all replicas or none, but not across
  // a crash) inside an intent.
  Status snapshot_op(IntentOp op, VolumeEntry& v, const std::string& snapshot,
                     const std::function<Status()>& run) {
    auto intent = begin(op, v.name, replica_stores(v), snapshot);
    if (!intent.ok()) {
      return intent.error();
    }
    IntentGuard guard(intents, *intent);
    UBLKVOL_TRY(run());
    crash.step("snapshot operation done");
    return ok_status();
  }

  Result<Json> snapshot_create(Params& p) {
    auto volume = p.name("volume");
    auto name = p.name("name");
    if (!volume.ok()) {
      return volume.error();
    }
    if (!name.ok()) {
      return name.error();
    }
    UBLKVOL_TRY(p.finish());
    auto v = open_volume_named(*volume);
    if (!v.ok()) {
      return v.error();
    }
    auto existing = list_snapshots(**v);
    if (existing.ok() && std::find(existing->begin(), existing->end(), *name) != existing->end()) {
      return Error(EEXIST, "volume " + named(*volume) + " already has a snapshot " + named(*name));
    }
    UBLKVOL_TRY(snapshot_op(IntentOp::kSnapshotCreate, **v, *name,
                            [&] { return (*v)->engine->create_snapshot(*name); }));
    spdlog::info("volume '{}': snapshot '{}' created", *volume, *name);
    return Json::object();
  }

  Result<std::pair<VolumeEntry*, std::string>> volume_and_snapshot(Params& p,
                                                                   const std::string& key) {
    auto volume = p.name("volume");
    auto name = p.name(key);
    if (!volume.ok()) {
      return volume.error();
    }
    if (!name.ok()) {
      return name.error();
    }
    auto v = open_volume_named(*volume);
    if (!v.ok()) {
      return v.error();
    }
    auto existing = list_snapshots(**v);
    if (!existing.ok()) {
      return existing.error();
    }
    if (std::find(existing->begin(), existing->end(), *name) == existing->end()) {
      return Error(ENOENT, "volume " + named(*volume) + " has no snapshot " + named(*name));
    }
    return std::make_pair(*v, *name);
  }

  Result<Json> snapshot_list(Params& p) {
    auto volume = p.name("volume");
    UBLKVOL_TRY(p.finish());
    if (!volume.ok()) {
      return volume.error();
    }
    auto v = open_volume_named(*volume);
    if (!v.ok()) {
      return v.error();
    }
    auto names = list_snapshots(**v);
    if (!names.ok()) {
      return names.error();
    }
    Json list = Json::array();
    for (const auto& n : *names) {
      list.push_back({{"name", n}});
    }
    return Json{{"snapshots", list}};
  }

  Result<Json> snapshot_delete(Params& p) {
    auto target = volume_and_snapshot(p, "name");
    UBLKVOL_TRY(p.finish());
    if (!target.ok()) {
      return target.error();
    }
    UBLKVOL_TRY(snapshot_op(IntentOp::kSnapshotDelete, *target->first, target->second, [&] {
      return target->first->engine->delete_snapshot(target->second);
    }));
    spdlog::info("volume '{}': snapshot '{}' deleted", target->first->name, target->second);
    return Json::object();
  }

  Result<Json> snapshot_revert(Params& p) {
    auto target = volume_and_snapshot(p, "name");
    UBLKVOL_TRY(p.finish());
    if (!target.ok()) {
      return target.error();
    }
    if (target->first->device) {
      return Error(EBUSY, "volume " + named(target->first->name) +
                              " is exposed (unexpose it before reverting)");
    }
    UBLKVOL_TRY(snapshot_op(IntentOp::kSnapshotRevert, *target->first, target->second, [&] {
      return target->first->engine->revert_snapshot(target->second);
    }));
    spdlog::info("volume '{}': reverted to snapshot '{}'", target->first->name, target->second);
    return Json::object();
  }

  Result<Json> snapshot_clone(Params& p) {
    auto clone = p.name("clone");
    auto target = volume_and_snapshot(p, "snapshot");
    if (!clone.ok()) {
      return clone.error();
    }
    UBLKVOL_TRY(p.finish());
    if (!target.ok()) {
      return target.error();
    }
    UBLKVOL_TRY(check_new_volume_name(*clone));
    VolumeEntry& origin = *target->first;
    auto intent = begin(IntentOp::kSnapshotClone, *clone, replica_stores(origin), target->second,
                        origin.name);
    if (!intent.ok()) {
      return intent.error();
    }
    IntentGuard guard(intents, *intent);
    // Undone on every store of the origin if any step fails.
    auto undo = [&]() {
      for (const auto& slot : origin.slots) {
        if (slot.store != nullptr) {
          (void)delete_replica_data(*slot.store, *clone);
        }
      }
    };
    auto mask = origin.engine->clone_snapshot(target->second, *clone);
    if (!mask.ok()) {
      undo();
      return mask.error();
    }
    crash.step("snapshot.clone: cloned");
    std::vector<StoreEntry*> stores_of_clone;
    for (unsigned i = 0; i < engine::kMaxReplicas; ++i) {
      if ((*mask & (1U << i)) != 0 && origin.slots[i].store != nullptr) {
        stores_of_clone.push_back(origin.slots[i].store);
      }
    }
    const unsigned min_replicas =
        std::min<unsigned>(origin.min_replicas, static_cast<unsigned>(stores_of_clone.size()));
    auto v = open_new_volume(*clone, origin.size_bytes, min_replicas, stores_of_clone);
    if (!v.ok()) {
      undo();
      return v.error();
    }
    crash.step("snapshot.clone: volume opened");
    spdlog::info("volume '{}': snapshot '{}' cloned into volume '{}'", origin.name, target->second,
                 *clone);
    UBLKVOL_TRY(saved_or_kept(guard));
    crash.step("snapshot.clone: state saved");
    return volume_json(**v);
  }

  // ---- replicas -----------------------------------------------------------
  Result<std::pair<VolumeEntry*, unsigned>> volume_and_index(Params& p) {
    auto volume = p.name("volume");
    auto index = p.uint("index");
    if (!volume.ok()) {
      return volume.error();
    }
    if (!index.ok()) {
      return index.error();
    }
    auto v = open_volume_named(*volume);
    if (!v.ok()) {
      return v.error();
    }
    if (*index >= engine::kMaxReplicas || (*v)->slots[*index].store == nullptr) {
      return Error(ENOENT,
                   "volume " + named(*volume) + " has no replica " + std::to_string(*index));
    }
    return std::make_pair(*v, static_cast<unsigned>(*index));
  }

  Result<Json> replica_list(Params& p) {
    auto volume = p.name("volume");
    UBLKVOL_TRY(p.finish());
    if (!volume.ok()) {
      return volume.error();
    }
    auto v = volume_named(*volume);
    if (!v.ok()) {
      return v.error();
    }
    return Json{{"replicas", volume_json(**v)["replicas"]}};
  }

  Result<Json> replica_add(Params& p) {
    auto volume = p.name("volume");
    auto store = p.name("store");
    if (!volume.ok()) {
      return volume.error();
    }
    if (!store.ok()) {
      return store.error();
    }
    UBLKVOL_TRY(p.finish());
    auto v = open_volume_named(*volume);
    if (!v.ok()) {
      return v.error();
    }
    auto s = store_named(*store);
    if (!s.ok()) {
      return s.error();
    }
    VolumeEntry& vol = **v;
    for (const auto& slot : vol.slots) {
      if (slot.store == *s) {
        return invalid("store " + named(*store) + " already holds a replica of volume " +
                       named(*volume));
      }
    }
    if (!(*s)->online()) {
      return invalid("store " + named(*store) + " is failed: " + (*s)->error);
    }
    // A free slot must exist (the engine reuses the lowest free index).
    if (std::none_of(vol.slots.begin(), vol.slots.end(),
                     [](const ReplicaSlot& slot) { return slot.store == nullptr; })) {
      return invalid("volume " + named(*volume) + " already has " +
                     std::to_string(engine::kMaxReplicas) + " replicas");
    }
    // Leftovers of an earlier replica of this volume are replaced.
    UBLKVOL_TRY(delete_replica_data(**s, *volume));
    Status made = (*s)->run(
        [&](dbs::Store& st) { return engine::create_dbs_replica(st, *volume, vol.size_bytes); });
    if (!made.ok()) {
      return made.error().with_context("creating a replica of " + named(*volume) + " on " +
                                       named(*store));
    }
    ReplicaSlot slot;
    slot.store = *s;
    Status opened = open_slot(vol, slot, *volume);
    if (!opened.ok()) {
      (void)delete_replica_data(**s, *volume);
      return opened.error();
    }
    auto index = vol.engine->add_replica({slot.replica.get(), (*s)->thread.get()});
    if (!index.ok()) {
      close_slot(slot);
      (void)delete_replica_data(**s, *volume);
      return index.error();
    }
    vol.slots[*index] = std::move(slot);
    spdlog::info("volume '{}': replica {} added on store '{}' (rebuilding)", *volume, *index,
                 *store);
    UBLKVOL_TRY(save());
    return Json{{"index", *index}};
  }

  Result<Json> replica_remove(Params& p) {
    auto target = volume_and_index(p);
    UBLKVOL_TRY(p.finish());
    if (!target.ok()) {
      return target.error();
    }
    auto [v, index] = *target;
    UBLKVOL_TRY(v->engine->remove_replica(index));
    ReplicaSlot& slot = v->slots[index];
    StoreEntry* store = slot.store;
    close_slot(slot);
    slot.store = nullptr;
    Status deleted = delete_replica_data(*store, v->name);
    spdlog::info("volume '{}': replica {} on store '{}' removed", v->name, index, store->name);
    UBLKVOL_TRY(save());
    if (!deleted.ok()) {
      return Error(EIO, "replica removed, but deleting its data on store " + named(store->name) +
                            " failed: " + deleted.error().message());
    }
    return Json::object();
  }

  Result<Json> replica_rebuild(Params& p) {
    auto target = volume_and_index(p);
    UBLKVOL_TRY(p.finish());
    if (!target.ok()) {
      return target.error();
    }
    auto [v, index] = *target;
    UBLKVOL_TRY(v->engine->start_rebuild(index));
    spdlog::info("volume '{}': rebuild of replica {} started", v->name, index);
    return Json::object();
  }

  // Starts a background verify (issue 12 item 7); progress and result in
  // volume.show's "verify".
  Result<Json> replica_verify(Params& p) {
    auto volume = p.name("volume");
    auto repair = p.optional_bool("repair");
    auto rate = p.optional_uint("rate");  // MiB/s, 0 = unthrottled
    UBLKVOL_TRY(p.finish());
    for (const Status& s : {volume.ok() ? ok_status() : Status(volume.error()),
                            repair.ok() ? ok_status() : Status(repair.error()),
                            rate.ok() ? ok_status() : Status(rate.error())}) {
      UBLKVOL_TRY(s);
    }
    if (rate->value_or(0) > (uint64_t{1} << 30)) {
      return invalid("field 'rate' is above 1073741824 MiB/s");
    }
    auto v = open_volume_named(*volume);
    if (!v.ok()) {
      return v.error();
    }
    engine::VerifyOptions options;
    options.repair = repair->value_or(false);
    options.bytes_per_second = rate->value_or(config.scrub_mb_per_s) << 20U;
    UBLKVOL_TRY((*v)->engine->start_verify(options));
    spdlog::info("volume '{}': verify{} started", *volume, options.repair ? " + repair" : "");
    return Json{{"verify", verify_json((*v)->engine->status().verify)}};
  }

  Result<Json> replica_fail(Params& p) {
    auto target = volume_and_index(p);
    auto reason = p.optional_string("reason");
    auto force = p.optional_bool("force");  // fail even below min_replicas
    UBLKVOL_TRY(p.finish());
    if (!target.ok()) {
      return target.error();
    }
    if (!reason.ok()) {
      return reason.error();
    }
    if (!force.ok()) {
      return force.error();
    }
    auto [v, index] = *target;
    const std::string why = reason->value_or("failed by the operator");
    if (why.size() > 1024) {
      return invalid("field 'reason' is longer than 1024 bytes");
    }
    UBLKVOL_TRY(v->engine->fail_replica(index, why, force->value_or(false)));
    spdlog::warn("volume '{}': replica {} failed by the operator: {}", v->name, index, why);
    return Json::object();
  }

  // ---- store health ---------------------------------------------------------
  // Run periodically (daemon_main's timer): a store whose file was deleted or
  // replaced under it, or whose DBS store failed (a metadata write or flush
  // failed: I/O error, ENOSPC), is marked failed - state, reason, an event,
  // a log line - and its replicas are failed in their engines (retried on
  // every check while an engine refuses: the last replica in sync).
  void check_stores() {
    for (auto& s : stores) {
      if (!s->store || !s->thread) {
        continue;  // never opened: already failed
      }
      if (s->error.empty()) {
        std::string reason = s->watch.check(s->path);
        if (reason.empty()) {
          Status healthy = s->thread->call([&] { return s->store->health(); });
          reason = healthy.ok() ? "" : healthy.error().message();
        }
        if (reason.empty()) {
          continue;
        }
        s->error = reason;
        s->events.emplace_back(rfc3339(std::chrono::system_clock::now()), "failed: " + reason);
        spdlog::error("store '{}' failed: {}", s->name, reason);
      }
      fail_replicas_on(*s);
    }
  }

  void fail_replicas_on(const StoreEntry& s) {
    for (auto& v : volumes) {
      if (!v->engine) {
        continue;
      }
      const engine::VolumeStatus status = v->engine->status();
      for (unsigned i = 0; i < status.replicas.size() && i < v->slots.size(); ++i) {
        const ReplicaState state = status.replicas[i].state;
        if (v->slots[i].store != &s ||
            (state != ReplicaState::kInSync && state != ReplicaState::kRebuilding)) {
          continue;
        }
        Status failed = v->engine->fail_replica(i, "store '" + s.name + "' failed: " + s.error);
        if (failed.ok()) {
          spdlog::warn("volume '{}': replica {} failed with its store '{}'", v->name, i, s.name);
        }
      }
    }
  }

  // ---- stats / status -------------------------------------------------------
  static Json histogram_json(const ublk::LatencyHistogram& h) {
    return {{"buckets", h.buckets}, {"sum_ns", h.sum_ns}};
  }

  Result<Json> stats(Params& p) {
    auto only = p.optional_name("volume");
    UBLKVOL_TRY(p.finish());
    if (!only.ok()) {
      return only.error();
    }
    if (only->has_value() && find_volume(**only) == nullptr) {
      return Error(ENOENT, "volume " + named(**only) + " does not exist");
    }
    Json bounds = Json::array();
    for (unsigned i = 0; i < ublk::kLatencyBuckets; ++i) {
      bounds.push_back(ublk::latency_bucket_upper_ns(i));
    }
    Json list = Json::array();
    for (auto& v : volumes) {
      if (only->has_value() && v->name != **only) {
        continue;
      }
      const ublk::DeviceStats s = v->device ? v->device->stats() : ublk::DeviceStats{};
      list.push_back({{"name", v->name},
                      {"exposed", v->device != nullptr},
                      {"reads", s.reads},
                      {"writes", s.writes},
                      {"flushes", s.flushes},
                      {"discards", s.discards},
                      {"write_zeroes", s.write_zeroes},
                      {"bytes_read", s.bytes_read},
                      {"bytes_written", s.bytes_written},
                      {"errors", s.errors},
                      {"read_latency_ns", histogram_json(s.read_latency)},
                      {"write_latency_ns", histogram_json(s.write_latency)},
                      {"verify", verify_json(v->engine ? v->engine->status().verify
                                                       : engine::VerifyStatus{})}});
    }
    return Json{
        {"time_ns", monotonic_ns()}, {"latency_bucket_upper_ns", bounds}, {"volumes", list}};
  }

  unsigned exposed_count() const {
    return static_cast<unsigned>(std::count_if(volumes.begin(), volumes.end(),
                                               [](const auto& v) { return v->device != nullptr; }));
  }

  Result<Json> daemon_status(Params& p) {
    UBLKVOL_TRY(p.finish());
    const Status ublk_ok = probe_ublk();
    Json orphan_list = Json::array();
    for (const auto& [store, o] : orphans()) {
      orphan_list.push_back(orphan_json(store, o));
    }
    const auto uptime = std::chrono::duration_cast<std::chrono::seconds>(
        std::chrono::steady_clock::now() - started);
    return Json{{"version", version_string()},
                {"pid", ::getpid()},
                {"uptime_seconds", uptime.count()},
                {"state_dir", config.state_dir},
                {"ublk",
                 {{"available", ublk_ok.ok()},
                  {"message",
                   ublk_ok.ok() ? std::string("ublk_drv is loaded") : ublk_ok.error().message()}}},
                {"stores", stores.size()},
                {"volumes", volumes.size()},
                {"exposed", exposed_count()},
                {"orphans", orphan_list},
                {"pending_intents", intents.pending().size()}};
  }

  Result<Json> list_all(Params& p, bool want_stores) {
    UBLKVOL_TRY(p.finish());
    Json list = Json::array();
    if (want_stores) {
      for (auto& s : stores) {
        list.push_back(store_json(*s));
      }
      return Json{{"stores", list}};
    }
    for (auto& v : volumes) {
      list.push_back(volume_json(*v));
    }
    return Json{{"volumes", list}};
  }

  Result<Json> store_show(Params& p) {
    auto name = p.name("name");
    UBLKVOL_TRY(p.finish());
    if (!name.ok()) {
      return name.error();
    }
    auto s = store_named(*name);
    if (!s.ok()) {
      return s.error();
    }
    return store_json(**s);
  }

  Result<Json> store_list(Params& p) { return list_all(p, true); }
  Result<Json> volume_list(Params& p) { return list_all(p, false); }

  Result<Json> dispatch(const Request& request) {
    // Every method of docs/control-protocol.md and its handler.
    using Handler = Result<Json> (Impl::*)(Params&);
    static constexpr std::pair<std::string_view, Handler> kMethods[] = {
        {"daemon.status", &Impl::daemon_status},
        {"store.add", &Impl::store_add},
        {"store.list", &Impl::store_list},
        {"store.show", &Impl::store_show},
        {"store.remove", &Impl::store_remove},
        {"store.check", &Impl::store_check},
        {"volume.create", &Impl::volume_create},
        {"volume.list", &Impl::volume_list},
        {"volume.show", &Impl::volume_show},
        {"volume.delete", &Impl::volume_delete},
        {"volume.expose", &Impl::volume_expose},
        {"volume.unexpose", &Impl::volume_unexpose},
        {"volume.resize", &Impl::volume_resize},
        {"snapshot.create", &Impl::snapshot_create},
        {"snapshot.list", &Impl::snapshot_list},
        {"snapshot.delete", &Impl::snapshot_delete},
        {"snapshot.revert", &Impl::snapshot_revert},
        {"snapshot.clone", &Impl::snapshot_clone},
        {"replica.list", &Impl::replica_list},
        {"replica.add", &Impl::replica_add},
        {"replica.remove", &Impl::replica_remove},
        {"replica.rebuild", &Impl::replica_rebuild},
        {"replica.fail", &Impl::replica_fail},
        {"replica.verify", &Impl::replica_verify},
        {"stats", &Impl::stats},
        {"store.gc", &Impl::store_gc},
        {"volume.import", &Impl::volume_import},
    };
    Params p(request.params, request.peer);
    UBLKVOL_TRY(validate_dbs_names(request.method, request.params));
    for (const auto& [name, handler] : kMethods) {
      if (request.method == name) {
        return (this->*handler)(p);
      }
    }
    return Error(ENOSYS, "unknown method '" + request.method.substr(0, 64) + "'");
  }

  // ---- start / stop ---------------------------------------------------------
  // Finishes or undoes every pending intent on the stores that are online
  // (recovery.h has the rule per operation); a volume.delete drops the
  // volume from `state`. What is left on a store that is not online shows up
  // as an orphan when it returns. Returns the intents resolved (cleared once
  // `state` is saved).
  std::vector<uint64_t> recover_intents(DaemonState& state) {
    std::vector<uint64_t> resolved;
    for (const Intent& intent : intents.pending()) {
      auto known = std::find_if(state.volumes.begin(), state.volumes.end(),
                                [&](const VolumeRecord& r) { return r.name == intent.volume; });
      const bool in_state = known != state.volumes.end();
      bool everywhere = true;
      if (intent.op == IntentOp::kSnapshotCreate) {
        for (const auto& store_name : intent.stores) {
          StoreEntry* s = find_store(store_name);
          everywhere = everywhere && s != nullptr && s->online() &&
                       s->run([&](dbs::Store& store) {
                          return has_snapshot_or_no_volume(store, intent.volume, intent.snapshot)
                                     ? ok_status()
                                     : Status(Error(ENOENT, "no snapshot"));
                        }).ok();
        }
      }
      spdlog::warn("recovering the interrupted {}", describe(intent));
      for (const auto& store_name : intent.stores) {
        StoreEntry* s = find_store(store_name);
        if (s == nullptr || !s->online()) {
          spdlog::warn(
              "  store '{}' is not available: what the operation left there shows up as "
              "an orphan when it returns",
              store_name);
          continue;
        }
        Status done = s->run([&](dbs::Store& store) {
          return recover_on_store(store, intent, in_state, everywhere);
        });
        if (!done.ok()) {
          spdlog::error("  store '{}': {}", store_name, done.error().message());
        }
      }
      if (intent.op == IntentOp::kVolumeDelete && in_state) {
        state.volumes.erase(known);
      }
      resolved.push_back(intent.id);
    }
    return resolved;
  }

  // state.json's size of a just-opened volume against what its replicas
  // hold. Larger than the replicas: a state file from elsewhere or edited by
  // hand - exposing it would promise space no replica has, so the volume is
  // refused (error set). Smaller: what a daemon killed during volume.resize
  // leaves (every replica is grown before state.json), so the resize is
  // finished; true if the recorded size changed (the caller saves).
  bool agree_on_size(VolumeEntry& v) {
    const uint64_t replicas = v.engine->info().size_bytes;
    if (replicas == v.size_bytes) {
      return false;
    }
    if (replicas < v.size_bytes) {
      v.error = "state.json gives volume " + named(v.name) + " " + std::to_string(v.size_bytes) +
                " bytes but its replicas hold " + std::to_string(replicas) +
                " bytes; refusing to open it (fix its size_bytes in state.json, or remove it "
                "from state.json and adopt the replicas with `volume import`)";
      return false;
    }
    spdlog::warn(
        "volume '{}': replicas hold {} bytes, state.json {}: finishing an interrupted "
        "resize",
        v.name, replicas, v.size_bytes);
    v.size_bytes = replicas;
    return true;
  }

  void load(DaemonState state) {
    bool sizes_adopted = false;  // agree_on_size() changed a volume's recorded size
    bool uuid_changed = false;   // an older state file's random uuid replaced
    for (const auto& record : state.stores) {
      auto entry = std::make_unique<StoreEntry>();
      entry->name = record.name;
      entry->path = record.path;
      entry->uuid = record.uuid;
      Status opened = open_store(*entry);
      if (!opened.ok()) {
        entry->error = opened.error().message();
        spdlog::error("{}", entry->error);
      } else {
        spdlog::info("store '{}' opened and checked: {}", entry->name, entry->path);
      }
      uuid_changed = uuid_changed || entry->uuid != record.uuid;
      stores.push_back(std::move(entry));
    }
    const std::vector<uint64_t> resolved = recover_intents(state);
    for (const auto& record : state.volumes) {
      auto v = std::make_unique<VolumeEntry>();
      v->name = record.name;
      v->size_bytes = record.size_bytes;
      v->min_replicas = record.min_replicas;
      v->exposed = record.exposed;
      size_t next = 0;
      for (const auto& store_name : record.stores) {
        StoreEntry* s = find_store(store_name);
        if (s == nullptr || !s->online() || next >= v->slots.size()) {
          v->missing_stores.push_back(store_name);
          spdlog::error("volume '{}': replica on store '{}' is unavailable{}", v->name, store_name,
                        s == nullptr ? " (no such store)" : ": " + s->error);
          continue;
        }
        v->slots[next].store = s;
        Status opened = open_slot(*v, v->slots[next], v->name);
        if (!opened.ok()) {
          spdlog::error("{}", opened.error().message());
          v->slots[next].store = nullptr;
          v->missing_stores.push_back(store_name);
          continue;
        }
        ++next;
      }
      if (next == 0) {
        v->error = "no replica of the volume is available";
      } else {
        Status opened = open_engine(*v);
        if (!opened.ok()) {
          v->error = opened.error().message();
        } else {
          sizes_adopted = agree_on_size(*v) || sizes_adopted;
        }
      }
      if (!v->error.empty()) {
        spdlog::error("volume '{}' cannot be opened: {}", v->name, v->error);
        close_volume(*v);
      } else {
        const auto status = v->engine->status();
        spdlog::info("volume '{}' opened: {} of {} replicas in sync, generation {:#x}", v->name,
                     status.in_sync, next, status.generation);
      }
      volumes.push_back(std::move(v));
    }
    if ((!resolved.empty() || uuid_changed || sizes_adopted) && save().ok()) {
      for (uint64_t id : resolved) {
        if (Status cleared = intents.clear(id); !cleared.ok()) {
          spdlog::error("{}", cleared.error().message());
        }
      }
    }
    for (const auto& o : orphans()) {
      spdlog::warn(
          "orphan: store '{}' holds volume '{}' ({} bytes) that no volume of state.json "
          "has a replica in (adopt it: ublk-volume volume import; remove it: "
          "ublk-volume store gc)",
          o.first, o.second.volume, o.second.size_bytes);
    }
    // Re-expose: re-attach to devices a previous process left, else create.
    bool any_exposed = false;
    for (auto& v : volumes) {
      any_exposed = any_exposed || (v->exposed && v->engine);
    }
    if (!any_exposed) {
      return;
    }
    const Status ublk_ok = probe_ublk();
    for (auto& v : volumes) {
      if (!v->exposed || !v->engine) {
        continue;
      }
      if (!ublk_ok.ok()) {
        spdlog::error("volume '{}' stays unexposed: {}", v->name, ublk_ok.error().message());
        continue;
      }
      reexpose(*v);
    }
  }

  void reexpose(VolumeEntry& v) {
    const ExposeRecord record = *v.exposed;
    ublk::DeviceOptions options;
    options.dev_id = static_cast<int32_t>(record.dev_id);
    options.queues = record.queues;
    options.queue_depth = record.queue_depth;
    options.recoverable = true;
    auto recovered = ublk::UblkDevice::recover(*v.frontend, record.dev_id, options);
    if (recovered.ok()) {
      v.device = std::move(*recovered);
      spdlog::info("volume '{}': re-attached to {} (user recovery)", v.name,
                   v.device->block_path());
      return;
    }
    spdlog::info("volume '{}': no device {} to re-attach ({}); creating one", v.name, record.dev_id,
                 recovered.error().message());
    Status created =
        create_device(v, record.queues, record.queue_depth, static_cast<int32_t>(record.dev_id));
    if (!created.ok()) {
      created = create_device(v, record.queues, record.queue_depth, -1);
    }
    if (!created.ok()) {
      spdlog::error("volume '{}' cannot be exposed: {}", v.name, created.error().message());
      return;
    }
    spdlog::info("volume '{}' exposed as {}", v.name, v.device->block_path());
    (void)save();
  }

  ShutdownReport shutdown() {
    ShutdownReport report;
    if (shut_down) {
      return report;
    }
    shut_down = true;
    for (auto& v : volumes) {
      if (!v->device) {
        continue;
      }
      const std::string path = v->device->block_path();
      auto in_use = block_device_in_use(path);
      if (in_use.ok() && *in_use) {
        const std::string holder = dbs::describe_device_users(path);
        Status detached = v->device->detach();
        const std::string line =
            v->name + " (" + path + ")" + (holder.empty() ? ": in use" : ": " + holder);
        if (!detached.ok()) {
          spdlog::error("volume '{}': detach failed: {}", v->name, detached.error().message());
        }
        spdlog::warn("{} is in use: detached, left for the next ublk-volumed to re-attach", line);
        report.detached.push_back(line);
      } else {
        Status stopped = v->device->stop_and_delete();
        if (!stopped.ok()) {
          spdlog::error("volume '{}': stopping {} failed: {}", v->name, path,
                        stopped.error().message());
        }
        spdlog::info("volume '{}': {} stopped and deleted", v->name, path);
        report.stopped.push_back(v->name);
      }
      v->device.reset();
    }
    for (auto& v : volumes) {
      close_volume(*v);
    }
    for (auto& s : stores) {
      s->close();
    }
    return report;
  }
};

// ---------------------------------------------------------------------------

Service::Service(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Service::~Service() {
  // A destructor must not throw (that would be std::terminate): an exception
  // from shutdown is reported instead, and the members are destroyed as usual.
  try {
    (void)impl_->shutdown();
  } catch (const std::exception& e) {
    (void)std::fprintf(stderr, "ublk-volumed: error: shutdown: %s\n", e.what());
  }
}

Result<std::unique_ptr<Service>> Service::start(const DaemonConfig& config) {
  UBLKVOL_TRY(validate_config(config));
  auto state = load_state(config.state_dir);
  if (!state.ok()) {
    return state.error();
  }
  auto impl = std::make_unique<Impl>();
  impl->config = config;
  // Said once, from the options every store is opened with.
  const dbs::OpenOptions open_options = impl->store_open_options();
  spdlog::info(
      "stores: the data of new mappings is made durable before their journal record by {}; "
      "device submit batch {}",
      open_options.mapping_data_order == dbs::OpenOptions::MappingDataOrder::kFuaData
          ? "FUA data writes (store_data_order fua)"
          : "one device flush per commit (store_data_order flush)",
      impl->device_options().submit_batch);
  const unsigned cpus = std::max(1U, std::thread::hardware_concurrency());
  impl->engine_queues = std::min(60U, std::max(config.queues, cpus));
  auto intents = IntentLog::open(config.state_dir);
  if (!intents.ok()) {
    return intents.error();
  }
  impl->intents = std::move(*intents);
  impl->load(std::move(*state));
  return std::unique_ptr<Service>(new Service(std::move(impl)));
}

Json Service::handle(const Request& request) {
  try {
    auto result = impl_->dispatch(request);
    if (!result.ok()) {
      return make_error_response(request.id, result.error());
    }
    return make_ok_response(request.id, std::move(*result));
  } catch (const std::exception& e) {
    spdlog::error("request '{}' failed with an exception: {}", request.method, e.what());
    return make_error_response(request.id, ErrorCode::kInternal,
                               std::string("internal error: ") + e.what());
  }
}

Service::ShutdownReport Service::shutdown() { return impl_->shutdown(); }

std::string Service::status_line() const {
  return std::to_string(impl_->stores.size()) + " stores, " +
         std::to_string(impl_->volumes.size()) + " volumes, " +
         std::to_string(impl_->exposed_count()) + " exposed";
}

void Service::set_save_hook(SaveHook hook) { impl_->save_hook = std::move(hook); }

void Service::check_stores() { impl_->check_stores(); }

}  // namespace ublkvol::daemon
