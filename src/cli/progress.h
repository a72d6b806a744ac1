// Progress of long operations (replica rebuilds) on the terminal.
//
// On a TTY one line is redrawn in place:
//   rebuild vol0 replica 2  [##########----------]  50.0%  120.0M/s  ETA 12s
// When stdout is a pipe or a file (scripts, CI logs) the carriage-return
// trick would garble the output, so plain lines are printed instead: one at
// the start, one each time another 10% is done, and the final one.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>

namespace ublkvol::cli {

struct Progress {
  double percent = 0;            // 0..100
  double bytes_per_second = -1;  // < 0: unknown
  double eta_seconds = -1;       // < 0: unknown
};

// "[#####---------------]  25.0%  120.0M/s  ETA 12s" with a bar of `width`
// cells; rate and ETA print as "-" when unknown.
std::string render_progress(const Progress& progress, size_t width = 30);

class ProgressReporter {
 public:
  // `label` prefixes every line ("rebuild vol0 replica 2").
  ProgressReporter(std::ostream& out, bool tty, std::string label);

  void update(const Progress& progress);
  // Ends the line (TTY) and prints `message` ("done", "failed: ...").
  void finish(const std::string& message);

 private:
  std::ostream& out_;
  bool tty_;
  std::string label_;
  int last_decile_ = -1;   // plain mode: last 10% step printed
  size_t last_width_ = 0;  // TTY mode: length of the line on screen
};

}  // namespace ublkvol::cli
