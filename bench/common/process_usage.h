// ProcessUsage: CPU seconds and context switches of this process (RUSAGE_SELF,
// all threads, io_uring workers included) or of its waited-for children
// (RUSAGE_CHILDREN: fio, whole process with its start-up). The in-process
// benchmarks report CPU per I/O from two samples: on a loaded machine IOPS
// follow the CPU share a run gets, CPU per I/O is the cost.
#pragma once

#include <sys/resource.h>
#include <sys/time.h>

namespace ublkvol::bench {

struct Usage {
  double cpu_s = 0;   // user + system
  double user_s = 0;  // user only: the process's own code, no syscall or device work
  double switches = 0;
};

inline Usage process_usage(int who = RUSAGE_SELF) {
  rusage usage{};
  ::getrusage(who, &usage);
  auto seconds = [](const timeval& tv) {
    return static_cast<double>(tv.tv_sec) + static_cast<double>(tv.tv_usec) * 1e-6;
  };
  return {seconds(usage.ru_utime) + seconds(usage.ru_stime), seconds(usage.ru_utime),
          static_cast<double>(usage.ru_nvcsw + usage.ru_nivcsw)};
}

}  // namespace ublkvol::bench
