// ublk-volume volume create/import/list/show/delete/expose/unexpose/resize/open.
#include <memory>
#include <string>
#include <vector>

#include "commands.h"
#include "render.h"

namespace ublkvol::cli {

void add_volume_commands(CLI::App& app, CommandTree& tree) {
  CLI::App* volume = app.add_subcommand("volume", "Manage volumes: replicated block devices");
  volume->require_subcommand(1);
  volume->footer(
      "Examples:\n"
      "  ublk-volume volume create vol0 --size 10G --store s0 s1 s2\n"
      "  ublk-volume volume expose vol0          # -> /dev/ublkbN\n"
      "  ublk-volume volume show vol0\n");

  struct CreateArgs {
    std::string name, size;
    std::vector<std::string> stores;
    uint64_t min_replicas = 0;
    std::string remote, tls_psk;  // a replica on an NBD export (docs/nbd.md)
    bool insecure_plain = false;
  };
  auto create = std::make_shared<CreateArgs>();
  CLI::App* c = tree.add(
      volume, "create", Method::kVolumeCreate,
      "  ublk-volume volume create vol0 --size 10G --store s0 s1 s2\n"
      "  ublk-volume volume create db --size 1.5T --store s0,s1 --min-replicas 1\n"
      "  ublk-volume volume create vol1 --size 10G --store s0 \\\n"
      "      --remote nbds://alice@hostB:10809/vol1r --tls-psk /etc/ublk-volumed/nbd.psk\n",
      [create](Session& s) {
        auto size = size_argument(s, create->size, "--size");
        if (!size) {
          return ExitCode::kUsage;
        }
        Json params = {{"name", create->name}, {"size", *size}, {"stores", create->stores}};
        if (create->min_replicas > 0) {
          params["min_replicas"] = create->min_replicas;
        }
        add_remote_params(params, "remote", create->remote, create->tls_psk,
                          create->insecure_plain);
        auto r = s.call(Method::kVolumeCreate, params);
        if (!r) {
          return s.status();
        }
        return s.done(*r, "created volume '" + create->name + "' (" + format_size(*size) + ", " +
                              std::to_string(create->stores.size()) + " replica(s) on " +
                              join(create->stores) +
                              (create->remote.empty() ? "" : " + remote " + create->remote) + ")");
      });
  c->add_option("name", create->name, "Volume name")->required();
  c->add_option("-s,--size", create->size, "Size, e.g. 10G, 512M, 1.5T (multiple of 4K)")
      ->required();
  c->add_option("--store", create->stores, "Stores for the replicas (1 to 4, distinct)")
      ->required()
      ->delimiter(',');
  c->add_option("--min-replicas", create->min_replicas,
                "Replicas that must stay in sync for the volume to stay online "
                "(default: the daemon's config)")
      ->check(CLI::PositiveNumber);
  add_remote_options(c, create->remote, create->tls_psk, create->insecure_plain, "--remote");

  auto adopt = std::make_shared<CreateArgs>();
  c = tree.add(volume, "import", Method::kVolumeImport,
               "  ublk-volume volume import vol0 --store s0 s1\n", [adopt](Session& s) {
                 Json params = {{"name", adopt->name}, {"stores", adopt->stores}};
                 if (adopt->min_replicas > 0) {
                   params["min_replicas"] = adopt->min_replicas;
                 }
                 auto r = s.call(Method::kVolumeImport, params);
                 if (!r) {
                   return s.status();
                 }
                 return s.done(*r, "imported volume '" + adopt->name + "' (" +
                                       format_size(r->value("size_bytes", uint64_t{0})) + ", " +
                                       std::to_string(adopt->stores.size()) + " replica(s) on " +
                                       join(adopt->stores) + ")");
               });
  c->add_option("name", adopt->name, "Name of the orphan replicas (becomes the volume name)")
      ->required();
  c->add_option("--store", adopt->stores, "Stores holding the replicas (1 to 4)")
      ->required()
      ->delimiter(',');
  c->add_option("--min-replicas", adopt->min_replicas,
                "Replicas that must stay in sync (default: the daemon's config)")
      ->check(CLI::PositiveNumber);

  tree.add(volume, "list", Method::kVolumeList, "  ublk-volume volume list\n", [](Session& s) {
    return s.show(Method::kVolumeList, Json::object(), render_volume_list);
  });

  auto name = std::make_shared<std::string>();
  c = tree.add(volume, "show", Method::kVolumeShow, "  ublk-volume volume show vol0\n",
               [name](Session& s) {
                 return s.show(Method::kVolumeShow, {{"name", *name}}, render_volume);
               });
  c->add_option("name", *name, "Volume name")->required();

  c = tree.add(volume, "delete", Method::kVolumeDelete,
               "  ublk-volume volume unexpose vol0 && ublk-volume volume delete vol0\n",
               [name](Session& s) {
                 auto r = s.call(Method::kVolumeDelete, {{"name", *name}});
                 return r ? s.done(*r, "deleted volume '" + *name + "'") : s.status();
               });
  c->add_option("name", *name, "Volume name")->required();

  struct ExposeArgs {
    std::string name;
    uint64_t queues = 0, queue_depth = 0;
  };
  auto expose = std::make_shared<ExposeArgs>();
  c = tree.add(volume, "expose", Method::kVolumeExpose,
               "  ublk-volume volume expose vol0\n"
               "  ublk-volume volume expose vol0 --queues 4 --queue-depth 128\n",
               [expose](Session& s) {
                 Json params = {{"name", expose->name}};
                 if (expose->queues > 0) {
                   params["queues"] = expose->queues;
                 }
                 if (expose->queue_depth > 0) {
                   params["queue_depth"] = expose->queue_depth;
                 }
                 auto r = s.call(Method::kVolumeExpose, params);
                 if (!r) {
                   return s.status();
                 }
                 std::string path = "?";
                 if (auto d = r->find("device"); d != r->end() && d->is_object()) {
                   path = d->value("path", "?");
                 }
                 return s.done(*r, "exposed volume '" + expose->name + "' as " + path);
               });
  c->add_option("name", expose->name, "Volume name")->required();
  c->add_option("--queues", expose->queues, "Hardware queues (default: the daemon's config)")
      ->check(CLI::PositiveNumber);
  c->add_option("--queue-depth", expose->queue_depth,
                "Requests in flight per queue (default: the daemon's config)")
      ->check(CLI::PositiveNumber);

  c = tree.add(volume, "unexpose", Method::kVolumeUnexpose,
               "  umount /mnt/vol0 && ublk-volume volume unexpose vol0\n", [name](Session& s) {
                 auto r = s.call(Method::kVolumeUnexpose, {{"name", *name}});
                 return r ? s.done(*r, "unexposed volume '" + *name + "'") : s.status();
               });
  c->add_option("name", *name, "Volume name")->required();

  struct ResizeArgs {
    std::string name, size;
  };
  auto resize = std::make_shared<ResizeArgs>();
  c = tree.add(volume, "resize", Method::kVolumeResize, "  ublk-volume volume resize vol0 20G\n",
               [resize](Session& s) {
                 auto size = size_argument(s, resize->size, "SIZE");
                 if (!size) {
                   return ExitCode::kUsage;
                 }
                 auto r = s.call(Method::kVolumeResize, {{"name", resize->name}, {"size", *size}});
                 if (!r) {
                   return s.status();
                 }
                 return s.done(*r,
                               "resized volume '" + resize->name + "' to " + format_size(*size));
               });
  c->add_option("name", resize->name, "Volume name")->required();
  c->add_option("size", resize->size, "New size, e.g. 20G")->required();

  struct OpenArgs {
    std::string name;
    bool accept_data_loss = false;
  };
  auto open = std::make_shared<OpenArgs>();
  c = tree.add(volume, "open", Method::kVolumeOpen,
               "  ublk-volume volume open vol0                     # its missing store is back\n"
               "  ublk-volume volume open vol0 --accept-data-loss  # without the missing replica\n",
               [open](Session& s) {
                 Json params = {{"name", open->name}};
                 if (open->accept_data_loss) {
                   params["accept_data_loss"] = true;
                 }
                 auto r = s.call(Method::kVolumeOpen, params);
                 return r ? s.done(*r, "opened volume '" + open->name + "'") : s.status();
               });
  c->add_option("name", open->name, "Volume name")->required();
  c->add_flag("--accept-data-loss", open->accept_data_loss,
              "Open without the missing replicas even if they may hold newer acknowledged "
              "writes: those writes are lost, the replicas leave the volume");
}

}  // namespace ublkvol::cli
