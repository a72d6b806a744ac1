// ublk-volume snapshot create/list/delete/revert/clone.
#include <memory>
#include <string>
#include <vector>

#include "commands.h"
#include "render.h"

namespace ublkvol::cli {

void add_snapshot_commands(CLI::App& app, CommandTree& tree) {
  CLI::App* snapshot = app.add_subcommand("snapshot", "Manage snapshots and clones of a volume");
  snapshot->require_subcommand(1);
  snapshot->footer(
      "Examples:\n"
      "  ublk-volume snapshot create vol0 before-upgrade\n"
      "  ublk-volume snapshot clone vol0 before-upgrade vol0-test\n");

  struct Args {
    std::string volume, name, clone;
  };
  auto a = std::make_shared<Args>();
  auto volume_and_name = [a](CLI::App* c) {
    c->add_option("volume", a->volume, "Volume name")->required();
    c->add_option("name", a->name, "Snapshot name")->required();
  };

  volume_and_name(tree.add(
      snapshot, "create", Method::kSnapshotCreate,
      "  ublk-volume snapshot create vol0 nightly-2026-11-21\n", [a](Session& s) {
        auto r = s.call(Method::kSnapshotCreate, {{"volume", a->volume}, {"name", a->name}});
        return r ? s.done(*r, "created snapshot '" + a->name + "' of volume '" + a->volume + "'")
                 : s.status();
      }));

  CLI::App* c = tree.add(
      snapshot, "list", Method::kSnapshotList, "  ublk-volume snapshot list vol0\n",
      [a](Session& s) {
        return s.show(Method::kSnapshotList, {{"volume", a->volume}}, render_snapshot_list);
      });
  c->add_option("volume", a->volume, "Volume name")->required();

  volume_and_name(tree.add(
      snapshot, "delete", Method::kSnapshotDelete,
      "  ublk-volume snapshot delete vol0 nightly-2026-11-21\n", [a](Session& s) {
        auto r = s.call(Method::kSnapshotDelete, {{"volume", a->volume}, {"name", a->name}});
        return r ? s.done(*r, "deleted snapshot '" + a->name + "' of volume '" + a->volume + "'")
                 : s.status();
      }));

  volume_and_name(tree.add(
      snapshot, "revert", Method::kSnapshotRevert,
      "  ublk-volume volume unexpose vol0\n  ublk-volume snapshot revert vol0 before-upgrade\n",
      [a](Session& s) {
        auto r = s.call(Method::kSnapshotRevert, {{"volume", a->volume}, {"name", a->name}});
        return r ? s.done(*r, "reverted volume '" + a->volume + "' to snapshot '" + a->name + "'")
                 : s.status();
      }));

  c = tree.add(snapshot, "clone", Method::kSnapshotClone,
               "  ublk-volume snapshot clone vol0 before-upgrade vol0-test\n", [a](Session& s) {
                 auto r =
                     s.call(Method::kSnapshotClone,
                            {{"volume", a->volume}, {"snapshot", a->name}, {"clone", a->clone}});
                 return r ? s.done(*r, "cloned snapshot '" + a->name + "' of volume '" + a->volume +
                                           "' as volume '" + a->clone + "'")
                          : s.status();
               });
  c->add_option("volume", a->volume, "Volume name")->required();
  c->add_option("snapshot", a->name, "Snapshot name")->required();
  c->add_option("clone", a->clone, "Name of the new volume")->required();
}

}  // namespace ublkvol::cli
