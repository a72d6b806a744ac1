#include "tag_state.h"

#include <gtest/gtest.h>

namespace ublkvol::ublk {
namespace {

TEST(TagStateTest, RequestCycle) {
  TagStateMachine t;
  EXPECT_EQ(t.state(), TagState::kIdle);
  ASSERT_TRUE(t.submit_fetch());
  EXPECT_EQ(t.state(), TagState::kWithKernel);
  for (int round = 0; round < 3; ++round) {
    ASSERT_EQ(t.on_kernel_completion(uapi::kIoResOk), KernelEvent::kRequest);
    EXPECT_EQ(t.state(), TagState::kInBackend);
    ASSERT_TRUE(t.on_backend_done());
    EXPECT_EQ(t.state(), TagState::kCommitReady);
    ASSERT_TRUE(t.submit_commit());
    EXPECT_EQ(t.state(), TagState::kWithKernel);
  }
  EXPECT_FALSE(t.finished());
}

TEST(TagStateTest, AbortIsFinal) {
  TagStateMachine t;
  ASSERT_TRUE(t.submit_fetch());
  EXPECT_EQ(t.on_kernel_completion(-ENODEV), KernelEvent::kAbort);
  EXPECT_TRUE(t.finished());
  EXPECT_EQ(t.state(), TagState::kAborted);
  // Nothing moves a finished tag.
  EXPECT_FALSE(t.submit_fetch());
  EXPECT_FALSE(t.on_backend_done());
  EXPECT_FALSE(t.submit_commit());
  EXPECT_EQ(t.on_kernel_completion(0), KernelEvent::kInvalid);
}

TEST(TagStateTest, OtherKernelErrorsFailTheTag) {
  TagStateMachine t;
  ASSERT_TRUE(t.submit_fetch());
  EXPECT_EQ(t.on_kernel_completion(-EINVAL), KernelEvent::kError);
  EXPECT_EQ(t.state(), TagState::kFailed);
  EXPECT_TRUE(t.finished());
}

TEST(TagStateTest, OutOfOrderEventsAreRefused) {
  TagStateMachine t;
  // A completion before any command was issued.
  EXPECT_EQ(t.on_kernel_completion(0), KernelEvent::kInvalid);
  EXPECT_FALSE(t.on_backend_done());
  EXPECT_FALSE(t.submit_commit());
  ASSERT_TRUE(t.submit_fetch());
  EXPECT_FALSE(t.submit_fetch());  // double fetch
  ASSERT_EQ(t.on_kernel_completion(0), KernelEvent::kRequest);
  // A second kernel completion while the request is with the volume.
  EXPECT_EQ(t.on_kernel_completion(0), KernelEvent::kInvalid);
  EXPECT_FALSE(t.submit_commit());  // commit before the volume finished
  ASSERT_TRUE(t.on_backend_done());
  EXPECT_FALSE(t.on_backend_done());  // volume callback twice
  EXPECT_STREQ(to_string(t.state()), "commit-ready");
}

}  // namespace
}  // namespace ublkvol::ublk
