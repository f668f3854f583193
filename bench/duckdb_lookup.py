"""Trace-by-id in DuckDB over the very Parquet files meshlens wrote.

usage: duckdb_lookup.py DATA_DIR IDS_FILE
Reads the file list from DATA_DIR/manifest.json (files compacted away are
not in it), looks up every id of IDS_FILE (32 hex chars per line).
"""
import json
import os
import statistics
import sys
import time

import duckdb

data_dir, ids_file = sys.argv[1], sys.argv[2]
manifest = json.load(open(os.path.join(data_dir, "manifest.json")))
files = [os.path.join(data_dir, f["path"]) for f in manifest["files"]]
ids = [l.strip() for l in open(ids_file) if l.strip()]
con = duckdb.connect()
con.execute("SET threads TO 2")
query = "SELECT * FROM read_parquet($files) WHERE trace_id = $id"


def lookup(i):
    return con.execute(query, {"files": files, "id": bytes.fromhex(i)}).fetchall()


for i in ids[:20]:
    lookup(i)
lat = []
for i in ids:
    t = time.perf_counter()
    rows = lookup(i)
    lat.append(time.perf_counter() - t)
    assert len(rows) == 8, (i, len(rows))
lat.sort()
p = lambda q: lat[round((len(lat) - 1) * q)] * 1e3
print(f"duckdb {duckdb.__version__}: trace by id over {len(files)} files: p50 {p(0.5):.2f} ms, p99 {p(0.99):.2f} ms, mean {statistics.mean(lat)*1e3:.2f} ms ({len(lat)} lookups)")
