# ublkvol_add_test(<name> SOURCES <src>... [LIBS <lib>...] [LABELS <label>...]
#                  [TIMEOUT <seconds>])
# Builds one GoogleTest binary and registers it with ctest as one test.
# Default label: unit.
function(ublkvol_add_test name)
  cmake_parse_arguments(ARG "" "TIMEOUT" "SOURCES;LIBS;LABELS" ${ARGN})
  if(NOT ARG_LABELS)
    set(ARG_LABELS unit)
  endif()
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 300)
  endif()
  add_executable(${name} ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE ${ARG_LIBS} GTest::gtest GTest::gmock GTest::gtest_main
                                        ublkvol_warnings)
  add_test(NAME ${name} COMMAND ${name} --gtest_color=no)
  set_tests_properties(${name} PROPERTIES LABELS "${ARG_LABELS}" TIMEOUT ${ARG_TIMEOUT})
endfunction()

# ---------------------------------------------------------------------------
# VM test bed (scripts/vm/run.sh; docs/testing.md)
# ---------------------------------------------------------------------------

# Header-only helpers for tests that need the ublk driver (tests/support/ublk_test_env.h:
# UBLKVOL_REQUIRE_UBLK(), InVm(), ...).
if(NOT TARGET ublkvol_test_support)
  add_library(ublkvol_test_support INTERFACE)
  target_include_directories(ublkvol_test_support INTERFACE ${CMAKE_CURRENT_LIST_DIR})
  target_link_libraries(ublkvol_test_support INTERFACE GTest::gtest)
endif()

set(UBLKVOL_VM_RUN ${PROJECT_SOURCE_DIR}/scripts/vm/run.sh)
set(UBLKVOL_E2E_LOG_DIR ${CMAKE_BINARY_DIR}/e2e-logs)

# ublkvol_add_e2e_test(<name>
#     (COMMAND "<guest shell command>" | SCRIPT <file> | GTEST <target> [GTEST_ARGS <arg>...])
#     [TARGETS <target>...] [FILES <src[:dest]>...] [ENV <NAME=VALUE>...]
#     [DISKS <size>...] [SMP <n>] [MEM <size>] [TIMEOUT <seconds>] [LABELS <label>...]
#     [K7 | ONLY_K7])
# Registers ctest test <name> (label e2e) that boots the VM test bed with scripts/vm/run.sh
# on the 6.12 kernel. K7 also registers <name>_k7 (labels e2e;k7): the same test on the
# 7.x kernel (run.sh --kernel 7; docs/testing.md has the kernel x test matrix). ONLY_K7
# registers <name>_k7 alone (a feature 6.12 lacks).
# TARGETS' binaries land in the guest's /opt/test/bin (on PATH; refer to them by file
# name). GTEST <target> runs that gtest binary through `vm-gtest`, which fails the test if
# any of its tests skipped. TIMEOUT (default 300) bounds boot + test; ctest's own timeout
# is 60 s longer so that run.sh reports the timeout itself. The console log is written to
# <build>/e2e-logs/<name>.log.
function(ublkvol_add_e2e_test name)
  # PARSE_ARGV keeps a ';' inside COMMAND "a; b" instead of splitting the argument.
  cmake_parse_arguments(PARSE_ARGV 1 ARG "K7;ONLY_K7" "COMMAND;SCRIPT;GTEST;SMP;MEM;TIMEOUT"
                        "TARGETS;FILES;ENV;DISKS;LABELS;GTEST_ARGS")
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 300)
  endif()
  set(targets ${ARG_TARGETS})
  set(guest_cmd "${ARG_COMMAND}")
  if(ARG_GTEST)
    list(APPEND targets ${ARG_GTEST})
    list(JOIN ARG_GTEST_ARGS " " gtest_args)
    set(guest_cmd "vm-gtest $<TARGET_FILE_NAME:${ARG_GTEST}> --gtest_color=no ${gtest_args}")
  endif()
  set(run_args --timeout ${ARG_TIMEOUT})
  list(REMOVE_DUPLICATES targets)
  foreach(target IN LISTS targets)
    list(APPEND run_args --binary $<TARGET_FILE:${target}>)
  endforeach()
  foreach(file IN LISTS ARG_FILES)
    list(APPEND run_args --file ${file})
  endforeach()
  foreach(env IN LISTS ARG_ENV)
    list(APPEND run_args --env ${env})
  endforeach()
  foreach(disk IN LISTS ARG_DISKS)
    list(APPEND run_args --disk ${disk})
  endforeach()
  if(ARG_SMP)
    list(APPEND run_args --smp ${ARG_SMP})
  endif()
  if(ARG_MEM)
    list(APPEND run_args --mem ${ARG_MEM})
  endif()
  if(ARG_SCRIPT)
    list(APPEND run_args --script ${ARG_SCRIPT})
  elseif(guest_cmd)
    # Through a file, not --cmd: a ';' in the command would split a CMake list argument.
    set(guest_script ${CMAKE_CURRENT_BINARY_DIR}/${name}.guest.sh)
    file(GENERATE OUTPUT ${guest_script} CONTENT "${guest_cmd}\n")
    list(APPEND run_args --script ${guest_script})
  else()
    message(FATAL_ERROR "ublkvol_add_e2e_test(${name}): give COMMAND, SCRIPT or GTEST")
  endif()
  math(EXPR ctest_timeout "${ARG_TIMEOUT} + 60")
  if(NOT ARG_ONLY_K7)
    add_test(NAME ${name} COMMAND ${UBLKVOL_VM_RUN} --log ${UBLKVOL_E2E_LOG_DIR}/${name}.log
                                   ${run_args})
    # A TCG guest keeps both vCPUs busy: give it the machine's two cores so ctest -j2 does
    # not run two VMs (or a VM and a heavy unit test) at once.
    set_tests_properties(${name} PROPERTIES LABELS "e2e;${ARG_LABELS}" TIMEOUT ${ctest_timeout}
                                            PROCESSORS 2)
  endif()
  # ONLY_K7: a test of a feature 6.12 lacks registers only <name>_k7.
  if(ARG_K7 OR ARG_ONLY_K7)
    add_test(NAME ${name}_k7 COMMAND ${UBLKVOL_VM_RUN} --kernel 7
                                     --log ${UBLKVOL_E2E_LOG_DIR}/${name}_k7.log ${run_args})
    set_tests_properties(${name}_k7 PROPERTIES LABELS "e2e;k7;${ARG_LABELS}"
                                               TIMEOUT ${ctest_timeout} PROCESSORS 2)
  endif()
endfunction()

# ublkvol_add_host_and_vm_test(<name> SOURCES <src>... [LIBS <lib>...] [TIMEOUT <seconds>]
#                              [VM_TIMEOUT <seconds>] [DISKS <size>...] [TARGETS <target>...])
# The host/VM pattern: one gtest binary <name>, registered twice:
#   <name>     on the host, label unit: tests that start with UBLKVOL_REQUIRE_UBLK() skip
#              with the reason printed;
#   <name>_vm  inside the VM test bed, label e2e: every test must run (a skip fails it).
# Links ublkvol_test_support. TARGETS are extra binaries the guest needs (e.g. the daemon).
function(ublkvol_add_host_and_vm_test name)
  cmake_parse_arguments(ARG "" "TIMEOUT;VM_TIMEOUT" "SOURCES;LIBS;DISKS;TARGETS" ${ARGN})
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 300)
  endif()
  if(NOT ARG_VM_TIMEOUT)
    set(ARG_VM_TIMEOUT 300)
  endif()
  ublkvol_add_test(${name} SOURCES ${ARG_SOURCES} LIBS ${ARG_LIBS} ublkvol_test_support
                   LABELS unit TIMEOUT ${ARG_TIMEOUT})
  ublkvol_add_e2e_test(${name}_vm GTEST ${name} TARGETS ${ARG_TARGETS} DISKS ${ARG_DISKS}
                       TIMEOUT ${ARG_VM_TIMEOUT})
endfunction()
