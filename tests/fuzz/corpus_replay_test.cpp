// Replays the fuzz corpus (tests/fuzz/corpus/dbs_open) through the same case
// the libFuzzer target runs, in every build, so CI catches regressions on the
// inputs the fuzzer found interesting. Also checks the committed seeds are
// what make_seed() produces today (valid stores that open).
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <gtest/gtest.h>
#include <iterator>
#include <vector>

#include "dbs_open_case.h"

namespace ublkvol::dbs::fuzz {
namespace {

std::vector<uint8_t> read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

TEST(DbsFuzzCorpus, SeedsOpen) {
  for (int i = 0; i < kSeedCount; ++i) {
    std::string name;
    const std::string seed = make_seed(i, name);
    EXPECT_EQ(run_open_case({reinterpret_cast<const uint8_t*>(seed.data()), seed.size()}), "opened")
        << name;
    // With checksums recomputed (mode 1) a valid image stays valid.
    std::string fixed = seed;
    fixed[0] = 1;
    EXPECT_EQ(run_open_case({reinterpret_cast<const uint8_t*>(fixed.data()), fixed.size()}),
              "opened")
        << name;
  }
}

TEST(DbsFuzzCorpus, ReplayCorpus) {
  const std::filesystem::path dir = UBLKVOL_FUZZ_CORPUS_DIR;
  ASSERT_TRUE(std::filesystem::is_directory(dir)) << dir;
  size_t cases = 0;
  size_t opened = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (!entry.is_regular_file()) {
      continue;
    }
    const std::vector<uint8_t> input = read_file(entry.path());
    opened += run_open_case(input) == "opened" ? 1 : 0;
    ++cases;
  }
  std::printf("replayed %zu corpus inputs, %zu opened\n", cases, opened);
  EXPECT_GE(cases, static_cast<size_t>(kSeedCount));
  EXPECT_GE(opened, 1u);
}

// Regenerates the seed files: UBLKVOL_WRITE_FUZZ_SEEDS=1 ./dbs_fuzz_corpus_test
// --gtest_filter=*WriteSeeds --gtest_also_run_disabled_tests
TEST(DbsFuzzCorpus, DISABLED_WriteSeeds) {
  const std::filesystem::path dir = UBLKVOL_FUZZ_CORPUS_DIR;
  for (int i = 0; i < kSeedCount; ++i) {
    std::string name;
    const std::string seed = make_seed(i, name);
    std::ofstream out(dir / ("seed-" + name), std::ios::binary);
    out.write(seed.data(), static_cast<std::streamsize>(seed.size()));
  }
}

}  // namespace
}  // namespace ublkvol::dbs::fuzz
