// IoOp names and the synchronous helpers declared in block_device.h.
#include "ublkvol/dbs/block_device.h"

#include <cerrno>
#include <string>

namespace ublkvol::dbs {

const char* to_string(IoOp op) {
  switch (op) {
    case IoOp::kRead:
      return "read";
    case IoOp::kWrite:
      return "write";
    case IoOp::kFlush:
      return "flush";
    case IoOp::kDiscard:
      return "discard";
    case IoOp::kWriteZeroes:
      return "write-zeroes";
  }
  return "unknown";
}

namespace {

struct SyncState {
  bool done = false;
  int result = 0;
};

void on_sync_complete(IoRequest& request, int result) {
  auto* state = static_cast<SyncState*>(request.user_data);
  state->done = true;
  state->result = result;
}

// Submits `request` and polls until its callback has run. Other requests'
// callbacks that complete meanwhile run too (from poll, as always).
Status run_sync(BlockDevice& device, IoRequest& request) {
  SyncState state;
  request.on_complete = &on_sync_complete;
  request.user_data = &state;
  device.submit(request);
  while (!state.done) {
    device.poll(/*wait=*/true);
  }
  if (state.result == 0) {
    return ok_status();
  }
  std::string what = std::string(device.name()) + ": " + to_string(request.op);
  if (request.op != IoOp::kFlush) {
    what += " of " + std::to_string(request.length) + " bytes at offset " +
            std::to_string(request.offset);
  }
  what += " failed";
  return Error(-state.result, what);
}

}  // namespace

Status read_sync(BlockDevice& device, uint64_t offset, std::span<std::byte> buffer) {
  IoRequest request;
  request.op = IoOp::kRead;
  request.offset = offset;
  request.length = buffer.size();
  request.buffer = buffer.data();
  return run_sync(device, request);
}

Status write_sync(BlockDevice& device, uint64_t offset, std::span<const std::byte> buffer,
                  bool fua) {
  IoRequest request;
  request.op = IoOp::kWrite;
  request.fua = fua;
  request.offset = offset;
  request.length = buffer.size();
  // The device only reads from a write's buffer; IoRequest has one pointer
  // type for both directions.
  request.buffer = const_cast<std::byte*>(buffer.data());
  return run_sync(device, request);
}

Status flush_sync(BlockDevice& device) {
  IoRequest request;
  request.op = IoOp::kFlush;
  return run_sync(device, request);
}

Status discard_sync(BlockDevice& device, uint64_t offset, uint64_t length) {
  IoRequest request;
  request.op = IoOp::kDiscard;
  request.offset = offset;
  request.length = length;
  return run_sync(device, request);
}

Status write_zeroes_sync(BlockDevice& device, uint64_t offset, uint64_t length) {
  IoRequest request;
  request.op = IoOp::kWriteZeroes;
  request.offset = offset;
  request.length = length;
  return run_sync(device, request);
}

}  // namespace ublkvol::dbs
