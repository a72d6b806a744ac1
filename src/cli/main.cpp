// ublk-volume: the operator's command-line interface to ublk-volumed.
// Everything but the process plumbing lives in cli.cpp (run_cli).
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <iostream>
#include <thread>

#include "cli.h"

int main(int argc, char** argv) {
  // A closed pipe (`ublk-volume stats --watch | head`) ends the program with
  // EPIPE on write instead of killing it mid-line.
  (void)std::signal(SIGPIPE, SIG_IGN);
  const ublkvol::cli::CliEnvironment env{
      .out = std::cout,
      .err = std::cerr,
      .stdout_is_tty = ::isatty(STDOUT_FILENO) == 1,
      .connect = ublkvol::cli::connect_to_daemon,
      .sleep =
          [](double seconds) {
            std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
          },
  };
  return ublkvol::cli::run_cli(argc, argv, env);
}
