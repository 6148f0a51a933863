#!/usr/bin/env bash
# Instructions per request (user space) of iptgate and nginx doing the same work, counted by
# valgrind's callgrind: unlike wall-clock figures on a noisy host, the count repeats to ~0.2 %
# from run to run, so a change of 1 % shows.
#
#   TARGETS="upstream nginx-tls" HOLD=3600 IPTGATE_BIN=target/release/iptgate \
#     setsid bash bench/run.sh start &          # renders the configs, holds the upstream
#   bash bench/instructions.sh target/release/iptgate [nginx]
#
# Each proxy runs alone under callgrind on CPU 1 (iptgate from bench/run/iptgate.toml on the
# public route, nginx from bench/run/nginx-proxy.conf as nginx-tls); wrk (10 keep-alive
# connections) runs on CPU 0. Counting starts 3 s into the load (connections and TLS sessions
# set up) and lasts DUR seconds; requests are counted by the proxy itself (iptgate's
# /metrics, nginx's stub_status) over the same window. Needs valgrind and wrk.
#
# VG_ARGS adds callgrind options; KEEP=DIR keeps the profiles (DIR/iptgate.1, DIR/nginx.1).
# Atomic read-modify-write instructions per request (which callgrind's models do not price):
#   KEEP=/tmp/prof VG_ARGS=--dump-instr=yes bash bench/instructions.sh target/release/iptgate nginx
#   python3 bench/atomics.py /tmp/prof/iptgate.1 REQUESTS    # REQUESTS as printed above
set -euo pipefail
BIN=${1:?usage: instructions.sh IPTGATE_BIN [nginx]}
DUR=${DUR:-8}
HERE="$(cd "$(dirname "$0")" && pwd)"
RUN="$HERE/run"
if [[ -n "${KEEP:-}" ]]; then
  OUT="$KEEP"
  mkdir -p "$OUT"
else
  OUT="$(mktemp -d)"
  trap 'rm -rf "$OUT"' EXIT
fi
read -r -a VGX <<<"${VG_ARGS:-}"
[[ -f "$RUN/iptgate.toml" ]] || { echo "run 'bench/run.sh start' first (it renders $RUN)" >&2; exit 1; }
export RUST_LOG=warn IPTGATE_SECRET="${IPTGATE_SECRET:-abcdefghijklmnopqrstuvwxyz0123456789ABCD}"

# measure NAME FILE URL COUNT_CMD PID: count over DUR seconds of load, print instructions per
# request (callgrind writes FILE.1 on the dump).
measure() {
  local name=$1 file=$2 url=$3 count=$4 pid=$5
  for _ in $(seq 1 60); do curl -sk -o /dev/null "$url" && break; sleep 0.5; done
  taskset -c 0 wrk -t1 -c10 -d$((DUR + 6))s "$url" >/dev/null 2>&1 &
  local wrk=$!
  sleep 3
  local c0; c0=$(eval "$count")
  callgrind_control -z "$pid" >/dev/null 2>&1
  sleep "$DUR"
  callgrind_control -d "$pid" >/dev/null 2>&1
  local c1; c1=$(eval "$count")
  wait "$wrk" || true
  kill "$pid"; wait "$pid" 2>/dev/null || true
  local ir; ir=$(awk '/^summary:/{print $2; exit}' "$file.1")
  python3 -c "print(f'$name: {$ir/($c1-$c0):,.0f} instructions per request ({$c1-$c0} requests)')"
}

sed -E 's/^listen = .*/listen = "127.0.0.1:18700"/; s/^admin_listen = .*/admin_listen = "127.0.0.1:18701"/' \
  "$RUN/iptgate.toml" >"$OUT/iptgate.toml"
taskset -c 1 valgrind --tool=callgrind "${VGX[@]}" --callgrind-out-file="$OUT/iptgate" \
  "$BIN" run --config "$OUT/iptgate.toml" >"$OUT/iptgate.log" 2>&1 &
measure iptgate-public "$OUT/iptgate" https://127.0.0.1:18700/public/ \
  "curl -s http://127.0.0.1:18701/metrics | awk '/^iptgate_requests_total/{s+=\$2} END{print s}'" $!

if [[ "${2:-}" == nginx ]]; then
  # Its own ports (18710 for nginx-tls, 18711 for the njs server), a status page on 18712,
  # one process.
  awk -v pid="$OUT/nginx.pid" '
    /^worker_processes/ { print "worker_processes 1; master_process off;"; next }
    /^pid / { print "pid " pid ";"; next }
    /listen 127.0.0.1:[0-9]+ ssl/ { sub(/127.0.0.1:[0-9]+/, "127.0.0.1:" 18710 + n++) }
    /^    server \{/ && !status { print "    server { listen 127.0.0.1:18712; location / { stub_status; } }"; status = 1 }
    { print }' "$RUN/nginx-proxy.conf" \
    > "$OUT/nginx.conf"
  taskset -c 1 valgrind --tool=callgrind "${VGX[@]}" --callgrind-out-file="$OUT/nginx" \
    nginx -c "$OUT/nginx.conf" -e "$OUT/nginx.err" >"$OUT/nginx.log" 2>&1 &
  measure nginx-tls "$OUT/nginx" https://127.0.0.1:18710/public/ \
    "curl -s http://127.0.0.1:18712/ | awk 'NR==3{print \$3}'" $!
fi
