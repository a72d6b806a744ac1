#include "progress.h"

#include <algorithm>
#include <cmath>

#include "table.h"

namespace ublkvol::cli {

std::string render_progress(const Progress& progress, size_t width) {
  const double percent = std::clamp(progress.percent, 0.0, 100.0);
  const auto filled = static_cast<size_t>(std::floor(percent / 100.0 * static_cast<double>(width)));
  std::string line = "[";
  line.append(filled, '#').append(width - filled, '-').append("]  ");
  std::string p = format_fixed(percent, 1) + "%";
  line.append(6 - std::min<size_t>(6, p.size()), ' ').append(p);
  line.append("  ").append(progress.bytes_per_second < 0 ? "-"
                                                         : format_rate(progress.bytes_per_second));
  line.append("  ETA ").append(format_duration(progress.eta_seconds));
  return line;
}

ProgressReporter::ProgressReporter(std::ostream& out, bool tty, std::string label)
    : out_(out), tty_(tty), label_(std::move(label)) {}

void ProgressReporter::update(const Progress& progress) {
  const std::string line = label_ + "  " + render_progress(progress);
  if (tty_) {
    // Redraw in place; pad with spaces when the new line is shorter.
    out_ << '\r' << line;
    if (line.size() < last_width_) {
      out_ << std::string(last_width_ - line.size(), ' ');
    }
    last_width_ = line.size();
    out_.flush();
    return;
  }
  const int decile = static_cast<int>(std::clamp(progress.percent, 0.0, 100.0) / 10.0);
  if (decile != last_decile_) {
    out_ << line << '\n';
    out_.flush();
    last_decile_ = decile;
  }
}

void ProgressReporter::finish(const std::string& message) {
  if (tty_ && last_width_ > 0) {
    out_ << '\n';
  }
  out_ << label_ << ": " << message << '\n';
  out_.flush();
}

}  // namespace ublkvol::cli
