# bash completion for ublk-volume(1).
# Installed to /usr/share/bash-completion/completions/ublk-volume; also printed by
# `ublk-volume completion bash` (source <(ublk-volume completion bash)).
# Store and volume names come from the running daemon (`ublk-volume __names`);
# when it does not answer, only commands and options are completed.
# shellcheck disable=SC2207  # COMPREPLY=($(compgen ...)) is the idiom: words have no spaces

_ublk_volume_names() {
  # $1: stores | volumes | snapshots VOLUME
  local socket_args=()
  [[ -n "${_ublk_volume_socket:-}" ]] && socket_args=(--socket "$_ublk_volume_socket")
  ublk-volume "${socket_args[@]}" __names "$@" 2>/dev/null || true
}

_ublk_volume() {
  local cur prev words cword
  if declare -F _init_completion >/dev/null; then
    _init_completion || return
  else
    cur="${COMP_WORDS[COMP_CWORD]}"
    prev="${COMP_WORDS[COMP_CWORD-1]}"
    words=("${COMP_WORDS[@]}")
    cword=$COMP_CWORD
  fi

  local global_opts="--socket --json --help --help-all"
  local groups="store volume snapshot backup replica stats status version completion"

  # Collect the command words typed so far (skipping options and their values).
  local i w cmd=() _ublk_volume_socket=""
  for ((i = 1; i < cword; i++)); do
    w="${words[i]}"
    case "$w" in
      --socket) _ublk_volume_socket="${words[i+1]}"; ((i++)) ;;
      --socket=*) _ublk_volume_socket="${w#--socket=}" ;;
      --size|-s|--extent-size|--min-replicas|--queues|--queue-depth|--reason|--timeout|\
      --rate|-i|--interval|-c|--count|-o|--output|\
      --snapshot|--to|--target|--name|--parent|--volume|--store|--remote|--tls-psk|--psk-file) ((i++)) ;;
      -*) ;;
      *) cmd+=("$w") ;;
    esac
  done

  case "$prev" in
    --socket|-o|--output|--tls-psk|--psk-file) COMPREPLY=($(compgen -f -- "$cur")); return ;;
    --remote) return ;;
    --to|--target) COMPREPLY=($(compgen -d -- "$cur")); return ;;
    --snapshot|--name|--parent) return ;;
    --size|-s|--extent-size) COMPREPLY=($(compgen -W "1G 10G 100G 1T" -- "$cur")); return ;;
    --store) COMPREPLY=($(compgen -W "$(_ublk_volume_names stores)" -- "$cur")); return ;;
    --min-replicas|--queues|--queue-depth|--reason|--timeout|--rate|-i|--interval|-c|--count) return ;;
  esac

  local group="${cmd[0]:-}" sub="${cmd[1]:-}" nargs=$((${#cmd[@]} - 2))
  local words_list="" opts="$global_opts"
  case "$group" in
    "") words_list="$groups" ;;
    store)
      case "$sub" in
        "") words_list="add list show remove check gc" ;;
        add) opts+=" --format --force --size --extent-size"
             [[ $nargs -ge 1 ]] && { COMPREPLY=($(compgen -f -- "$cur")); return; } ;;
        show|remove|check) [[ $nargs -eq 0 ]] && words_list="$(_ublk_volume_names stores)" ;;
        gc) opts+=" --dry-run"
            [[ $nargs -eq 0 ]] && words_list="$(_ublk_volume_names stores)" ;;
      esac ;;
    volume)
      case "$sub" in
        "") words_list="create import list show delete expose unexpose resize open export unexport" ;;
        create) opts+=" --size --store --min-replicas --remote --tls-psk --insecure-plain" ;;
        import) opts+=" --store --min-replicas" ;;
        expose) opts+=" --queues --queue-depth"
                [[ $nargs -eq 0 ]] && words_list="$(_ublk_volume_names volumes)" ;;
        export) opts+=" --listen --tls-psk --tls-cert --tls-key --tls-ca --insecure-plain --max-connections"
                [[ $nargs -eq 0 ]] && words_list="$(_ublk_volume_names volumes)" ;;
        open) opts+=" --accept-data-loss"
              [[ $nargs -eq 0 ]] && words_list="$(_ublk_volume_names volumes)" ;;
        show|delete|unexpose|resize|unexport) [[ $nargs -eq 0 ]] && words_list="$(_ublk_volume_names volumes)" ;;
      esac ;;
    snapshot)
      case "$sub" in
        "") words_list="create list delete revert clone" ;;
        *) if [[ $nargs -eq 0 ]]; then
             words_list="$(_ublk_volume_names volumes)"
           elif [[ $nargs -eq 1 && "$sub" != create && "$sub" != list ]]; then
             words_list="$(_ublk_volume_names snapshots "${cmd[2]}")"
           fi ;;
      esac ;;
    backup)
      case "$sub" in
        "") words_list="create list show verify delete restore" ;;
        create) opts+=" --snapshot --to --name --parent --rate --wait"
                [[ $nargs -eq 0 ]] && words_list="$(_ublk_volume_names volumes)" ;;
        restore) opts+=" --target --volume --store --min-replicas" ;;
        *) opts+=" --target" ;;
      esac ;;
    replica)
      case "$sub" in
        "") words_list="list add remove replace rebuild fail verify" ;;
        add) opts+=" --wait --timeout --tls-psk --insecure-plain"
             [[ $nargs -eq 0 ]] && words_list="$(_ublk_volume_names volumes)"
             [[ $nargs -eq 1 ]] && words_list="$(_ublk_volume_names stores)" ;;
        rebuild) opts+=" --wait --timeout"
                 [[ $nargs -eq 0 ]] && words_list="$(_ublk_volume_names volumes)" ;;
        replace) opts+=" --wait --timeout --tls-psk --insecure-plain"
                 [[ $nargs -eq 0 ]] && words_list="$(_ublk_volume_names volumes)" ;;
        fail) opts+=" --reason --force"
              [[ $nargs -eq 0 ]] && words_list="$(_ublk_volume_names volumes)" ;;
        verify) opts+=" --repair --rate --wait --timeout"
                [[ $nargs -eq 0 ]] && words_list="$(_ublk_volume_names volumes)" ;;
        *) [[ $nargs -eq 0 ]] && words_list="$(_ublk_volume_names volumes)" ;;
      esac ;;
    stats)
      opts+=" --interval --count --watch --prometheus --output"
      [[ ${#cmd[@]} -eq 1 ]] && words_list="$(_ublk_volume_names volumes)" ;;
    completion) [[ ${#cmd[@]} -eq 1 ]] && words_list="bash" ;;
  esac

  if [[ "$cur" == -* ]]; then
    COMPREPLY=($(compgen -W "$opts" -- "$cur"))
  else
    COMPREPLY=($(compgen -W "$words_list" -- "$cur"))
  fi
  return 0
}

complete -F _ublk_volume ublk-volume
