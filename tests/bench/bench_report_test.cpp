// bench_results (the parser behind bench_report / bench/run.sh) against a
// fixture run directory of real fio JSON. Expected figures are computed here
// from the fio documents themselves, independently of the code under test.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <gtest/gtest.h>
#include <string>
#include <vector>

#include "bench_results.h"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using ublkvol::bench::load_run;
using ublkvol::bench::median;
using ublkvol::bench::parse_cpu_use;
using ublkvol::bench::parse_fio_json;

const fs::path kFixture = UBLKVOL_BENCH_FIXTURE_DIR;

json read_json(const fs::path& path) {
  std::ifstream in(path);
  return json::parse(in);
}

// IOPS of a fio document as fio reports them: read + write of the one
// (group-reported) job.
double fio_iops(const fs::path& path) {
  const json doc = read_json(path);
  const json& job = doc["jobs"][0];
  return job["read"]["iops"].get<double>() + job["write"]["iops"].get<double>();
}

double fio_ios(const fs::path& path) {
  const json doc = read_json(path);
  const json& job = doc["jobs"][0];
  return job["read"]["total_ios"].get<double>() + job["write"]["total_ios"].get<double>();
}

double sorted_median3(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[1];
}

// A scratch copy of the fixture that a test may damage.
class ScratchRun : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ =
        fs::temp_directory_path() /
        ("bench_report_test." + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) +
         "." + ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::copy(kFixture, dir_, fs::copy_options::recursive);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

TEST(BenchResults, ParsesAMixedReadWriteFioRun) {
  const fs::path file = kFixture / "raw/randrw70-4k-qd32/baseline-1.json";
  const json doc = read_json(file);
  auto run = parse_fio_json(doc);
  ASSERT_TRUE(run) << run.error().to_string();
  const json& job = doc["jobs"][0];
  EXPECT_DOUBLE_EQ(run->iops, fio_iops(file));
  EXPECT_DOUBLE_EQ(run->ios, fio_ios(file));
  EXPECT_DOUBLE_EQ(run->mib_s,
                   (job["read"]["bw"].get<double>() + job["write"]["bw"].get<double>()) / 1024.0);
  // Latency: the worse of the two directions.
  const double read_p99 = job["read"]["clat_ns"]["percentile"]["99.000000"].get<double>();
  const double write_p99 = job["write"]["clat_ns"]["percentile"]["99.000000"].get<double>();
  EXPECT_DOUBLE_EQ(run->lat_p99_us, std::max(read_p99, write_p99) / 1000.0);
  EXPECT_GT(run->iops, 0);
  EXPECT_GT(job["write"]["iops"].get<double>(), 0) << "fixture must be a mixed job";
}

TEST(BenchResults, RejectsFioJsonWithoutJobsOrIo) {
  EXPECT_FALSE(parse_fio_json(json::object()));
  json doc = read_json(kFixture / "raw/randrw70-4k-qd32/target-1.json");
  doc["jobs"][0]["read"]["total_ios"] = 0;
  doc["jobs"][0]["write"]["total_ios"] = 0;
  auto run = parse_fio_json(doc);
  ASSERT_FALSE(run);
  EXPECT_NE(run.error().message().find("no completed I/O"), std::string::npos);
  doc = read_json(kFixture / "raw/randrw70-4k-qd32/target-1.json");
  doc["jobs"][0]["error"] = 5;
  run = parse_fio_json(doc);
  ASSERT_FALSE(run);
  EXPECT_NE(run.error().message().find("error 5"), std::string::npos);
}

TEST(BenchResults, CpuUseFile) {
  auto cpu = parse_cpu_use("busy_jiffies=250 server_jiffies=40 hz=100\n");
  ASSERT_TRUE(cpu);
  EXPECT_DOUBLE_EQ(cpu->busy_s, 2.5);
  EXPECT_DOUBLE_EQ(cpu->server_s, 0.4);
  cpu = parse_cpu_use("busy_ns=3000000000 server_ns=500000000");
  ASSERT_TRUE(cpu);
  EXPECT_DOUBLE_EQ(cpu->busy_s, 3.0);
  EXPECT_DOUBLE_EQ(cpu->server_s, 0.5);
  EXPECT_FALSE(parse_cpu_use("busy_ns=1"));              // server_ns missing
  EXPECT_FALSE(parse_cpu_use("busy_jiffies=1 hz=100"));  // server_jiffies missing
  EXPECT_FALSE(parse_cpu_use("busy_jiffies=x server_jiffies=0 hz=100"));
  EXPECT_FALSE(parse_cpu_use("busy_jiffies=1 server_jiffies=0 hz=0"));
}

TEST(BenchResults, Median) {
  EXPECT_DOUBLE_EQ(median({}), 0);
  EXPECT_DOUBLE_EQ(median({3, 1, 2}), 2);
  EXPECT_DOUBLE_EQ(median({4, 1, 3, 2}), 2.5);
}

TEST(BenchResults, RatiosOfMediansOverInterleavedRepeats) {
  auto results = load_run(kFixture);
  ASSERT_TRUE(results) << results.error().to_string();
  ASSERT_EQ(results->workloads.size(), 2u);
  const auto& w = results->workloads[0];
  EXPECT_EQ(w.name, "randrw70-4k-qd32");  // workloads.list order
  EXPECT_EQ(w.group, "raw");
  EXPECT_EQ(w.description, "4 KiB random 70% read / 30% write, queue depth 32, one job");
  EXPECT_EQ(results->workloads[1].group, "ext4");
  ASSERT_EQ(w.target.samples.size(), 3u);
  ASSERT_EQ(w.baseline.samples.size(), 3u);

  const fs::path raw = kFixture / "raw/randrw70-4k-qd32";
  std::vector<double> t;
  std::vector<double> b;
  std::vector<double> pair;
  for (int r = 1; r <= 3; ++r) {
    t.push_back(fio_iops(raw / ("target-" + std::to_string(r) + ".json")));
    b.push_back(fio_iops(raw / ("baseline-" + std::to_string(r) + ".json")));
    pair.push_back(t.back() / b.back());
  }
  EXPECT_DOUBLE_EQ(w.target.iops, sorted_median3(t));
  EXPECT_DOUBLE_EQ(w.baseline.iops, sorted_median3(b));
  EXPECT_DOUBLE_EQ(w.iops_ratio, sorted_median3(t) / sorted_median3(b));
  EXPECT_DOUBLE_EQ(w.iops_ratio_min, *std::min_element(pair.begin(), pair.end()));
  EXPECT_DOUBLE_EQ(w.iops_ratio_max, *std::max_element(pair.begin(), pair.end()));

  // CPU per I/O: the .cpu files hold busy_jiffies = 150 + 50 r (target),
  // 90 + 10 r (baseline) at hz 100; server_jiffies = 40 r on the target.
  std::vector<double> t_cpu;
  std::vector<double> t_server;
  std::vector<double> b_cpu;
  for (int r = 1; r <= 3; ++r) {
    const double t_ios = fio_ios(raw / ("target-" + std::to_string(r) + ".json"));
    const double b_ios = fio_ios(raw / ("baseline-" + std::to_string(r) + ".json"));
    t_cpu.push_back((150.0 + 50 * r) / 100 * 1e6 / t_ios);
    t_server.push_back(40.0 * r / 100 * 1e6 / t_ios);
    b_cpu.push_back((90.0 + 10 * r) / 100 * 1e6 / b_ios);
  }
  EXPECT_DOUBLE_EQ(w.target.cpu_us_per_io, sorted_median3(t_cpu));
  EXPECT_DOUBLE_EQ(w.target.server_cpu_us_per_io, sorted_median3(t_server));
  EXPECT_DOUBLE_EQ(w.baseline.cpu_us_per_io, sorted_median3(b_cpu));
  EXPECT_DOUBLE_EQ(w.baseline.server_cpu_us_per_io, 0);
  EXPECT_DOUBLE_EQ(w.cpu_per_io_ratio, sorted_median3(t_cpu) / sorted_median3(b_cpu));
}

TEST(BenchResults, JsonMarkdownAndPlotData) {
  auto results = load_run(kFixture);
  ASSERT_TRUE(results) << results.error().to_string();
  const auto& w = results->workloads[0];

  const json doc = ublkvol::bench::to_json(*results);
  EXPECT_EQ(doc["environment"]["backend"], "memory");
  ASSERT_EQ(doc["workloads"].size(), 2u);
  EXPECT_EQ(doc["workloads"][0]["name"], "randrw70-4k-qd32");
  EXPECT_DOUBLE_EQ(doc["workloads"][0]["ratio"]["iops"].get<double>(), w.iops_ratio);
  EXPECT_EQ(doc["workloads"][0]["target"]["samples"].size(), 3u);
  EXPECT_TRUE(doc["inproc"].contains("device"));

  char ratio[32];
  (void)std::snprintf(ratio, sizeof ratio, "| %.2f (%.2f–%.2f) |", w.iops_ratio, w.iops_ratio_min,
                      w.iops_ratio_max);
  const std::string md = ublkvol::bench::to_markdown(*results);
  EXPECT_NE(md.find("| randrw70-4k-qd32 |"), std::string::npos) << md;
  EXPECT_NE(md.find(ratio), std::string::npos) << "no '" << ratio << "' in\n" << md;
  EXPECT_NE(md.find("### device"), std::string::npos) << md;

  (void)std::snprintf(ratio, sizeof ratio, "0 randrw70-4k-qd32 %.4f ", w.iops_ratio);
  EXPECT_NE(ublkvol::bench::ratio_plot_data(*results).find(ratio), std::string::npos)
      << ublkvol::bench::ratio_plot_data(*results);
}

TEST_F(ScratchRun, UnpairedSamplesAreRefusedNamingTheWorkload) {
  fs::remove(dir_ / "raw/ext4-filecreate/baseline-3.json");
  auto results = load_run(dir_);
  ASSERT_FALSE(results);
  EXPECT_NE(results.error().message().find("workload ext4-filecreate: 3 target and 2 baseline"),
            std::string::npos)
      << results.error().message();
}

TEST_F(ScratchRun, CorruptFioJsonIsRefusedNamingTheFile) {
  std::ofstream(dir_ / "raw/randrw70-4k-qd32/target-2.json") << "{ \"jobs\": [ truncated";
  auto results = load_run(dir_);
  ASSERT_FALSE(results);
  EXPECT_NE(results.error().message().find("target-2.json: not a fio JSON document"),
            std::string::npos)
      << results.error().message();
}

TEST_F(ScratchRun, MissingCpuFileIsRefused) {
  fs::remove(dir_ / "raw/randrw70-4k-qd32/baseline-1.cpu");
  auto results = load_run(dir_);
  ASSERT_FALSE(results);
  EXPECT_NE(results.error().message().find("baseline-1.cpu"), std::string::npos)
      << results.error().message();
}

TEST_F(ScratchRun, NotARunDirectory) {
  fs::remove(dir_ / "meta.env");
  auto results = load_run(dir_);
  ASSERT_FALSE(results);
  EXPECT_NE(results.error().message().find("not a bench/run.sh result directory"),
            std::string::npos);
}

}  // namespace
