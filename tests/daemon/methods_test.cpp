// The method table (include/ublkvol/daemon/methods.h) against the protocol's
// description: docs/control-protocol.md lists exactly the table's methods,
// each with the table's fields and which of them are optional.
#include "ublkvol/daemon/methods.h"

#include <fstream>
#include <gtest/gtest.h>
#include <map>
#include <set>
#include <sstream>
#include <string>

namespace ublkvol::daemon {
namespace {

// "{name, size, stores: [names, distinct, 1..4], min_replicas?: uint}" ->
// {"name": required, ..., "min_replicas": optional}.
std::map<std::string, bool> documented_fields(const std::string& braces) {
  std::map<std::string, bool> fields;
  std::string inner = braces.substr(1, braces.size() - 2);
  int depth = 0;
  std::string item;
  auto take = [&] {
    const size_t start = item.find_first_not_of(' ');
    if (start == std::string::npos) {
      item.clear();
      return;
    }
    const size_t end = item.find_first_of("?: ", start);
    const std::string key = item.substr(start, end - start);
    fields[key] = !(end != std::string::npos && item[end] == '?');
    item.clear();
  };
  for (char c : inner) {
    depth += (c == '[' || c == '(') ? 1 : (c == ']' || c == ')') ? -1 : 0;
    if (c == ',' && depth == 0) {
      take();
    } else {
      item += c;
    }
  }
  take();
  return fields;
}

TEST(MethodTable, MatchesTheProtocolDocument) {
  std::ifstream doc(UBLKVOL_SOURCE_DIR "/docs/control-protocol.md");
  ASSERT_TRUE(doc) << "cannot read docs/control-protocol.md";
  std::map<std::string, std::map<std::string, bool>> documented;
  std::string line;
  while (std::getline(doc, line)) {
    // | `volume.create` | `{name, size, ...}` | volume |
    if (!line.starts_with("| `") || line.find("| `{") == std::string::npos) {
      continue;
    }
    const size_t name_end = line.find('`', 3);
    const std::string name = line.substr(3, name_end - 3);
    const size_t open = line.find("`{", name_end) + 1;
    const size_t close = line.find("}`", open) + 1;
    documented[name] = documented_fields(line.substr(open, close - open));
  }
  std::set<std::string> listed;
  for (const MethodInfo& m : all_methods()) {
    const std::string name(m.name);
    listed.insert(name);
    ASSERT_TRUE(documented.contains(name)) << name << " is not in docs/control-protocol.md";
    std::map<std::string, bool> fields;
    for (const ParamSpec& p : m.params) {
      fields[std::string(p.key)] = p.required;
    }
    EXPECT_EQ(fields, documented[name]) << name << ": the table's fields differ from the document";
  }
  for (const auto& [name, fields] : documented) {
    EXPECT_TRUE(listed.contains(name)) << name << " is documented but not in the method table";
  }
}

TEST(MethodTable, LookupByNameAndByMethod) {
  for (const MethodInfo& m : all_methods()) {
    ASSERT_EQ(find_method(m.name), &m);
    EXPECT_EQ(method_name(m.method), m.name);
    EXPECT_EQ(&method_info(m.method), &m);
    EXPECT_FALSE(m.summary.empty()) << m.name;
  }
  EXPECT_EQ(find_method("volume.creat"), nullptr);
  EXPECT_EQ(find_method(""), nullptr);
  EXPECT_EQ(all_methods().size(), kMethodCount);
}

}  // namespace
}  // namespace ublkvol::daemon
