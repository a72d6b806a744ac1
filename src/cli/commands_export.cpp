// ublk-volume volume export/unexport: a volume served over NBD
// (docs/nbd-export.md).
#include <filesystem>
#include <memory>
#include <string>

#include "commands.h"
#include "render.h"

namespace ublkvol::cli {

namespace {
// The daemon reads TLS files from its own working directory: send absolute paths.
std::string absolute(const std::string& path) {
  return path.empty() ? path : std::filesystem::absolute(path).lexically_normal().string();
}
}  // namespace

void add_export_commands(CLI::App& app, CommandTree& tree) {
  CLI::App* volume = app.get_subcommand("volume");
  struct ExportArgs {
    std::string name, listen, psk, cert, key, ca;
    bool insecure_plain = false;
    uint64_t max_connections = 0;
  };
  auto args = std::make_shared<ExportArgs>();
  CLI::App* c = tree.add(
      volume, "export", Method::kVolumeExport,
      "  ublk-volume volume export vol0 --listen 0.0.0.0:10809 --tls-psk "
      "/etc/ublk-volumed/nbd.psk\n"
      "  ublk-volume volume export vol0 --listen [::]:10809 --tls-cert server-cert.pem \\\n"
      "      --tls-key server-key.pem --tls-ca clients-ca.pem\n"
      "  ublk-volume volume export vol0 --listen unix:/run/ublk-volumed/vol0.nbd\n"
      "  nbdinfo 'nbds://alice@hostB:10809/vol0?tls-psk-file=/etc/nbd.psk'   # from host A\n",
      [args](Session& s) {
        Json params = {{"name", args->name}, {"listen", args->listen}};
        if (!args->psk.empty()) {
          params["tls_psk"] = absolute(args->psk);
        }
        if (!args->cert.empty()) {
          params["tls_cert"] = absolute(args->cert);
        }
        if (!args->key.empty()) {
          params["tls_key"] = absolute(args->key);
        }
        if (!args->ca.empty()) {
          params["tls_ca"] = absolute(args->ca);
        }
        if (args->insecure_plain) {
          params["insecure_plain"] = true;
        }
        if (args->max_connections > 0) {
          params["max_connections"] = args->max_connections;
        }
        auto r = s.call(Method::kVolumeExport, params);
        if (!r) {
          return s.status();
        }
        std::string address = args->listen;
        if (auto e = r->find("export"); e != r->end() && e->is_object()) {
          address = e->value("address", address);
        }
        return s.done(*r, "exported volume '" + args->name + "' over NBD on " + address);
      });
  c->add_option("name", args->name, "Volume name (also the NBD export name)")->required();
  c->add_option("--listen", args->listen,
                "HOST:PORT, [IPV6]:PORT or unix:/path (10809 is NBD's port)")
      ->required();
  c->add_option("--tls-psk", args->psk,
                "TLS pre-shared keys: a file of username:hexkey lines (nbdkit's format)");
  c->add_option("--tls-cert", args->cert, "TLS: the server's certificate (PEM)");
  c->add_option("--tls-key", args->key, "TLS: the server certificate's key (PEM)");
  c->add_option("--tls-ca", args->ca,
                "TLS: the CA (PEM) that every client certificate must chain to");
  c->add_flag(
      "--insecure-plain", args->insecure_plain,
      "Serve plain TCP: no authentication, no encryption (TLS is required on TCP otherwise)");
  c->add_option("--max-connections", args->max_connections, "Clients served at once (default 16)")
      ->check(CLI::Range(1, 1024));

  auto name = std::make_shared<std::string>();
  c = tree.add(volume, "unexport", Method::kVolumeUnexport, "  ublk-volume volume unexport vol0\n",
               [name](Session& s) {
                 auto r = s.call(Method::kVolumeUnexport, {{"name", *name}});
                 return r ? s.done(*r, "unexported volume '" + *name + "'") : s.status();
               });
  c->add_option("name", *name, "Volume name")->required();
}

}  // namespace ublkvol::cli
