#include "bench_results.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

namespace ublkvol::bench {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

Result<std::string> read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return Error(ENOENT, path.string() + ": cannot read");
  }
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

double number_at(const json& object, const char* key) {
  auto it = object.find(key);
  return it != object.end() && it->is_number() ? it->get<double>() : 0.0;
}

// clat percentiles are keyed "50.000000", "99.000000" (ns).
double percentile_us(const json& direction, const char* key) {
  auto clat = direction.find("clat_ns");
  if (clat == direction.end()) {
    return 0;
  }
  auto pct = clat->find("percentile");
  if (pct == clat->end()) {
    return 0;
  }
  return number_at(*pct, key) / 1000.0;
}

double ratio(double target, double baseline) { return baseline > 0 ? target / baseline : 0.0; }

// value with `decimals` digits after the point.
std::string fixed(double value, int decimals) {
  char buf[64];
  (void)std::snprintf(buf, sizeof buf, "%.*f", decimals, value);
  return buf;
}

// value with 3 significant digits.
std::string sig3(double value) {
  char buf[64];
  (void)std::snprintf(buf, sizeof buf, "%.3g", value);
  return buf;
}

// Three significant digits for rates, one decimal below 100.
std::string rate(double v) {
  if (v >= 1e6) {
    return fixed(v / 1e6, 2) + "M";
  }
  if (v >= 1e4) {
    return fixed(v / 1e3, 1) + "k";
  }
  return fixed(v, v >= 100 ? 0 : 1);
}

json side_json(const SideSummary& side) {
  json samples = json::array();
  for (const Sample& s : side.samples) {
    samples.push_back({{"iops", s.fio.iops},
                       {"mib_s", s.fio.mib_s},
                       {"lat_p50_us", s.fio.lat_p50_us},
                       {"lat_p99_us", s.fio.lat_p99_us},
                       {"ios", s.fio.ios},
                       {"cpu_us_per_io", s.cpu_us_per_io()},
                       {"server_cpu_us_per_io", s.server_cpu_us_per_io()}});
  }
  return {{"iops", side.iops},
          {"mib_s", side.mib_s},
          {"lat_p50_us", side.lat_p50_us},
          {"lat_p99_us", side.lat_p99_us},
          {"cpu_us_per_io", side.cpu_us_per_io},
          {"server_cpu_us_per_io", side.server_cpu_us_per_io},
          {"fio_usr_pct", side.fio_usr_pct},
          {"fio_sys_pct", side.fio_sys_pct},
          {"samples", samples}};
}

SideSummary summarize_side(std::vector<Sample> samples) {
  SideSummary side;
  auto med = [&](auto field) {
    std::vector<double> v;
    v.reserve(samples.size());
    for (const Sample& s : samples) {
      v.push_back(field(s));
    }
    return median(std::move(v));
  };
  side.iops = med([](const Sample& s) { return s.fio.iops; });
  side.mib_s = med([](const Sample& s) { return s.fio.mib_s; });
  side.lat_p50_us = med([](const Sample& s) { return s.fio.lat_p50_us; });
  side.lat_p99_us = med([](const Sample& s) { return s.fio.lat_p99_us; });
  side.cpu_us_per_io = med([](const Sample& s) { return s.cpu_us_per_io(); });
  side.server_cpu_us_per_io = med([](const Sample& s) { return s.server_cpu_us_per_io(); });
  side.fio_usr_pct = med([](const Sample& s) { return s.fio.fio_usr_pct; });
  side.fio_sys_pct = med([](const Sample& s) { return s.fio.fio_sys_pct; });
  side.samples = std::move(samples);
  return side;
}

Result<Sample> load_sample(const fs::path& dir, const std::string& side, int rep) {
  const fs::path json_path = dir / (side + "-" + std::to_string(rep) + ".json");
  const fs::path cpu_path = dir / (side + "-" + std::to_string(rep) + ".cpu");
  auto text = read_text(json_path);
  if (!text) {
    return text.error();
  }
  // fio prints warnings ("fio: ...") before the JSON document on some errors.
  const auto brace = text->find('{');
  json doc = json::parse(brace == std::string::npos ? std::string() : text->substr(brace), nullptr,
                         /*allow_exceptions=*/false);
  if (doc.is_discarded()) {
    return Error(EINVAL, json_path.string() + ": not a fio JSON document");
  }
  auto fio = parse_fio_json(doc);
  if (!fio) {
    return fio.error().with_context(json_path.string());
  }
  Sample sample{*fio, {}};
  auto cpu_text = read_text(cpu_path);
  if (!cpu_text) {
    return cpu_text.error();
  }
  auto cpu = parse_cpu_use(*cpu_text);
  if (!cpu) {
    return cpu.error().with_context(cpu_path.string());
  }
  sample.cpu = *cpu;
  return sample;
}

// Scalar fields of an object, as table cells.
std::string cell(const json& v) {
  if (v.is_number_integer()) {
    return std::to_string(v.get<long long>());
  }
  if (v.is_number()) {
    const double d = v.get<double>();
    return std::fabs(d) >= 100 ? fixed(d, 0) : sig3(d);
  }
  if (v.is_string()) {
    return v.get<std::string>();
  }
  if (v.is_boolean()) {
    return v.get<bool>() ? "true" : "false";
  }
  return "";
}

// An in-process benchmark's JSON as markdown: every array of objects becomes a
// table of its scalar fields, other scalars a key: value list.
void inproc_markdown(std::ostringstream& out, const std::string& name, const json& doc) {
  out << "### " << name << "\n\n";
  if (!doc.is_object()) {
    out << "```\n" << doc.dump(2) << "\n```\n\n";
    return;
  }
  for (const auto& [key, value] : doc.items()) {
    if (!value.is_structured()) {
      out << "- " << key << ": " << cell(value) << "\n";
    }
  }
  out << "\n";
  for (const auto& [key, value] : doc.items()) {
    if (!value.is_array() || value.empty() || !value.front().is_object()) {
      continue;
    }
    std::vector<std::string> columns;
    for (const json& row : value) {
      for (const auto& [col, v] : row.items()) {
        if (!v.is_structured() && std::find(columns.begin(), columns.end(), col) == columns.end()) {
          columns.push_back(col);
        }
      }
    }
    out << "`" << key << "`:\n\n|";
    for (const auto& c : columns) {
      out << " " << c << " |";
    }
    out << "\n|";
    for (size_t i = 0; i < columns.size(); ++i) {
      out << "---|";
    }
    out << "\n";
    for (const json& row : value) {
      out << "|";
      for (const auto& c : columns) {
        auto it = row.find(c);
        out << " " << (it == row.end() ? "" : cell(*it)) << " |";
      }
      out << "\n";
    }
    out << "\n";
  }
}

}  // namespace

Result<FioRun> parse_fio_json(const json& doc) {
  auto jobs = doc.find("jobs");
  if (jobs == doc.end() || !jobs->is_array() || jobs->empty()) {
    return Error(EINVAL, "fio JSON has no \"jobs\" array");
  }
  FioRun run;
  for (const json& job : *jobs) {
    if (number_at(job, "error") != 0) {
      return Error(EIO, "fio job '" + job.value("jobname", std::string("?")) + "' reported error " +
                            std::to_string(job.value("error", 0)));
    }
    for (const char* dir : {"read", "write", "trim"}) {
      auto d = job.find(dir);
      if (d == job.end() || !d->is_object()) {
        continue;
      }
      const double ios = number_at(*d, "total_ios");
      if (ios <= 0) {
        continue;
      }
      run.ios += ios;
      run.iops += number_at(*d, "iops");
      run.mib_s += number_at(*d, "bw") / 1024.0;  // fio's bw is KiB/s
      run.lat_p50_us = std::max(run.lat_p50_us, percentile_us(*d, "50.000000"));
      run.lat_p99_us = std::max(run.lat_p99_us, percentile_us(*d, "99.000000"));
    }
    run.fio_usr_pct += number_at(job, "usr_cpu") / static_cast<double>(jobs->size());
    run.fio_sys_pct += number_at(job, "sys_cpu") / static_cast<double>(jobs->size());
  }
  if (run.ios <= 0) {
    return Error(EINVAL, "fio JSON reports no completed I/O");
  }
  return run;
}

std::map<std::string, std::string> parse_env_lines(const std::string& text) {
  std::map<std::string, std::string> out;
  std::istringstream in(text);
  std::string word;
  // Whitespace-separated KEY=VALUE words would break values with spaces, so
  // split on lines; a line may also carry several "k=v" words (cpu files).
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') {
      continue;
    }
    const auto eq = line.find('=');
    if (eq == std::string::npos || eq == 0) {
      continue;
    }
    out[line.substr(0, eq)] = line.substr(eq + 1);
  }
  return out;
}

Result<CpuUse> parse_cpu_use(const std::string& text) {
  std::map<std::string, double> values;
  std::istringstream in(text);
  std::string word;
  while (in >> word) {
    const auto eq = word.find('=');
    if (eq == std::string::npos) {
      return Error(EINVAL, "'" + word + "' is not KEY=VALUE");
    }
    char* end = nullptr;
    const std::string value = word.substr(eq + 1);
    const double d = std::strtod(value.c_str(), &end);
    if (value.empty() || end == nullptr || *end != '\0') {
      return Error(EINVAL, "'" + word + "': the value is not a number");
    }
    values[word.substr(0, eq)] = d;
  }
  // Nanoseconds (schedstat) when the kernel had them, else jiffies.
  if (values.count("busy_ns") != 0 || values.count("server_ns") != 0) {
    for (const char* key : {"busy_ns", "server_ns"}) {
      if (values.count(key) == 0) {
        return Error(EINVAL, std::string("missing ") + key);
      }
    }
    return CpuUse{values["busy_ns"] / 1e9, values["server_ns"] / 1e9};
  }
  for (const char* key : {"busy_jiffies", "server_jiffies", "hz"}) {
    if (values.count(key) == 0) {
      return Error(EINVAL, std::string("missing ") + key);
    }
  }
  if (values["hz"] <= 0) {
    return Error(EINVAL, "hz must be positive");
  }
  return CpuUse{values["busy_jiffies"] / values["hz"], values["server_jiffies"] / values["hz"]};
}

double median(std::vector<double> values) {
  if (values.empty()) {
    return 0;
  }
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2.0;
}

WorkloadResult summarize(std::string name, std::string group, std::string description,
                         std::vector<Sample> target, std::vector<Sample> baseline) {
  WorkloadResult w;
  w.name = std::move(name);
  w.group = std::move(group);
  w.description = std::move(description);
  std::vector<double> pair_ratios;
  for (size_t i = 0; i < std::min(target.size(), baseline.size()); ++i) {
    pair_ratios.push_back(ratio(target[i].fio.iops, baseline[i].fio.iops));
  }
  w.target = summarize_side(std::move(target));
  w.baseline = summarize_side(std::move(baseline));
  w.iops_ratio = ratio(w.target.iops, w.baseline.iops);
  w.mib_s_ratio = ratio(w.target.mib_s, w.baseline.mib_s);
  w.lat_p50_ratio = ratio(w.target.lat_p50_us, w.baseline.lat_p50_us);
  w.lat_p99_ratio = ratio(w.target.lat_p99_us, w.baseline.lat_p99_us);
  w.cpu_per_io_ratio = ratio(w.target.cpu_us_per_io, w.baseline.cpu_us_per_io);
  if (!pair_ratios.empty()) {
    w.iops_ratio_min = *std::min_element(pair_ratios.begin(), pair_ratios.end());
    w.iops_ratio_max = *std::max_element(pair_ratios.begin(), pair_ratios.end());
  }
  return w;
}

Result<RunResults> load_run(const fs::path& dir) {
  RunResults results;
  auto meta = read_text(dir / "meta.env");
  if (!meta) {
    return meta.error().with_context("not a bench/run.sh result directory");
  }
  results.meta = parse_env_lines(*meta);
  auto list = read_text(dir / "workloads.list");
  if (!list) {
    return list.error().with_context("not a bench/run.sh result directory");
  }
  std::istringstream lines(*list);
  std::string line;
  while (std::getline(lines, line)) {
    std::istringstream words(line);
    std::string name;
    std::string group;
    if (!(words >> name >> group)) {
      continue;
    }
    std::string description;
    std::getline(words >> std::ws, description);
    const fs::path wdir = dir / "raw" / name;
    std::vector<Sample> sides[2];
    const char* side_names[2] = {"target", "baseline"};
    for (int s = 0; s < 2; ++s) {
      for (int rep = 1;
           fs::exists(wdir / (std::string(side_names[s]) + "-" + std::to_string(rep) + ".json"));
           ++rep) {
        auto sample = load_sample(wdir, side_names[s], rep);
        if (!sample) {
          return sample.error().with_context("workload " + name);
        }
        sides[s].push_back(*sample);
      }
    }
    if (sides[0].empty() || sides[0].size() != sides[1].size()) {
      return Error(EINVAL, "workload " + name + ": " + std::to_string(sides[0].size()) +
                               " target and " + std::to_string(sides[1].size()) +
                               " baseline samples under " + wdir.string() +
                               " (need the same number, at least one)");
    }
    results.workloads.push_back(
        summarize(name, group, description, std::move(sides[0]), std::move(sides[1])));
  }
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir / "inproc", ec)) {
    if (entry.path().extension() != ".json") {
      continue;
    }
    auto text = read_text(entry.path());
    if (!text) {
      return text.error();
    }
    json doc = json::parse(*text, nullptr, /*allow_exceptions=*/false);
    if (doc.is_discarded()) {
      return Error(EINVAL, entry.path().string() + ": not JSON");
    }
    results.inproc[entry.path().stem().string()] = std::move(doc);
  }
  if (results.workloads.empty() && results.inproc.empty()) {
    return Error(EINVAL, (dir / "workloads.list").string() +
                             " lists no workload and there are no in-process results");
  }
  return results;
}

json to_json(const RunResults& results) {
  json out;
  out["schema"] = "ublkvol-bench-results/1";
  out["environment"] = results.meta;
  out["note"] =
      "ratios are target / baseline of the medians over the repeats; under the VM test bed "
      "(QEMU TCG) absolute figures mean nothing, ratios taken in one run do";
  json workloads = json::array();
  for (const WorkloadResult& w : results.workloads) {
    workloads.push_back({{"name", w.name},
                         {"group", w.group},
                         {"description", w.description},
                         {"target", side_json(w.target)},
                         {"baseline", side_json(w.baseline)},
                         {"ratio",
                          {{"iops", w.iops_ratio},
                           {"iops_min", w.iops_ratio_min},
                           {"iops_max", w.iops_ratio_max},
                           {"mib_s", w.mib_s_ratio},
                           {"lat_p50", w.lat_p50_ratio},
                           {"lat_p99", w.lat_p99_ratio},
                           {"cpu_per_io", w.cpu_per_io_ratio}}}});
  }
  out["workloads"] = workloads;
  out["inproc"] = results.inproc;
  return out;
}

std::string to_markdown(const RunResults& results) {
  std::ostringstream out;
  auto meta = [&](const char* key) {
    auto it = results.meta.find(key);
    return it == results.meta.end() ? std::string("?") : it->second;
  };
  out << "Target: " << meta("target_desc") << "  \nBaseline: " << meta("baseline_desc")
      << "  \nRepeats: " << meta("repeat") << " (interleaved), " << meta("runtime_s")
      << " s per run; figures are medians, ratio = target / baseline.\n\n";
  out << "| workload | target IOPS | baseline IOPS | IOPS ratio (per-repeat range) | MiB/s ratio "
         "| p50 µs target / baseline | p99 µs target / baseline | CPU µs/IO target (server) / "
         "baseline |\n";
  out << "|---|---:|---:|---:|---:|---:|---:|---:|\n";
  for (const WorkloadResult& w : results.workloads) {
    out << "| " << w.name << " | " << rate(w.target.iops) << " | " << rate(w.baseline.iops) << " | "
        << fixed(w.iops_ratio, 2) << " (" << fixed(w.iops_ratio_min, 2) << "–"
        << fixed(w.iops_ratio_max, 2) << ") | " << fixed(w.mib_s_ratio, 2) << " | "
        << fixed(w.target.lat_p50_us, 0) << " / " << fixed(w.baseline.lat_p50_us, 0) << " | "
        << fixed(w.target.lat_p99_us, 0) << " / " << fixed(w.baseline.lat_p99_us, 0) << " | "
        << fixed(w.target.cpu_us_per_io, 1) << " (" << fixed(w.target.server_cpu_us_per_io, 1)
        << ") / " << fixed(w.baseline.cpu_us_per_io, 1) << " |\n";
  }
  if (!results.inproc.empty()) {
    out << "\n## In-process benchmarks\n\n";
    for (const auto& [name, doc] : results.inproc) {
      inproc_markdown(out, name, doc);
    }
  }
  return out.str();
}

std::string ratio_plot_data(const RunResults& results) {
  std::ostringstream out;
  out << "# index workload iops_ratio min max mib_s_ratio\n";
  int i = 0;
  for (const WorkloadResult& w : results.workloads) {
    out << i++ << " " << w.name << " " << fixed(w.iops_ratio, 4) << " "
        << fixed(w.iops_ratio_min, 4) << " " << fixed(w.iops_ratio_max, 4) << " "
        << fixed(w.mib_s_ratio, 4) << "\n";
  }
  return out.str();
}

std::string latency_plot_data(const RunResults& results) {
  std::ostringstream out;
  out << "# index workload target_p50_us baseline_p50_us target_p99_us baseline_p99_us\n";
  int i = 0;
  for (const WorkloadResult& w : results.workloads) {
    out << i++ << " " << w.name << " " << fixed(w.target.lat_p50_us, 1) << " "
        << fixed(w.baseline.lat_p50_us, 1) << " " << fixed(w.target.lat_p99_us, 1) << " "
        << fixed(w.baseline.lat_p99_us, 1) << "\n";
  }
  return out.str();
}

}  // namespace ublkvol::bench
