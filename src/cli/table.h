// Human output: aligned text tables and small number formatters.
//
// Every list command prints one Table: a header row in capitals, then one
// row per object, columns separated by two spaces and padded to the widest
// cell, so the output reads well and `awk '{print $1}'` still works. Empty
// cells print as "-". Scripts should use --json instead of parsing this.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

namespace ublkvol::cli {

class Table {
 public:
  enum class Align { kLeft, kRight };
  struct Column {
    std::string header;
    Align align = Align::kLeft;
  };

  explicit Table(std::vector<Column> columns);

  // A row with one cell per column (missing cells print as "-").
  void add_row(std::vector<std::string> cells);
  [[nodiscard]] size_t rows() const { return rows_.size(); }

  // Writes header + rows; `indent` spaces before every line.
  void print(std::ostream& out, size_t indent = 0) const;

 private:
  std::vector<Column> columns_;
  std::vector<std::vector<std::string>> rows_;
};

// "12.3" style fixed-point with `decimals` places.
std::string format_fixed(double value, int decimals);
// Bytes per second as "120.5M/s" (binary units, like format_size).
std::string format_rate(double bytes_per_second);
// Seconds as "45s", "3m05s", "2h01m", "-" when unknown (negative).
std::string format_duration(double seconds);
// Nanoseconds as "850ns", "12.3us", "4.56ms", "1.20s".
std::string format_latency_ns(double nanoseconds);

}  // namespace ublkvol::cli
