#include "table.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "size.h"

namespace ublkvol::cli {

Table::Table(std::vector<Column> columns) : columns_(std::move(columns)) {}

void Table::add_row(std::vector<std::string> cells) {
  cells.resize(columns_.size());
  for (auto& cell : cells) {
    if (cell.empty()) {
      cell.assign(1, '-');  // not = "-": GCC 12 -Wrestrict false positive
    }
  }
  rows_.push_back(std::move(cells));
}

void Table::print(std::ostream& out, size_t indent) const {
  std::vector<size_t> widths(columns_.size());
  for (size_t c = 0; c < columns_.size(); ++c) {
    widths[c] = columns_[c].header.size();
    for (const auto& row : rows_) {
      widths[c] = std::max(widths[c], row[c].size());
    }
  }
  auto print_row = [&](auto cell_of) {
    std::string line(indent, ' ');
    for (size_t c = 0; c < columns_.size(); ++c) {
      const std::string& cell = cell_of(c);
      const size_t pad = widths[c] - cell.size();
      const bool last = c + 1 == columns_.size();
      if (columns_[c].align == Align::kRight) {
        line.append(pad, ' ').append(cell);
      } else {
        line.append(cell);
        if (!last) {
          line.append(pad, ' ');
        }
      }
      if (!last) {
        line.append("  ");
      }
    }
    out << line << '\n';
  };
  print_row([&](size_t c) -> const std::string& { return columns_[c].header; });
  for (const auto& row : rows_) {
    print_row([&](size_t c) -> const std::string& { return row[c]; });
  }
}

std::string format_fixed(double value, int decimals) {
  char buffer[64];
  (void)std::snprintf(buffer, sizeof(buffer), "%.*f", decimals, value);
  return buffer;
}

std::string format_rate(double bytes_per_second) {
  if (!(bytes_per_second > 0)) {
    return "0B/s";
  }
  if (bytes_per_second < 1024) {
    return format_fixed(bytes_per_second, 0) + "B/s";
  }
  return format_size(static_cast<uint64_t>(std::llround(bytes_per_second))) + "/s";
}

std::string format_duration(double seconds) {
  if (seconds < 0 || !std::isfinite(seconds)) {
    return "-";
  }
  const auto s = static_cast<uint64_t>(std::llround(seconds));
  char buffer[64];
  if (s < 60) {
    (void)std::snprintf(buffer, sizeof(buffer), "%llus", static_cast<unsigned long long>(s));
  } else if (s < 3600) {
    (void)std::snprintf(buffer, sizeof(buffer), "%llum%02llus",
                        static_cast<unsigned long long>(s / 60),
                        static_cast<unsigned long long>(s % 60));
  } else {
    (void)std::snprintf(buffer, sizeof(buffer), "%lluh%02llum",
                        static_cast<unsigned long long>(s / 3600),
                        static_cast<unsigned long long>((s % 3600) / 60));
  }
  return buffer;
}

std::string format_latency_ns(double nanoseconds) {
  if (nanoseconds < 1000) {
    return format_fixed(nanoseconds, 0) + "ns";
  }
  if (nanoseconds < 1e6) {
    return format_fixed(nanoseconds / 1e3, nanoseconds < 1e5 ? 1 : 0) + "us";
  }
  if (nanoseconds < 1e9) {
    return format_fixed(nanoseconds / 1e6, 2) + "ms";
  }
  return format_fixed(nanoseconds / 1e9, 2) + "s";
}

}  // namespace ublkvol::cli
