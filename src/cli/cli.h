// ublk-volume's command tree and its dispatcher.
//
// run_cli() is main() without the process: it parses argv with CLI11, talks
// to the daemon through the ClientFactory it is given and writes to the
// given streams, then returns the exit status (exit_code.h). main.cpp passes
// the real socket client, std::cout/std::cerr and a real sleep; tests pass a
// fake daemon and string streams.
#pragma once

#include <functional>
#include <ostream>

#include "control_client.h"

namespace ublkvol::cli {

struct CliEnvironment {
  std::ostream& out;
  std::ostream& err;
  bool stdout_is_tty = false;
  ClientFactory connect;
  // Waits between two stats samples and between two progress polls.
  std::function<void(double seconds)> sleep;
};

int run_cli(int argc, const char* const* argv, const CliEnvironment& env);

// The bash completion script (packaging/completion/ublk-volume.bash, built
// into the binary so `ublk-volume completion bash` always matches it).
extern const char* const kBashCompletionScript;

}  // namespace ublkvol::cli
