// state.json with remote replicas (issue 16): version 2 only when a volume
// has one, version 1 files (and files written by older daemons) load
// unchanged, and every refusal names the entry.
#include <gtest/gtest.h>
#include <string>

#include "ublkvol/daemon/state_file.h"

namespace ublkvol::daemon {
namespace {

DaemonState two_replica_state() {
  DaemonState state;
  state.stores.push_back({"a", "/dev/shm/a", "uuid-a"});
  VolumeRecord v;
  v.name = "v";
  v.size_bytes = 64ULL << 20U;
  v.stores = {"a"};
  v.min_replicas = 2;
  v.remotes.push_back({"nbds://alice@127.0.0.1:10809/vb", "/etc/ublk-volumed/psk", false});
  state.volumes.push_back(v);
  return state;
}

TEST(RemoteState, RoundTripWritesVersion2AndOnlyThePskPath) {
  const DaemonState state = two_replica_state();
  const std::string text = state_to_json(state);
  EXPECT_NE(text.find(R"("version": 2)"), std::string::npos) << text;
  EXPECT_NE(text.find(R"("remote_replicas")"), std::string::npos) << text;
  EXPECT_NE(text.find(R"("tls_psk": "/etc/ublk-volumed/psk")"), std::string::npos) << text;
  const auto back = state_from_json(text, "test");
  ASSERT_TRUE(back.ok()) << back.error().message();
  EXPECT_EQ(*back, state);
}

// Owed snapshot deletes of a remote replica (issue 16 gap 1): kept, and
// written only while there is one (files without them load unchanged).
TEST(RemoteState, OwedSnapshotDeletesRoundTrip) {
  DaemonState state = two_replica_state();
  EXPECT_EQ(state_to_json(state).find("owed_snapshot_deletes"), std::string::npos);
  state.volumes[0].remotes[0].owed_snapshot_deletes = {"s1", "s2"};
  const std::string text = state_to_json(state);
  EXPECT_NE(text.find(R"("owed_snapshot_deletes")"), std::string::npos) << text;
  const auto back = state_from_json(text, "test");
  ASSERT_TRUE(back.ok()) << back.error().message();
  EXPECT_EQ(*back, state);
}

TEST(RemoteState, WithoutRemotesStaysVersion1) {
  DaemonState state = two_replica_state();
  state.volumes[0].remotes.clear();
  state.volumes[0].min_replicas = 1;
  const std::string text = state_to_json(state);
  EXPECT_NE(text.find(R"("version": 1)"), std::string::npos) << text;
  EXPECT_EQ(text.find("remote_replicas"), std::string::npos) << text;
}

// A file as every daemon before remote replicas wrote it.
TEST(RemoteState, OldVersion1FileStillLoads) {
  const auto state = state_from_json(
      R"({"format":"ublk-volumed-state","version":1,
          "stores":[{"name":"a","path":"/dev/shm/a","uuid":"u"}],
          "volumes":[{"name":"v","size_bytes":67108864,"stores":["a"],"min_replicas":1,
                      "exposed":null}]})",
      "old");
  ASSERT_TRUE(state.ok()) << state.error().message();
  ASSERT_EQ(state->volumes.size(), 1U);
  EXPECT_TRUE(state->volumes[0].remotes.empty());
}

TEST(RemoteState, RefusalsNameTheEntry) {
  const std::string head =
      R"({"format":"ublk-volumed-state","version":VERSION,"stores":[{"name":"a","path":"/a","uuid":"u"}],
          "volumes":[{"name":"v","size_bytes":67108864,"stores":["a"],"min_replicas":MIN,"exposed":null,
          "remote_replicas":REMOTES}]})";
  const auto doc = [&](const std::string& version, const std::string& min,
                       const std::string& remotes) {
    std::string s = head;
    s.replace(s.find("VERSION"), 7, version);
    s.replace(s.find("MIN"), 3, min);
    s.replace(s.find("REMOTES"), 7, remotes);
    return s;
  };
  const std::string good = R"([{"uri":"nbds://h:1/x","tls_psk":"/p","insecure_plain":false}])";
  ASSERT_TRUE(state_from_json(doc("2", "2", good), "t").ok());
  const struct {
    std::string text;
    std::string part;
  } cases[] = {
      // Remote replicas need version 2: a version 1 reader never saw them.
      {doc("1", "1", good), "unknown field 'remote_replicas'"},
      {doc("3", "1", good), "versions 1 and 2"},
      {doc("2", "3", good), "min_replicas 3 is not in 1..2"},
      {doc("2", "1", "[]"), "non-empty array"},
      {doc("2", "1", R"([{"uri":"x","tls_psk":"","insecure_plain":false}])"),
       "remote replica 0: 'uri' 'x' is not an NBD URI"},
      {doc("2", "1", R"([{"uri":"nbds://h/x","tls_psk":"psk","insecure_plain":false}])"),
       "not an absolute path"},
      {doc("2", "1", R"([{"uri":"nbds://h/x","tls_psk":"","insecure_plain":false,"key":"00"}])"),
       "unknown field"},
      {doc("2", "1", R"([{"uri":"nbds://h/x","tls_psk":""}])"), "lacks 'insecure_plain'"},
      {doc("2", "1",
           R"([{"uri":"nbds://h/x","tls_psk":"","insecure_plain":false,"owed_snapshot_deletes":[]}])"),
       "'owed_snapshot_deletes' must be a non-empty array"},
      {doc("2", "1",
           R"([{"uri":"nbds://h/x","tls_psk":"","insecure_plain":false,"owed_snapshot_deletes":[1]}])"),
       "holds 1, not a snapshot name"},
      {doc("2", "1",
           R"([{"uri":"nbds://h/x","tls_psk":"","insecure_plain":false},
               {"uri":"nbds://h/x","tls_psk":"","insecure_plain":false}])"),
       "twice"},
  };
  for (const auto& c : cases) {
    const auto parsed = state_from_json(c.text, "state file t");
    ASSERT_FALSE(parsed.ok()) << c.text;
    EXPECT_NE(parsed.error().message().find(c.part), std::string::npos)
        << parsed.error().message() << " lacks " << c.part;
    EXPECT_NE(parsed.error().message().find("state file t"), std::string::npos);
  }
}

}  // namespace
}  // namespace ublkvol::daemon
