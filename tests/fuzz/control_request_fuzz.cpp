// libFuzzer target: ublk-volumed's control request parser and validator (see
// control_request_case.h). Build with the `fuzz` preset; run e.g.
//   build/fuzz/tests/fuzz/control_request_fuzz tests/fuzz/corpus/control_request \
//     -max_total_time=60 -max_len=4096
#include <cstddef>
#include <cstdint>

#include "control_request_case.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  (void)ublkvol::daemon::fuzz::run_request_case({data, size});
  return 0;
}
