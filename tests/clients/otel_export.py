"""Exports a few spans with the real OpenTelemetry Python SDK.

usage: otel_export.py grpc|http|zipkin ENDPOINT SERVICE N
Prints one JSON line: {"trace_ids": [...], "spans": N_SPANS}
"""
import json
import sys

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

mode, endpoint, service, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

if mode == "grpc":
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    exporter = OTLPSpanExporter(endpoint=endpoint, insecure=True)
elif mode == "http":
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    exporter = OTLPSpanExporter(endpoint=endpoint)
elif mode == "zipkin":
    from opentelemetry.exporter.zipkin.json import ZipkinExporter
    exporter = ZipkinExporter(endpoint=endpoint)
else:
    raise SystemExit(f"unknown mode {mode}")

provider = TracerProvider(resource=Resource.create({"service.name": service, "service.version": "1.2.3"}))
provider.add_span_processor(SimpleSpanProcessor(exporter))
tracer = provider.get_tracer("meshlens-test", "0.1")

trace_ids = []
spans = 0
for i in range(n):
    with tracer.start_as_current_span("GET /checkout", kind=SpanKind.SERVER) as root:
        root.set_attribute("http.request.method", "GET")
        root.set_attribute("http.response.status_code", 200)
        root.set_attribute("iteration", i)
        trace_ids.append(format(root.get_span_context().trace_id, "032x"))
        with tracer.start_as_current_span("SELECT orders", kind=SpanKind.CLIENT) as child:
            child.set_attribute("db.system", "postgresql")
            child.set_attribute("peer.service", "orders-db")
            child.add_event("rows fetched", {"rows": 3})
            if i % 2 == 1:
                child.set_status(Status(StatusCode.ERROR, "deadlock"))
        spans += 2

provider.force_flush()
provider.shutdown()
print(json.dumps({"trace_ids": trace_ids, "spans": spans}))
