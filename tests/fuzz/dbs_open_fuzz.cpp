// libFuzzer target: opens corrupted DBS store images (see dbs_open_case.h).
// Build with the `fuzz` preset; run e.g.
//   build/fuzz/tests/fuzz/dbs_open_fuzz tests/fuzz/corpus/dbs_open -max_total_time=60
#include <cstddef>
#include <cstdint>

#include "dbs_open_case.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  (void)ublkvol::dbs::fuzz::run_open_case({data, size});
  return 0;
}
