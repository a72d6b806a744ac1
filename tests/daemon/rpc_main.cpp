// ublkvol-daemon-rpc: sends one control request to ublk-volumed and prints the
// result, for the daemon's VM tests (the operator's tool is `ublk-volume`).
//
//   ublkvol-daemon-rpc [--socket PATH] METHOD ['{"json":"params"}']
//
// Prints the result object as one JSON line. Exit 0 ok; 1 the daemon refused
// (prints "CODE: message" to stderr); 2 no daemon / transport failure or bad
// arguments.
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>

#include "ublkvol/daemon/client.h"

int main(int argc, char** argv) try {
  using namespace ublkvol::daemon;
  std::string socket = kDefaultSocketPath;
  int arg = 1;
  if (arg + 1 < argc && std::strcmp(argv[arg], "--socket") == 0) {
    socket = argv[arg + 1];
    arg += 2;
  }
  if (arg >= argc || arg + 2 < argc) {
    (void)std::fprintf(stderr, "usage: ublkvol-daemon-rpc [--socket PATH] METHOD [JSON_PARAMS]\n");
    return 2;
  }
  const std::string method = argv[arg];
  Json params = Json::object();
  if (arg + 1 < argc) {
    params = Json::parse(argv[arg + 1], nullptr, false);
    if (params.is_discarded()) {
      (void)std::fprintf(stderr, "ublkvol-daemon-rpc: params are not valid JSON\n");
      return 2;
    }
  }
  auto client = Client::connect(socket);
  if (!client.ok()) {
    (void)std::fprintf(stderr, "ublkvol-daemon-rpc: %s\n", client.error().message().c_str());
    return 2;
  }
  auto response = client->call(method, params);
  if (!response.ok()) {
    (void)std::fprintf(stderr, "ublkvol-daemon-rpc: %s\n", response.error().message().c_str());
    return 2;
  }
  if (!response->ok) {
    (void)std::fprintf(stderr, "%s: %s\n", std::string(to_string(response->code)).c_str(),
                       response->message.c_str());
    return 1;
  }
  (void)std::printf("%s", to_line(response->result).c_str());
  return 0;
} catch (const std::exception& e) {
  // Out of memory or a JSON library error: still "transport failure" for
  // the calling test, with the cause.
  (void)std::fprintf(stderr, "ublkvol-daemon-rpc: %s\n", e.what());
  return 2;
}
