// ublk-volume store add/list/show/remove/check/gc.
#include <memory>
#include <string>
#include <vector>

#include "commands.h"
#include "render.h"

namespace ublkvol::cli {

void add_store_commands(CLI::App& app, CommandTree& tree) {
  CLI::App* store =
      app.add_subcommand("store", "Manage stores: devices or files that hold replicas");
  store->require_subcommand(1);
  store->footer(
      "Examples:\n"
      "  ublk-volume store add s0 /dev/nvme0n1 --format\n"
      "  ublk-volume store add s1 /var/lib/ublk-volumed/s1.img --format --size 100G\n"
      "  ublk-volume store list\n");

  struct AddArgs {
    std::string name, path, size, extent_size;
    bool format = false;
    bool force = false;
  };
  auto add = std::make_shared<AddArgs>();
  CLI::App* c = tree.add(
      store, "add", Method::kStoreAdd,
      "  ublk-volume store add s0 /dev/nvme0n1              # open a formatted store\n"
      "  ublk-volume store add s0 /dev/nvme0n1 --format     # format the device (erases it)\n"
      "  ublk-volume store add s1 /srv/s1.img --format --size 20G   # new file-backed store\n",
      [add](Session& s) {
        Json params = {{"name", add->name}, {"path", add->path}};
        if (add->format) {
          params["format"] = true;
        }
        if (add->force) {
          if (!add->format) {
            s.env().err << kProgram << ": --force only applies to --format\n";
            return ExitCode::kUsage;
          }
          params["force"] = true;
        }
        if (!add->size.empty()) {
          if (!add->format) {
            s.env().err << kProgram << ": --size creates a new store file and needs --format\n";
            return ExitCode::kUsage;
          }
          auto size = size_argument(s, add->size, "--size");
          if (!size) {
            return ExitCode::kUsage;
          }
          params["size"] = *size;
        }
        if (!add->extent_size.empty()) {
          auto extent = size_argument(s, add->extent_size, "--extent-size");
          if (!extent) {
            return ExitCode::kUsage;
          }
          params["extent_size"] = *extent;
        }
        auto r = s.call(Method::kStoreAdd, params);
        if (!r) {
          return s.status();
        }
        return s.done(*r, "added store '" + add->name + "' (" + add->path + ", " +
                              format_size(r->value("size_bytes", uint64_t{0})) + ")");
      });
  c->add_option("name", add->name, "Store name (letters, digits, . _ -)")->required();
  c->add_option("path", add->path, "Block device or file")->required();
  c->add_flag("--format", add->format, "Write a new, empty store (destroys what PATH holds)");
  c->add_flag("--force", add->force,
              "With --format: format even if PATH holds a DBS store or a filesystem (never a "
              "live store or a device in use)");
  c->add_option("--size", add->size,
                "Create PATH as a file of this size if it does not exist (with --format), "
                "e.g. 20G");
  c->add_option("--extent-size", add->extent_size,
                "Allocation unit of a new store (with --format), e.g. 1M");

  tree.add(
      store, "list", Method::kStoreList,
      "  ublk-volume store list\n  ublk-volume store list --json | jq '.stores[].name'\n",
      [](Session& s) { return s.show(Method::kStoreList, Json::object(), render_store_list); });

  auto name = std::make_shared<std::string>();
  c = tree.add(store, "show", Method::kStoreShow, "  ublk-volume store show s0\n",
               [name](Session& s) {
                 return s.show(Method::kStoreShow, {{"name", *name}}, render_store);
               });
  c->add_option("name", *name, "Store name")->required();

  c = tree.add(store, "remove", Method::kStoreRemove, "  ublk-volume store remove s0\n",
               [name](Session& s) {
                 auto r = s.call(Method::kStoreRemove, {{"name", *name}});
                 return r ? s.done(*r, "removed store '" + *name + "'") : s.status();
               });
  c->add_option("name", *name, "Store name")->required();

  c = tree.add(store, "check", Method::kStoreCheck, "  ublk-volume store check s0\n",
               [name](Session& s) {
                 auto r = s.call(Method::kStoreCheck, {{"name", *name}});
                 if (!r) {
                   return s.status();
                 }
                 const ExitCode printed = s.print(*r, [&](std::ostream& out, const Json& result) {
                   render_store_check(out, *name, result);
                 });
                 if (printed != ExitCode::kOk) {
                   return printed;
                 }
                 return r->value("ok", false) ? ExitCode::kOk : ExitCode::kFailed;
               });
  c->add_option("name", *name, "Store name")->required();

  auto gc_dry_run = std::make_shared<bool>(false);
  c = tree.add(store, "gc", Method::kStoreGc,
               "  ublk-volume store gc s0 --dry-run    # list them\n"
               "  ublk-volume store gc s0              # delete them\n",
               [name, gc_dry_run](Session& s) {
                 Json params = {{"name", *name}};
                 if (*gc_dry_run) {
                   params["dry_run"] = true;
                 }
                 auto r = s.call(Method::kStoreGc, params);
                 return r ? s.print(*r,
                                    [&](std::ostream& out, const Json& result) {
                                      render_store_gc(out, *name, result);
                                    })
                          : s.status();
               });
  c->add_option("name", *name, "Store name")->required();
  c->add_flag("--dry-run", *gc_dry_run, "Only list the orphans");
}

}  // namespace ublkvol::cli
