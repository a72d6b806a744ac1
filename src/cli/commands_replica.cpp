// ublk-volume replica list/add/remove/rebuild/verify/fail.
#include <memory>
#include <string>
#include <vector>

#include "commands.h"
#include "render.h"

namespace ublkvol::cli {

void add_replica_commands(CLI::App& app, CommandTree& tree) {
  CLI::App* replica = app.add_subcommand("replica", "Inspect and repair a volume's replicas");
  replica->require_subcommand(1);
  replica->footer(
      "Replace a failed replica:\n"
      "  ublk-volume replica list vol0\n"
      "  ublk-volume replica remove vol0 1\n"
      "  ublk-volume replica add vol0 s3 --wait\n"
      "A replica on another host (its daemon: ublk-volume volume export ... --tls-psk F):\n"
      "  ublk-volume replica add vol0 nbds://alice@hostB:10809/vol0r --tls-psk F --wait\n");

  struct Args {
    std::string volume, store, reason;
    std::string tls_psk;  // replica add with a URI
    bool insecure_plain = false;
    uint64_t index = 0;
    bool wait = false;
    bool force = false;
    bool repair = false;
    double rate = -1;  // replica verify --rate (MiB/s); < 0: the daemon's default
    double timeout = 0;
  };
  auto a = std::make_shared<Args>();
  auto add_wait = [a](CLI::App* c) {
    c->add_flag("-w,--wait", a->wait, "Wait until the replica is in sync, showing progress");
    c->add_option("--timeout", a->timeout, "With --wait: give up after this many seconds (exit 1)");
  };

  CLI::App* c = tree.add(replica, "list", Method::kReplicaList, "  ublk-volume replica list vol0\n",
                         [a](Session& s) {
                           auto r = s.call(Method::kReplicaList, {{"volume", a->volume}});
                           if (!r) {
                             return s.status();
                           }
                           return s.print(*r, [](std::ostream& out, const Json& result) {
                             render_replica_list(out, result.at("replicas"));
                           });
                         });
  c->add_option("volume", a->volume, "Volume name")->required();

  c = tree.add(replica, "add", Method::kReplicaAdd,
               "  ublk-volume replica add vol0 s3 --wait\n"
               "  ublk-volume replica add vol0 nbds://alice@hostB:10809/vol0r \\\n"
               "      --tls-psk /etc/ublk-volumed/nbd.psk --wait\n",
               [a](Session& s) {
                 const bool remote = is_remote_target(a->store);
                 Json params = {{"volume", a->volume}};
                 if (remote) {
                   add_remote_params(params, "uri", a->store, a->tls_psk, a->insecure_plain);
                 } else {
                   params["store"] = a->store;
                 }
                 auto r = s.call(Method::kReplicaAdd, params);
                 if (!r) {
                   return s.status();
                 }
                 const uint64_t index = r->value("index", uint64_t{0});
                 if (a->wait) {
                   return wait_for_replica(s, a->volume, index, a->timeout);
                 }
                 return s.done(*r, "added replica " + std::to_string(index) + " of volume '" +
                                       a->volume + "' on " + (remote ? "" : "store ") + "'" +
                                       a->store +
                                       "' (rebuilding; follow it with: ublk-volume volume show " +
                                       a->volume + ")");
               });
  c->add_option("volume", a->volume, "Volume name")->required();
  c->add_option("target", a->store,
                "Store for the new replica, or an NBD URI (a replica on another host's export)")
      ->required();
  add_remote_options(c, a->store, a->tls_psk, a->insecure_plain, "");
  add_wait(c);

  c = tree.add(
      replica, "remove", Method::kReplicaRemove, "  ublk-volume replica remove vol0 1\n",
      [a](Session& s) {
        auto r = s.call(Method::kReplicaRemove, {{"volume", a->volume}, {"index", a->index}});
        return r ? s.done(*r, "removed replica " + std::to_string(a->index) + " of volume '" +
                                  a->volume + "'")
                 : s.status();
      });
  c->add_option("volume", a->volume, "Volume name")->required();
  c->add_option("index", a->index, "Replica index (see replica list)")
      ->required()
      ->check(CLI::NonNegativeNumber);

  auto rp = std::make_shared<Args>();
  c = tree.add(replica, "replace", Method::kReplicaReplace,
               "  ublk-volume replica replace vol0 1 nbds://alice@hostC:10809/vol0r \\\n"
               "      --tls-psk /etc/ublk-volumed/nbd.psk --wait\n",
               [rp, a](Session& s) {
                 Json params = {{"volume", rp->volume}, {"index", rp->index}};
                 add_remote_params(params, "uri", rp->store, rp->tls_psk, rp->insecure_plain);
                 auto r = s.call(Method::kReplicaReplace, params);
                 if (!r) {
                   return s.status();
                 }
                 const uint64_t index = r->value("index", uint64_t{0});
                 if (a->wait) {
                   return wait_for_replica(s, rp->volume, index, a->timeout);
                 }
                 return s.done(*r, "replaced replica " + std::to_string(rp->index) +
                                       " of volume '" + rp->volume + "' by " + rp->store +
                                       " (replica " + std::to_string(index) +
                                       ", rebuilding; follow it with: ublk-volume volume show " +
                                       rp->volume + ")");
               });
  c->add_option("volume", rp->volume, "Volume name")->required();
  c->add_option("index", rp->index, "Replica index to replace (see replica list)")
      ->required()
      ->check(CLI::NonNegativeNumber);
  c->add_option("uri", rp->store, "NBD URI of the new replica (another host's export)")->required();
  add_remote_options(c, rp->store, rp->tls_psk, rp->insecure_plain, "");
  add_wait(c);

  c = tree.add(
      replica, "rebuild", Method::kReplicaRebuild, "  ublk-volume replica rebuild vol0 1 --wait\n",
      [a](Session& s) {
        auto r = s.call(Method::kReplicaRebuild, {{"volume", a->volume}, {"index", a->index}});
        if (!r) {
          return s.status();
        }
        if (a->wait) {
          return wait_for_replica(s, a->volume, a->index, a->timeout);
        }
        return s.done(*r, "rebuilding replica " + std::to_string(a->index) + " of volume '" +
                              a->volume + "' (follow it with: ublk-volume volume show " +
                              a->volume + ")");
      });
  c->add_option("volume", a->volume, "Volume name")->required();
  c->add_option("index", a->index, "Replica index (see replica list)")
      ->required()
      ->check(CLI::NonNegativeNumber);
  add_wait(c);

  c = tree.add(
      replica, "verify", Method::kReplicaVerify,
      "  ublk-volume replica verify vol0 --wait\n"
      "  ublk-volume replica verify vol0 --repair --rate 100 --wait\n",
      [a](Session& s) {
        auto before = s.call(Method::kVolumeShow, {{"name", a->volume}});
        if (!before) {
          return s.status();
        }
        const uint64_t runs = before->value("verify", Json::object()).value("runs", uint64_t{0});
        Json params = {{"volume", a->volume}, {"repair", a->repair}};
        if (a->rate >= 0) {
          params["rate"] = static_cast<uint64_t>(a->rate);
        }
        auto r = s.call(Method::kReplicaVerify, params);
        if (!r) {
          return s.status();
        }
        if (a->wait) {
          return wait_for_verify(s, a->volume, runs, a->timeout);
        }
        return s.done(*r, std::string(a->repair ? "verify + repair" : "verify") + " of volume '" +
                              a->volume + "' started (follow it with: ublk-volume volume show " +
                              a->volume + ")");
      });
  c->add_option("volume", a->volume, "Volume name")->required();
  c->add_flag("--repair", a->repair,
              "Rewrite blocks that differ on the replicas that disagree with a strict majority "
              "(with 2 replicas nothing is guessed: reported, not repaired)");
  c->add_option("--rate", a->rate,
                "Throttle in MiB/s (0 = unthrottled; default: the daemon's scrub_mb_per_s)")
      ->check(CLI::NonNegativeNumber);
  c->add_flag("-w,--wait", a->wait,
              "Wait for the result, showing progress; exit 1 if differences remain");
  c->add_option("--timeout", a->timeout, "With --wait: give up after this many seconds (exit 1)");

  c = tree.add(replica, "fail", Method::kReplicaFail,
               "  ublk-volume replica fail vol0 1 --reason 'disk replacement'\n", [a](Session& s) {
                 Json params = {{"volume", a->volume}, {"index", a->index}};
                 if (!a->reason.empty()) {
                   params["reason"] = a->reason;
                 }
                 if (a->force) {
                   params["force"] = true;
                 }
                 auto r = s.call(Method::kReplicaFail, params);
                 return r ? s.done(*r, "failed replica " + std::to_string(a->index) +
                                           " of volume '" + a->volume + "'")
                          : s.status();
               });
  c->add_option("volume", a->volume, "Volume name")->required();
  c->add_option("index", a->index, "Replica index (see replica list)")
      ->required()
      ->check(CLI::NonNegativeNumber);
  c->add_option("--reason", a->reason, "Why (kept in the volume's events)");
  c->add_flag("--force", a->force,
              "Fail it even if fewer than min_replicas replicas stay in sync (the volume goes "
              "offline: I/O fails until a replica is rebuilt)");
}

}  // namespace ublkvol::cli
