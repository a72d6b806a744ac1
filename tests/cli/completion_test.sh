#!/usr/bin/env bash
# The bash completion script: valid bash, completes commands, subcommands and
# options (names need a daemon and are tested through `__names` in
# cli_unit_test). Usage: completion_test.sh SCRIPT UBLK_VOLUME_BINARY
set -euo pipefail
script="$1"
binary="$2"
bash -n "$script"
# The script asks `ublk-volume __names` for names: use the built binary, with
# no daemon behind the socket (names then complete to nothing, silently).
PATH="$(dirname "$binary"):$PATH"
export UBLK_VOLUME_SOCKET=/nonexistent/ublk-volume-completion-test.sock
# shellcheck source=/dev/null
source "$script"
[[ "$(complete -p ublk-volume)" == "complete -F _ublk_volume ublk-volume" ]] ||
  { echo "FAIL: completion not registered"; exit 1; }

failures=0
expect() {  # expect "WORDS TYPED" "EXPECTED COMPLETIONS (sorted, space separated)"
  local line="$1" want="$2" got
  read -r -a COMP_WORDS <<<"$line"
  [[ "$line" == *" " ]] && COMP_WORDS+=("")
  COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
  COMPREPLY=()
  # bash runs completion functions without errexit (compgen returns 1 when
  # nothing matches); so do we.
  set +e
  _ublk_volume
  set -e
  got="$(printf '%s\n' "${COMPREPLY[@]}" | sort | xargs)"
  if [[ "$got" == "$want" ]]; then
    echo "ok: '$line' -> $got"
  else
    echo "FAIL: '$line' -> '$got', want '$want'"
    failures=$((failures + 1))
  fi
}
expect "ublk-volume " "backup completion replica snapshot stats status store version volume"
expect "ublk-volume vol" "volume"
expect "ublk-volume st" "stats status store"
expect "ublk-volume volume " "create delete export expose import list open resize show unexport unexpose"
expect "ublk-volume --json volume cr" "create"
expect "ublk-volume volume create v --st" "--store"
expect "ublk-volume volume create v --size " "100G 10G 1G 1T"
expect "ublk-volume replica " "add fail list rebuild remove replace verify"
expect "ublk-volume replica rebuild v 1 --w" "--wait"
expect "ublk-volume backup " "create delete list restore show verify"
expect "ublk-volume backup create v --sn" "--snapshot"
expect "ublk-volume backup verify b --ta" "--target"
expect "ublk-volume snapshot " "clone create delete list revert"
expect "ublk-volume store " "add check gc list remove show"
expect "ublk-volume stats --p" "--prometheus"
expect "ublk-volume completion " "bash"
expect "ublk-volume volume show " ""   # no daemon: no names, no error output
[[ $failures -eq 0 ]] || { echo "$failures completion check(s) failed"; exit 1; }
echo "completion: all checks passed"
