"""The exact service-graph recompute in DuckDB over the very Parquet files
meshlens wrote: the same pairing (client halves full-outer-joined with
server halves on trace id and key: the client's span id; the server's own id
when shared, else its parent id), the same failure rule, dimensions, peer
names of unpaired halves, and t-digest-style quantiles (approx_quantile).

usage: duckdb_topology.py DATA_DIR [RUNS]
Reads DATA_DIR/topology-files.txt (written by `meshlens-bench topology-exact`):
first line "START_NS END_NS", then one Parquet path per line.
"""
import statistics
import sys
import time

import duckdb

data_dir = sys.argv[1]
runs = int(sys.argv[2]) if len(sys.argv) > 2 else 5
lines = open(f"{data_dir}/topology-files.txt").read().split("\n")
start, end = map(int, lines[0].split())
files = [l for l in lines[1:] if l.strip()]


def attr(key):
    return (f"COALESCE(element_at(attributes, '{key}')[1], "
            f"element_at(resource_attributes, '{key}')[1])")


status = ("COALESCE(TRY_CAST(COALESCE(tag_http_status_code, "
          "element_at(attributes, 'http.response.status_code')[1]) AS INT), 0)")
client_peer = (f"COALESCE({attr('peer.service')}, remote_service_name, {attr('db.name')}, {attr('db.system')}, "
               f"CASE WHEN kind = 4 THEN COALESCE({attr('messaging.system')}, {attr('messaging.destination.name')}) END, "
               f"{attr('server.address')}, {attr('net.peer.name')}, "
               "CASE WHEN starts_with(tag_upstream_cluster, 'outbound|') "
               "THEN NULLIF(split_part(tag_upstream_cluster, '|', 4), '') END)")
server_peer = "COALESCE(remote_service_name, CASE WHEN kind = 5 THEN " + attr("messaging.system") + " END)"
half_cols = f"""service_name AS svc, duration_nano / 1e9 AS secs,
    (status_code = 2 OR element_at(attributes, 'error')[1] IS NOT NULL OR {status} >= 500) AS failed,
    CAST(NULLIF({status}, 0) AS VARCHAR) AS code, NULLIF(tag_response_flags, '-') AS flags,
    COALESCE(tag_istio_canonical_revision, {attr('service.version')}) AS ver,
    COALESCE(tag_istio_namespace, {attr('service.namespace')}, {attr('k8s.namespace.name')}) AS ns, kind"""
query = f"""
WITH s AS (
  SELECT * FROM read_parquet($files)
  WHERE start_time_unix_nano >= {start} AND start_time_unix_nano <= {end} AND service_name IS NOT NULL),
c AS (SELECT trace_id AS tid, span_id AS k, {half_cols}, {client_peer} AS peer FROM s WHERE kind IN (3, 4)),
v AS (SELECT trace_id AS tid, CASE WHEN shared THEN span_id ELSE parent_span_id END AS k, {half_cols},
             CASE WHEN NOT shared AND parent_span_id IS NULL THEN COALESCE({server_peer}, 'user')
                  ELSE {server_peer} END AS peer
      FROM s WHERE kind IN (2, 5))
SELECT CASE WHEN c.tid IS NOT NULL THEN c.svc ELSE v.peer END AS client,
       CASE WHEN v.tid IS NOT NULL THEN v.svc ELSE c.peer END AS server,
       c.ns AS cns, c.ver AS cver, v.ns AS sns, v.ver AS sver,
       COALESCE(c.code, v.code) AS code, concat_ws(',', c.flags, v.flags) AS flags,
       count(*) AS n,
       sum(CASE WHEN COALESCE(c.failed, false) OR COALESCE(v.failed, false) THEN 1 ELSE 0 END) AS nfailed,
       approx_quantile(v.secs, 0.5) AS p50, approx_quantile(v.secs, 0.95) AS p95,
       approx_quantile(v.secs, 0.99) AS p99
FROM c FULL OUTER JOIN v ON c.tid = v.tid AND c.k = v.k
WHERE (c.tid IS NOT NULL AND v.tid IS NOT NULL)
   OR (v.tid IS NULL AND c.peer IS NOT NULL)
   OR (c.tid IS NULL AND v.peer IS NOT NULL)
GROUP BY ALL
"""

con = duckdb.connect()
con.execute("SET threads TO 2")
rows = con.execute(query, {"files": files}).fetchall()  # warm-up
times = []
for _ in range(runs):
    t = time.perf_counter()
    rows = con.execute(query, {"files": files}).fetchall()
    times.append(time.perf_counter() - t)
total = sum(r[8] for r in rows)
print(f"duckdb {duckdb.__version__}: exact recompute over {len(files)} files: median {statistics.median(times):.3f} s, "
      f"min {min(times):.3f} s, max {max(times):.3f} s ({runs} runs after a warm-up; {len(rows)} groups, {total} calls)")
