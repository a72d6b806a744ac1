// One fuzz case for ublk-volumed's control request parser and validator
// (include/ublkvol/daemon/protocol.h), shared by the libFuzzer target
// (control_request_fuzz.cpp) and the corpus replay test run in every build.
//
// Input: one request line (any bytes). The case parses it, and
//   - if the envelope is refused: the error response built from it must
//     serialize (even with invalid UTF-8 echoed) and parse back with the
//     same error code and id;
//   - if accepted: every params accessor the daemon uses runs over the
//     params (names, sizes, uints, bools, strings, name lists) and finish();
//     each result is either a value or an EINVAL error with a message, and
//     an ok response echoing the params must round-trip.
// Any crash, exception, sanitizer report or broken property aborts.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

namespace ublkvol::daemon::fuzz {

// "request" if the envelope was accepted, else the error code's name.
std::string run_request_case(std::span<const uint8_t> input);

}  // namespace ublkvol::daemon::fuzz
