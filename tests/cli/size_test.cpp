// Size parsing: every accepted form and every refusal, with the message
// naming the argument and the problem.
#include "size.h"

#include <cstdint>
#include <gtest/gtest.h>
#include <string>

namespace ublkvol::cli {
namespace {

struct Good {
  const char* text;
  uint64_t bytes;
};

TEST(ParseSize, AcceptsBinaryUnitsAndPlainBytes) {
  constexpr uint64_t K = 1024, M = K * K, G = M * K, T = G * K, P = T * K;
  const Good cases[] = {
      {"4096", 4096},  {"8K", 8 * K},         {"8k", 8 * K},     {"8KiB", 8 * K},
      {"8KB", 8 * K},  {"8kb", 8 * K},        {"512M", 512 * M}, {"512MiB", 512 * M},
      {"10G", 10 * G}, {"10g", 10 * G},       {"10GiB", 10 * G}, {"1.5T", T + T / 2},
      {"1T", T},       {"2P", 2 * P},         {"0.5G", G / 2},   {"1.25G", G + G / 4},
      {"4096B", 4096}, {"16383P", 16383 * P}, {"1.000G", G},     {"007K", 7 * K},
  };
  for (const auto& c : cases) {
    SizeRules rules;
    rules.alignment = 1;
    auto size = parse_size(c.text, "--size", rules);
    ASSERT_TRUE(size.ok()) << c.text << ": " << size.error().message();
    EXPECT_EQ(*size, c.bytes) << c.text;
  }
}

TEST(ParseSize, AlignmentIsCheckedAfterTheUnit) {
  EXPECT_EQ(*parse_size("4K", "--size"), 4096u);
  EXPECT_EQ(*parse_size("1.5G", "--size"), 1536ull << 20);
  auto bad = parse_size("6K", "--size");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().message(), "--size '6K': not a multiple of 4096 bytes (4.0K)");
}

struct Bad {
  const char* text;
  const char* message;  // the whole message after "ARG 'TEXT': "
};

TEST(ParseSize, RefusesBadInputNamingTheArgument) {
  const Bad cases[] = {
      {"", "empty size"},
      {"-1G", "a size cannot be negative"},
      {"-0", "a size cannot be negative"},
      {"+5G", "no sign allowed, write just the number"},
      {"0", "must be greater than zero"},
      {"0G", "must be greater than zero"},
      {"0.0K", "must be greater than zero"},
      {"G", "not a size (expected a number with an optional unit, e.g. 10G, 512M, 4096)"},
      {"10Q", "unknown unit 'Q' (use K, M, G, T or P, optionally followed by iB or B)"},
      {"10GG", "unknown unit 'GG' (use K, M, G, T or P, optionally followed by iB or B)"},
      {"10 G", "no spaces allowed (write e.g. 10G)"},
      {"10G ", "no spaces allowed (write e.g. 10G)"},
      {"1e9", "unknown unit 'e9' (use K, M, G, T or P, optionally followed by iB or B)"},
      {"0x1000", "unknown unit 'x1000' (use K, M, G, T or P, optionally followed by iB or B)"},
      {"1.", "a '.' must be followed by digits"},
      {"1.2.3G", "unknown unit '.3G' (use K, M, G, T or P, optionally followed by iB or B)"},
      {"0.3K", "not a whole number of bytes"},
      {"1.1", "not a whole number of bytes"},
      {"16384P", "too large (the limit is 2^64-1 bytes)"},
      {"18446744073709551616", "too large (the limit is 2^64-1 bytes)"},
      {"99999999999999999999999999G", "too large (the limit is 2^64-1 bytes)"},
      {"1000", "not a multiple of 4096 bytes (4.0K)"},
      {"1.0000000000000000001G", "too many decimal places"},
  };
  for (const auto& c : cases) {
    const std::string text = c.text;
    auto size = parse_size(text, "--size");
    ASSERT_FALSE(size.ok()) << "'" << text << "' was accepted as " << *size;
    EXPECT_EQ(size.error().message(), "--size '" + text + "': " + c.message) << text;
    EXPECT_EQ(size.error().errno_value(), EINVAL);
  }
}

TEST(ParseSize, LeadingDotIsAFraction) {
  auto size = parse_size(".5G", "SIZE");
  ASSERT_TRUE(size.ok()) << size.error().message();
  EXPECT_EQ(*size, 512ull << 20);
}

TEST(ParseSize, LargestValueAndZeroWhenAllowed) {
  SizeRules rules;
  rules.alignment = 1;
  EXPECT_EQ(*parse_size("18446744073709551615", "n", rules), UINT64_MAX);
  rules.allow_zero = true;
  EXPECT_EQ(*parse_size("0", "n", rules), 0u);
}

TEST(FormatSize, OneDecimalBinaryUnits) {
  EXPECT_EQ(format_size(0), "0B");
  EXPECT_EQ(format_size(512), "512B");
  EXPECT_EQ(format_size(1023), "1023B");
  EXPECT_EQ(format_size(1024), "1.0K");
  EXPECT_EQ(format_size(4096), "4.0K");
  EXPECT_EQ(format_size(1536), "1.5K");
  EXPECT_EQ(format_size(10ull << 30), "10.0G");
  EXPECT_EQ(format_size((1ull << 40) + (1ull << 39)), "1.5T");
  EXPECT_EQ(format_size((1ull << 20) - 1), "1.0M");  // rounds up into the next unit
  EXPECT_EQ(format_size(UINT64_MAX), "16.0E");
}

TEST(FormatSize, RoundTripsThroughParse) {
  for (uint64_t bytes : {4096ull, 1ull << 20, 10ull << 30, 3ull << 40}) {
    auto parsed = parse_size(format_size(bytes), "x");
    ASSERT_TRUE(parsed.ok()) << format_size(bytes);
    EXPECT_EQ(*parsed, bytes);
  }
}

}  // namespace
}  // namespace ublkvol::cli
