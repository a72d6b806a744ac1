// Replays tests/fuzz/corpus/control_request through the same case the
// libFuzzer target runs, in every build (label unit).
#include <filesystem>
#include <fstream>
#include <gtest/gtest.h>
#include <sstream>
#include <string>

#include "control_request_case.h"

namespace ublkvol::daemon::fuzz {
namespace {

TEST(ControlRequestFuzzCorpus, Replay) {
  const std::filesystem::path dir = UBLKVOL_CONTROL_CORPUS_DIR;
  ASSERT_TRUE(std::filesystem::is_directory(dir)) << dir;
  size_t cases = 0;
  size_t accepted = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (!entry.is_regular_file()) {
      continue;
    }
    std::ifstream in(entry.path(), std::ios::binary);
    std::stringstream bytes;
    bytes << in.rdbuf();
    const std::string input = bytes.str();
    const std::string outcome =
        run_request_case({reinterpret_cast<const uint8_t*>(input.data()), input.size()});
    accepted += outcome == "request" ? 1 : 0;
    ++cases;
  }
  std::printf("replayed %zu corpus inputs, %zu accepted envelopes\n", cases, accepted);
  EXPECT_GE(cases, 10u);
  EXPECT_GE(accepted, 5u);
}

}  // namespace
}  // namespace ublkvol::daemon::fuzz
