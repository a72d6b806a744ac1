// The options that name a remote replica (an NBD export, docs/nbd.md):
// volume create --remote URI and replica add/replace VOLUME URI, each with
// --tls-psk FILE and --insecure-plain.
#include <filesystem>
#include <string>

#include "commands.h"

namespace ublkvol::cli {

void add_remote_options(CLI::App* c, std::string& uri, std::string& tls_psk, bool& insecure_plain,
                        const std::string& uri_option) {
  if (!uri_option.empty()) {
    c->add_option(uri_option, uri,
                  "A replica on an NBD export: nbds://[USER@]HOST[:PORT]/EXPORT (TLS), "
                  "nbd+unix:///EXPORT?socket=PATH, nbd://... only with --insecure-plain");
  }
  c->add_option(
      "--tls-psk,--psk-file", tls_psk,
      "TLS pre-shared keys for an nbds:// remote replica: a file of username:hexkey "
      "lines (the USER of the URI picks the key; the daemon keeps the path, not the key)");
  c->add_flag("--insecure-plain", insecure_plain,
              "Allow a plain nbd:// remote replica over TCP: no authentication, no encryption");
}

bool is_remote_target(const std::string& target) { return target.find("://") != std::string::npos; }

void add_remote_params(Json& params, const std::string& key, const std::string& uri,
                       const std::string& tls_psk, bool insecure_plain) {
  if (uri.empty()) {
    return;
  }
  params[key] = uri;
  if (!tls_psk.empty()) {
    // The daemon reads the file from its own working directory: send an absolute path.
    params["tls_psk"] = std::filesystem::absolute(tls_psk).lexically_normal().string();
  }
  if (insecure_plain) {
    params["insecure_plain"] = true;
  }
}

}  // namespace ublkvol::cli
