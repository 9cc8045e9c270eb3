# Shell functions the load scripts share; sourced, not run.

# Loopback ports below the ephemeral range (32768-60999), not in use and not handed out
# before by this script, so that no client socket of the run holds one when a node restarts
# on it: sets PORT.
handed_out=" "
free_port() {
  local _
  for _ in $(seq 1 1000); do
    PORT=$((20000 + RANDOM % 12000))
    [[ $handed_out == *" $PORT "* ]] && continue
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
      handed_out+="$PORT "
      return 0
    fi
  done
  echo "$(basename "$0"): no free port" >&2
  return 1
}
