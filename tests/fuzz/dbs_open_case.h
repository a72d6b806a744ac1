// One fuzz case for the DBS open path, shared by the libFuzzer target
// (dbs_open_fuzz.cpp) and the corpus replay test that runs in every build.
//
// Input: byte 0 = mode, the rest = a store image (padded with zeros to a
// multiple of 4096, at most 1 MiB).
//   mode bit 0: before opening, recompute the checksums of both superblocks
//               and of every metadata run (block and body CRCs), so mutations
//               reach the record parser and the validation behind it instead
//               of stopping at a checksum mismatch.
// The case then opens the image on a MemoryDevice. A refused image must give
// an error message; an accepted one must check clean, read, take a write and
// a commit, and reopen again. Any crash, hang, sanitizer report or broken
// property aborts.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

namespace ublkvol::dbs::fuzz {

// Returns "" if the image was refused with an error, "opened" if it opened
// and passed every property. Aborts (via a message to stderr + abort()) on a
// broken property.
std::string run_open_case(std::span<const uint8_t> input);

// Seed images: small valid stores (128 KiB) in several states.
std::string make_seed(int which, std::string& name);
inline constexpr int kSeedCount = 4;

}  // namespace ublkvol::dbs::fuzz
