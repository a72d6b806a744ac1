# VM e2e of scripts/demo.sh (the README's "run it" demo), guest side: the demo's
# scenario with every step asserted (UBLKVOL_DEMO_CHECK=1): 3 replicas in sync
# after create, fio with crc32c verification exits 0 with 0 errors (healthy and
# degraded), `replica fail` leaves exactly replica 1 failed, `replica rebuild
# --wait` ends with 3 replicas in sync, the daemon counted fio's writes and no
# errors, the daemon stops cleanly on SIGTERM, and the three store files agree
# byte for byte (ublkvol-replica-check reads DBS directly) and equal what the
# device showed. Registered by tests/cli/CMakeLists.txt (demo_e2e).
export UBLKVOL_DEMO_CHECK=1
exec bash /opt/test/files/demo.sh --scenario
