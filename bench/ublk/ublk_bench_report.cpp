// Reads the console log of bench/ublk/guest_bench.sh and prints the ublk
// frontend benchmark: per job and target, IOPS, bandwidth, CPU time per I/O
// (whole VM, and the ublk server process alone), and the ratios against fio
// on the tmpfs file directly. Targets: null, memory, dbs1 / dbs1-wb
// (replicated engine, one DBS replica in a tmpfs store file, write-through /
// write-back), tmpfs. Ratios are the figures that mean something: the
// VM is emulated (TCG), so absolute values are 10-20x off.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

namespace {

struct Sample {
  std::string job;
  std::string target;
  bool direct = true;
  double iops = 0;
  double mib_s = 0;
  double cpu_us_per_io = 0;
  double server_cpu_us_per_io = 0;  // 0 for the tmpfs target (no server)
};

// "@@bench job=x target=y k=v ...@@" -> key/value map.
std::map<std::string, std::string> parse_fields(const std::string& line) {
  std::map<std::string, std::string> fields;
  const auto begin = line.find("@@bench ");
  const auto end = line.rfind("@@");
  if (begin == std::string::npos || end == std::string::npos || end <= begin + 8) {
    return fields;
  }
  std::istringstream words(line.substr(begin + 8, end - begin - 8));
  std::string word;
  while (words >> word) {
    const auto eq = word.find('=');
    if (eq != std::string::npos) {
      fields[word.substr(0, eq)] = word.substr(eq + 1);
    }
  }
  return fields;
}

double number(const std::map<std::string, std::string>& f, const char* key) {
  auto it = f.find(key);
  if (it == f.end()) {
    return 0;
  }
  try {
    return std::stod(it->second);
  } catch (const std::exception&) {
    return 0;
  }
}

}  // namespace

int main(int argc, char** argv) try {
  CLI::App app{"Report of the ublk frontend benchmark (bench/ublk/ublk_bench.sh)"};
  std::string log_path;
  bool json = false;
  app.add_option("log", log_path, "console log of the VM run")->required();
  app.add_flag("--json", json, "print JSON instead of a table");
  CLI11_PARSE(app, argc, argv);

  std::ifstream in(log_path);
  if (!in) {
    (void)std::fprintf(stderr, "ublk_bench_report: cannot read %s\n", log_path.c_str());
    return 1;
  }
  std::vector<Sample> samples;
  bool done = false;
  std::string line;
  while (std::getline(in, line)) {
    if (line.find("@@bench done@@") != std::string::npos) {
      done = true;
      continue;
    }
    auto f = parse_fields(line);
    if (f.count("job") == 0 || f.count("target") == 0) {
      continue;
    }
    Sample s;
    s.job = f["job"];
    s.target = f["target"];
    s.direct = f["direct"] == "1";
    s.iops = number(f, "iops");
    s.mib_s = number(f, "bw_kib") / 1024.0;
    const double hz = number(f, "hz") > 0 ? number(f, "hz") : 100.0;
    // CPU is sampled over runtime + ramp; I/Os over that window ~ iops x it.
    const double ios = s.iops * number(f, "runtime_s");
    if (ios > 0) {
      s.cpu_us_per_io = number(f, "busy_jiffies") / hz * 1e6 / ios;
      s.server_cpu_us_per_io = number(f, "server_jiffies") / hz * 1e6 / ios;
    }
    samples.push_back(s);
  }
  if (!done || samples.empty()) {
    (void)std::fprintf(stderr, "ublk_bench_report: %s has no complete benchmark run\n",
                       log_path.c_str());
    return 1;
  }

  std::map<std::string, const Sample*> tmpfs;
  for (const Sample& s : samples) {
    if (s.target == "tmpfs") {
      tmpfs[s.job] = &s;
    }
  }
  auto ratio = [](double a, double b) { return b > 0 ? a / b : 0.0; };

  if (json) {
    nlohmann::json out;
    out["note"] = "TCG VM: compare ratios within this run, not absolute values";
    out["results"] = nlohmann::json::array();
    for (const Sample& s : samples) {
      const Sample* base = tmpfs.count(s.job) != 0 ? tmpfs[s.job] : nullptr;
      out["results"].push_back({
          {"job", s.job},
          {"target", s.target},
          {"direct", s.direct},
          {"iops", s.iops},
          {"mib_s", s.mib_s},
          {"cpu_us_per_io", s.cpu_us_per_io},
          {"server_cpu_us_per_io", s.server_cpu_us_per_io},
          {"iops_vs_tmpfs", base != nullptr ? ratio(s.iops, base->iops) : 0.0},
          {"cpu_per_io_vs_tmpfs",
           base != nullptr ? ratio(s.cpu_us_per_io, base->cpu_us_per_io) : 0.0},
      });
    }
    std::printf("%s\n", out.dump(2).c_str());
    return 0;
  }
  std::printf("ublk frontend benchmark (TCG VM: compare ratios, not absolute values)\n");
  std::printf("%-14s %-7s %11s %9s %11s %13s %9s %12s\n", "job", "target", "IOPS", "MiB/s",
              "CPU us/IO", "server us/IO", "IOPS/tmpfs", "CPU/IO/tmpfs");
  for (const Sample& s : samples) {
    const Sample* base = tmpfs.count(s.job) != 0 ? tmpfs[s.job] : nullptr;
    std::printf("%-14s %-7s %11.0f %9.1f %11.1f %13.1f %9.2fx %11.2fx%s\n", s.job.c_str(),
                s.target.c_str(), s.iops, s.mib_s, s.cpu_us_per_io, s.server_cpu_us_per_io,
                base != nullptr ? ratio(s.iops, base->iops) : 0.0,
                base != nullptr ? ratio(s.cpu_us_per_io, base->cpu_us_per_io) : 0.0,
                s.direct ? "" : "  (buffered)");
  }
  return 0;
} catch (const std::exception& e) {
  // Nothing should throw this far; if something does, say what instead of
  // letting std::terminate abort without a word.
  (void)std::fprintf(stderr, "ublk_bench_report: error: %s\n", e.what());
  return 1;
}
