// bench_report: turns a bench/run.sh run directory (raw fio JSON + CPU
// samples, see bench_results.h) into results.json, results.md and the gnuplot
// data files plot-ratio.dat / plot-latency.dat. bench/run.sh then draws the
// PNGs with bench/plot/*.gp.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <fstream>

#include "bench_results.h"

namespace {

bool write_file(const std::filesystem::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  if (!out) {
    (void)std::fprintf(stderr, "bench_report: cannot write %s\n", path.c_str());
    return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) try {
  CLI::App app{"Results of a bench/run.sh run: results.json, results.md, plot data"};
  std::string dir;
  std::string out_dir;
  app.add_option("dir", dir, "run directory (meta.env, workloads.list, raw/)")->required();
  app.add_option("--out", out_dir, "where to write the results (default: the run directory)");
  CLI11_PARSE(app, argc, argv);
  if (out_dir.empty()) {
    out_dir = dir;
  }

  auto results = ublkvol::bench::load_run(dir);
  if (!results) {
    (void)std::fprintf(stderr, "bench_report: %s\n", results.error().to_string().c_str());
    return 1;
  }
  const std::filesystem::path out(out_dir);
  std::error_code ec;
  std::filesystem::create_directories(out, ec);
  const std::string markdown = ublkvol::bench::to_markdown(*results);
  if (!write_file(out / "results.json", ublkvol::bench::to_json(*results).dump(2) + "\n") ||
      !write_file(out / "results.md", markdown) ||
      !write_file(out / "plot-ratio.dat", ublkvol::bench::ratio_plot_data(*results)) ||
      !write_file(out / "plot-latency.dat", ublkvol::bench::latency_plot_data(*results))) {
    return 1;
  }
  (void)std::fputs(markdown.c_str(), stdout);
  return 0;
} catch (const std::exception& e) {
  // Nothing should throw this far; if something does, say what instead of
  // letting std::terminate abort without a word.
  (void)std::fprintf(stderr, "bench_report: error: %s\n", e.what());
  return 1;
}
