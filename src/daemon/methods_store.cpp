// store.add / list / show / remove / check / gc (docs/control-protocol.md).
#include <fcntl.h>
#include <sys/stat.h>

#include <cerrno>
#include <optional>
#include <spdlog/spdlog.h>

#include "ublkvol/common/unique_fd.h"
#include "ublkvol/dbs/device_users.h"
#include "ublkvol/dbs/file_device.h"

#include "device_in_use.h"
#include "handlers.h"
#include "render.h"
#include "store_paths.h"

namespace ublkvol::daemon {
namespace {

struct AddArgs {
  std::string name;
  std::string path;
  bool format = false;
  std::optional<uint64_t> size;         // creates the file (format only)
  std::optional<uint64_t> extent_size;  // format only
  std::optional<bool> force;            // format only
  uint32_t extent_blocks = 256;
};

Result<AddArgs> parse_add(Params& p) {
  AddArgs a;
  UBLKVOL_ASSIGN_OR_RETURN(a.name, p.name("name"));
  UBLKVOL_ASSIGN_OR_RETURN(a.path, p.string("path"));
  UBLKVOL_ASSIGN_OR_RETURN(const std::optional<bool> format, p.optional_bool("format"));
  UBLKVOL_ASSIGN_OR_RETURN(a.size, p.optional_size("size"));
  UBLKVOL_ASSIGN_OR_RETURN(a.extent_size, p.optional_size("extent_size"));
  UBLKVOL_ASSIGN_OR_RETURN(a.force, p.optional_bool("force"));
  UBLKVOL_TRY(p.finish());
  a.format = format.value_or(false);
  if (a.size && !a.format) {
    return invalid("field 'size' is only allowed with format=true (it creates the file)");
  }
  if (a.extent_size && !a.format) {
    return invalid("field 'extent_size' is only allowed with format=true");
  }
  if (a.force && !a.format) {
    return invalid("field 'force' is only allowed with format=true");
  }
  if (a.extent_size) {
    const uint64_t blocks = *a.extent_size / 4096;
    if (blocks < 8 || blocks > 256 || (blocks & (blocks - 1)) != 0) {
      return invalid("field 'extent_size' must be a power of two between 32768 and 1048576");
    }
    a.extent_blocks = static_cast<uint32_t>(blocks);
  }
  return a;
}

// --format erases the target: refused if it is in use (a block device
// someone holds exclusively: mounted, another store, mkfs), and - unless
// forced - if it holds a DBS store or a filesystem signature.
Status check_format_target(const std::string& path, bool force) {
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && S_ISBLK(st.st_mode)) {
    UBLKVOL_ASSIGN_OR_RETURN(const bool in_use, block_device_in_use(path));
    if (in_use) {
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

// Formats `open_path` (creating a file of `a.size` bytes if given) and
// returns the open device.
Result<std::unique_ptr<dbs::FileDevice>> format_store(const Registry& r, const AddArgs& a,
                                                      const AdmittedPath& admitted) {
  const std::string& open_path = admitted.open_path;
  struct stat st {};
  const bool exists = !admitted.missing && ::stat(open_path.c_str(), &st) == 0;
  if (!exists && !a.size) {
    return Error(ENOENT, a.path + " does not exist (give 'size' to create a file)");
  }
  if (exists && !S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
    return invalid(a.path + " is neither a regular file nor a block device");
  }
  if (exists && S_ISBLK(st.st_mode) && a.size) {
    return invalid("field 'size' cannot be used with a block device (" + a.path + ")");
  }
  if (exists && a.size && static_cast<uint64_t>(st.st_size) != *a.size) {
    // 'size' creates a file; it never extends or shrinks an existing one.
    return invalid(a.path + " already exists with " + std::to_string(st.st_size) +
                   " bytes; 'size' (" + std::to_string(*a.size) +
                   ") is only for creating a new file (omit it to format the file at its size)");
  }
  dbs::FileDeviceOptions options = r.device_options();
  options.create_size = a.size.value_or(0);
  auto device = dbs::FileDevice::open(open_path, options);
  if (!device.ok()) {
    return device.error().with_context("store " + named(a.name));
  }
  dbs::FormatOptions format_options;
  format_options.extent_blocks = a.extent_blocks;
  Status formatted = dbs::Store::format(**device, format_options);
  if (!formatted.ok()) {
    return formatted.error().with_context("formatting store " + named(a.name) + " on " + a.path);
  }
  return device;
}

}  // namespace

Result<Json> store_add(Registry& r, Params& p) {
  UBLKVOL_ASSIGN_OR_RETURN(const AddArgs a, parse_add(p));
  if (r.find_store(a.name) != nullptr) {
    return Error(EEXIST, "store " + named(a.name) + " already exists");
  }
  if (a.format && a.size) {
    UBLKVOL_TRY(validate_new_store_size(*a.size));
  }
  // Only paths this client may name (store_paths.h); `open_path` is what
  // to open from here on.
  UBLKVOL_ASSIGN_OR_RETURN(
      const AdmittedPath admitted,
      admit_store_path(p.peer(), a.path, r.config.store_dirs, a.format && a.size.has_value()));
  CreatedFileGuard remove_on_failure(admitted);
  // By the file it names, not the path string (aliases, links).
  auto identity = identity_of_path(admitted.open_path);
  if (identity.ok()) {
    if (std::string same = r.same_store(*identity, "", nullptr); !same.empty()) {
      return Error(EEXIST,
                   a.path + " " + same + (a.format ? "; refusing to format a live store" : ""));
    }
  }
  auto entry = std::make_unique<StoreEntry>();
  entry->name = a.name;
  entry->path = admitted.open_path;  // the record path once opened
  std::unique_ptr<dbs::FileDevice> formatted_device;
  if (a.format && identity.ok()) {
    UBLKVOL_TRY(check_format_target(admitted.open_path, a.force.value_or(false)));
  }
  if (a.format) {
    UBLKVOL_ASSIGN_OR_RETURN(formatted_device, format_store(r, a, admitted));
  }
  Status opened = r.open_store(*entry, std::move(formatted_device));
  if (!opened.ok()) {
    // A device that is not a store is a bad argument, not an I/O failure; a
    // damaged store stays corruption.
    const Error& error = opened.error();
    const int err = error.errno_value();
    const bool keep = err == EIO || err == ENOENT || err == EACCES || err == EEXIST ||
                      err == EBUSY || error.kind() == ErrorKind::kCorruption;
    if (keep) {
      return error;
    }
    return Error(ErrorKind::kInvalidArgument, EINVAL, error.message());
  }
  entry->path = admitted.record_path;
  remove_on_failure.keep();
  spdlog::info("store '{}' added: {}{}", entry->name, entry->path, a.format ? " (formatted)" : "");
  StoreEntry& added = *entry;
  r.stores.push_back(std::move(entry));
  UBLKVOL_TRY(r.save());
  return store_json(r, added);
}

Result<Json> store_list(Registry& r, Params& p) {
  UBLKVOL_TRY(p.finish());
  Json list = Json::array();
  for (auto& s : r.stores) {
    list.push_back(store_json(r, *s));
  }
  return Json{{"stores", list}};
}

Result<Json> store_show(Registry& r, Params& p) {
  UBLKVOL_ASSIGN_OR_RETURN(const std::string name, sole_name(p, "name"));
  UBLKVOL_ASSIGN_OR_RETURN(StoreEntry * s, r.store_named(name));
  return store_json(r, *s);
}

Result<Json> store_remove(Registry& r, Params& p) {
  UBLKVOL_ASSIGN_OR_RETURN(const std::string name, sole_name(p, "name"));
  UBLKVOL_ASSIGN_OR_RETURN(StoreEntry * s, r.store_named(name));
  if (const std::set<std::string> users = r.replicas_on(*s); !users.empty()) {
    return Error(EBUSY, "store " + named(name) + " holds replicas of volume(s) " +
                            list_names({users.begin(), users.end()}) +
                            " (remove those replicas or volumes first)");
  }
  r.backup_jobs.stop_using(name);
  s->close();
  std::erase_if(r.stores, [&](const auto& e) { return e.get() == s; });
  spdlog::info("store '{}' removed (its content stays on the device)", name);
  UBLKVOL_TRY(r.save());
  return Json::object();
}

Result<Json> store_check(Registry& r, Params& p) {
  UBLKVOL_ASSIGN_OR_RETURN(const std::string name, sole_name(p, "name"));
  UBLKVOL_ASSIGN_OR_RETURN(StoreEntry * s, r.store_named(name));
  std::vector<std::string> problems;
  if (!s->online()) {
    problems.push_back(s->error);
  } else {
    UBLKVOL_TRY(s->run([&](dbs::Store& store) {
      problems = store.check();
      return ok_status();
    }));
  }
  return Json{{"ok", problems.empty()}, {"problems", problems}};
}

// store.gc: deletes the orphans on a store (dry_run: lists them).
Result<Json> store_gc(Registry& r, Params& p) {
  UBLKVOL_ASSIGN_OR_RETURN(const std::string name, p.name("name"));
  UBLKVOL_ASSIGN_OR_RETURN(const std::optional<bool> dry_run_given, p.optional_bool("dry_run"));
  UBLKVOL_TRY(p.finish());
  const bool dry_run = dry_run_given.value_or(false);
  UBLKVOL_ASSIGN_OR_RETURN(StoreEntry * s, r.store_named(name));
  if (!s->online()) {
    return Error(EIO, "store " + named(name) + " is failed: " + s->error);
  }
  Json list = Json::array();
  for (const Orphan& o : r.orphans_on(*s)) {
    if (!dry_run) {
      UBLKVOL_TRY(Registry::delete_replica_data(*s, o.volume));
      spdlog::info("store '{}': orphan volume '{}' deleted (store gc)", name, o.volume);
    }
    list.push_back(orphan_json(name, o));
  }
  return Json{{"orphans", list}, {"removed", !dry_run}};
}

}  // namespace ublkvol::daemon
