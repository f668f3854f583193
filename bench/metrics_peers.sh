#!/usr/bin/env bash
# The metrics benchmarks of docs/BENCHMARKS.md ("Metrics (issue 3)"):
# meshlens against Prometheus and VictoriaMetrics in the same run.
#
#   bench/metrics_peers.sh [ingest] [disk] [memory] [scrape] [promql]   (default: all five)
#
# Needs a release build (cargo build --release -p meshlens-bench -p meshlens),
# /usr/bin/prometheus, /usr/bin/promtool, /usr/bin/victoria-metrics, taskset,
# curl. The server under test runs on core 1 (taskset -c 1), the load on core 0.
# Everything listens on 127.0.0.1 only. Work files go to $WORK (default
# /tmp/mlbench), which is wiped per section.
set -euo pipefail
cd "$(dirname "$0")/.."
T=${CARGO_TARGET_DIR:-$PWD/target}
B=$T/release/meshlens-bench
M=$T/release/meshlens
WORK=${WORK:-/tmp/mlbench}
ML=127.0.0.1:19411 PROM=127.0.0.1:19090 VM=127.0.0.1:18428
SECTIONS=${*:-ingest disk memory scrape promql}
mkdir -p "$WORK"
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

wait_http() { # URL
  for _ in $(seq 1 300); do curl -sf -o /dev/null "$1" && return 0; sleep 0.2; done
  echo "not ready: $1" >&2; return 1
}
start_meshlens() { # DIR [extra args]
  local d=$1; shift
  taskset -c 1 "$M" serve --data-dir "$d" --http-addr $ML --otlp-grpc-addr 127.0.0.1:14317 \
    --otlp-http-addr 127.0.0.1:14318 --no-self-scrape "$@" >"$d.log" 2>&1 &
  PID=$!; PIDS+=("$PID")
  # any HTTP answer means it is up
  for _ in $(seq 1 300); do curl -s -o /dev/null "http://$ML/" && return 0; sleep 0.2; done
}
start_prometheus() { # DIR CONFIG
  taskset -c 1 prometheus --config.file="$2" --storage.tsdb.path="$1" \
    --web.listen-address=$PROM --web.enable-remote-write-receiver >"$1.log" 2>&1 &
  PID=$!; PIDS+=("$PID")
  wait_http "http://$PROM/-/ready"
}
start_vm() { # DIR
  taskset -c 1 victoria-metrics -httpListenAddr=$VM -storageDataPath="$1" >"$1.log" 2>&1 &
  PID=$!; PIDS+=("$PID")
  wait_http "http://$VM/health"
}
stop() { # PID  (SIGTERM, wait for exit)
  kill -TERM "$1"; while kill -0 "$1" 2>/dev/null; do sleep 0.2; done
}
rss_kb() { awk '/^VmRSS/{print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM/{print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
sum_bytes() { # find args...  -> total size of matching files
  find "$@" -type f -printf '%s\n' | awk '{s+=$1} END{print s+0}'
}
ml_sizes() { # LABEL DIR: sample Parquet files, their .series sidecars, catalog segments, the rest
  local pq sc cat all
  pq=$(sum_bytes "$2/samples" -name '*.parquet'); sc=$(sum_bytes "$2/samples" -name '*.series')
  cat=$(sum_bytes "$2/samples/series" -name '*.cat'); all=$(sum_bytes "$2/samples" -not -path '*wal*')
  echo "$1: parquet=$pq series_sidecars=$sc catalog=$cat samples_dir_without_wal=$all files=$(find "$2/samples" -name '*.parquet' | wc -l)"
  find "$2/samples" -name '*.parquet' -printf '  %P %s\n' | sort
  python3 - "$2" <<'PY'
import json, os, sys
d = sys.argv[1]; m = json.load(open(d + "/samples/manifest.json"))
pq = sum(f["bytes"] for f in m["files"])
sc = sum(os.path.getsize(d + "/" + f["path"][:-len(".parquet")] + ".series") for f in m["files"])
cat = sum(os.path.getsize(d + "/" + s) for s in m["catalog_segments"])
print(f"  live (manifest): {len(m['files'])} files, parquet={pq} sidecars={sc} catalog={cat} total={pq+sc+cat}")
PY
  find "$2" -maxdepth 2 -type d -printf '  dir %P\n' | sort
}
empty_prom_cfg() { printf 'global:\n  scrape_interval: 15s\n' >"$WORK/prom-empty.yml"; }

echo "# $(date -u +%FT%TZ) $(nproc) cores; $(prometheus --version 2>&1 | head -1); victoria-metrics $(victoria-metrics -version 2>&1 | head -1)"

for S in $SECTIONS; do case $S in
ingest)
  echo "## ingest: remote write, server on core 1, load on core 0"
  empty_prom_cfg
  LOAD=(--series 100000 --samples-per-series 4 --series-per-request 500 --steps-per-run 40 --runs 3 --concurrency 8)
  for peer in meshlens victoriametrics prometheus; do
    d=$WORK/ingest-$peer; rm -rf "$d" "$d.log"; mkdir -p "$d"
    case $peer in
      meshlens) start_meshlens "$d"; url=http://$ML/api/v1/write;;
      victoriametrics) start_vm "$d"; url=http://$VM/api/v1/write;;
      prometheus) start_prometheus "$d" "$WORK/prom-empty.yml"; url=http://$PROM/api/v1/write;;
    esac
    echo "### $peer"
    taskset -c 0 "$B" metrics-load --url "$url" "${LOAD[@]}"
    echo "server CPU seconds during the load: $(( $(cpu_ticks "$PID") / $(getconf CLK_TCK) ))"
    stop "$PID"
  done
  ;;
disk)
  echo "## disk: 10k Istio series x 6 h at 15 s, ending on a 2 h boundary >= 3 h ago"
  NOW=$(date +%s%3N); H2=7200000
  START=$(( (NOW - 3*3600000) / H2 * H2 - 6*3600000 ))
  DS=(--series 10000 --steps 1440 --start-ms "$START")
  # meshlens, in process: append, flush, compact until nothing is left, shutdown
  d=$WORK/disk-ml-inproc; rm -rf "$d"
  "$B" metrics-write "${DS[@]}" --store "$d"
  ml_sizes "meshlens in-process" "$d"
  # meshlens binary via remote write; flushes every 10 s, compaction every 5 s, SIGTERM
  d=$WORK/disk-ml-rw; rm -rf "$d" "$d.log"; mkdir -p "$d"
  start_meshlens "$d" --samples-flush-interval 10s --maintenance-interval 5s
  taskset -c 0 "$B" metrics-write "${DS[@]}" --url "http://$ML/api/v1/write"
  sleep 30; stop "$PID"
  ml_sizes "meshlens remote write" "$d"
  # Prometheus: blocks made by promtool from OpenMetrics files (one per 2 h)
  om=$WORK/om; p=$WORK/disk-prom; rm -rf "$om" "$p"
  "$B" metrics-write "${DS[@]}" --openmetrics "$om"
  for f in "$om"/*.om; do promtool tsdb create-blocks-from openmetrics "$f" "$p" >/dev/null; rm "$f"; done
  echo "prometheus blocks: bytes=$(sum_bytes "$p") chunks=$(sum_bytes "$p" -path '*chunks*') index=$(sum_bytes "$p" -name index) blocks=$(ls "$p" | wc -l)"
  # VictoriaMetrics: remote write, force_flush, force_merge, stop
  v=$WORK/disk-vm; rm -rf "$v" "$v.log"; mkdir -p "$v"
  start_vm "$v"
  taskset -c 0 "$B" metrics-write "${DS[@]}" --url "http://$VM/api/v1/write"
  curl -sf "http://$VM/internal/force_flush" >/dev/null
  for m in $(date -u -d "@$((START/1000))" +%Y_%m) $(date -u +%Y_%m); do
    curl -sf "http://$VM/internal/force_merge?partition_prefix=$m" >/dev/null || true
  done
  sleep 20; stop "$PID"
  echo "victoriametrics: bytes(data+indexdb)=$(( $(sum_bytes "$v/data") + $(sum_bytes "$v/indexdb") )) data=$(sum_bytes "$v/data") indexdb=$(sum_bytes "$v/indexdb") whole-dir=$(sum_bytes "$v")"
  ;;
memory)
  echo "## memory: 200k active series via remote write (8 samples each), RSS minus a fresh idle process"
  empty_prom_cfg
  for peer in meshlens victoriametrics prometheus; do
    d=$WORK/mem-$peer; rm -rf "$d" "$d.log"; mkdir -p "$d"
    case $peer in
      meshlens) start_meshlens "$d"; url=http://$ML/api/v1/write;;
      victoriametrics) start_vm "$d"; url=http://$VM/api/v1/write;;
      prometheus) start_prometheus "$d" "$WORK/prom-empty.yml"; url=http://$PROM/api/v1/write;;
    esac
    sleep 5; idle=$(rss_kb "$PID")
    taskset -c 0 "$B" metrics-write --url "$url" --series 200000 --steps 8 --end-now --samples-per-series 4 >/dev/null
    sleep 15
    echo "$peer: idle_rss_kb=$idle rss_kb=$(rss_kb "$PID") hwm_kb=$(hwm_kb "$PID")"
    stop "$PID"
  done
  ;;
scrape)
  echo "## scrape: 200 Envoy-like targets x 2000 series at 15 s, meshlens and Prometheus at once"
  cfg=$WORK/scrape.yml
  {
    printf 'global:\n  scrape_interval: 15s\n  scrape_timeout: 10s\nscrape_configs:\n  - job_name: envoy\n    metrics_path: /stats/prometheus\n    static_configs:\n      - targets:\n'
    for i in $(seq 0 199); do printf "          - 127.0.0.1:%d\n" $((21000 + i)); done
  } >"$cfg"
  taskset -c 0 "$B" serve-targets --count 200 --series 2000 --port-base 21000 &
  TP=$!; PIDS+=("$TP")
  wait_http http://127.0.0.1:21199/metrics
  d=$WORK/scrape-ml; p=$WORK/scrape-prom; rm -rf "$d" "$p" "$d.log" "$p.log"; mkdir -p "$d" "$p"
  start_meshlens "$d" --scrape-config "$cfg"; MP=$PID
  start_prometheus "$p" "$cfg"; PP=$PID
  sleep ${WARMUP:-60}
  m0=$(cpu_ticks "$MP"); p0=$(cpu_ticks "$PP"); t0=$(date +%s.%N)
  sleep ${WINDOW:-180}
  m1=$(cpu_ticks "$MP"); p1=$(cpu_ticks "$PP"); t1=$(date +%s.%N)
  hz=$(getconf CLK_TCK)
  awk -v m=$((m1-m0)) -v p=$((p1-p0)) -v hz="$hz" -v t0="$t0" -v t1="$t1" 'BEGIN{
    w=t1-t0; printf "window %.0fs: meshlens %.2f CPU s (%.1f%% of a core), prometheus %.2f CPU s (%.1f%%), ratio meshlens/prometheus %.2f\n",
    w, m/hz, 100*m/hz/w, p/hz, 100*p/hz/w, (p>0? m/p : 0)}'
  echo "prometheus: $(curl -s "http://$PROM/api/v1/query?query=sum(up)" | head -c 200)"
  echo "prometheus: $(curl -s "http://$PROM/api/v1/query?query=sum(scrape_samples_scraped)" | head -c 200)"
  echo "meshlens targets: $(curl -s "http://$ML/api/v1/targets" | python3 -c 'import json,sys,collections; t=json.load(sys.stdin)["data"]["activeTargets"]; print(len(t), dict(collections.Counter(x["health"] for x in t)), sum(1 for x in t if x["lastError"]), "with errors")')"
  echo "rss_kb meshlens=$(rss_kb "$MP") prometheus=$(rss_kb "$PP")"
  stop "$MP"; stop "$PP"; kill "$TP"
  ;;
promql)
  echo "## promql: Istio dashboard queries as query_range (1 h window, 15 s step) over 10k Istio series x 6 h at 15 s"
  NOW=$(date +%s%3N); H2=7200000
  START=$(( (NOW - 3*3600000) / H2 * H2 - 6*3600000 ))
  DS=(--series 10000 --steps 1440 --start-ms "$START")
  # the same samples in both: meshlens written in process (then served by the binary),
  # Prometheus blocks made by promtool from OpenMetrics
  d=$WORK/promql-ml; rm -rf "$d" "$d.log"
  "$B" metrics-write "${DS[@]}" --store "$d"
  om=$WORK/om; p=$WORK/promql-prom; rm -rf "$om" "$p" "$p.log"
  "$B" metrics-write "${DS[@]}" --openmetrics "$om"
  for f in "$om"/*.om; do promtool tsdb create-blocks-from openmetrics "$f" "$p" >/dev/null; rm "$f"; done
  empty_prom_cfg
  start_meshlens "$d"; MP=$PID
  start_prometheus "$p" "$WORK/prom-empty.yml"; PP=$PID
  sleep 5
  QEND=$(( START + 1439*15000 )); QSTART=$(( QEND - 3600000 ))
  taskset -c 0 "$B" promql-query --target "meshlens=http://$ML=$MP" --target "prometheus=http://$PROM=$PP" \
    --queries "${QUERIES:-bench/promql_istio_queries.txt}" --start-ms "$QSTART" --end-ms "$QEND" --step 15s --runs "${RUNS:-7}"
  stop "$MP"; stop "$PP"
  ;;
*) echo "unknown section $S" >&2; exit 2;;
esac; done
