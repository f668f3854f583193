"""Exports metrics once with the real OpenTelemetry Python SDK.

usage: otel_metrics.py grpc|http ENDPOINT SERVICE
Records a counter, an up-down counter, a histogram (explicit buckets) and an
observable gauge, exports once (cumulative temporality) and exits.
"""
import sys

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.metrics import Observation

mode, endpoint, service = sys.argv[1], sys.argv[2], sys.argv[3]

if mode == "grpc":
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    exporter = OTLPMetricExporter(endpoint=endpoint, insecure=True)
elif mode == "http":
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    exporter = OTLPMetricExporter(endpoint=endpoint)
else:
    raise SystemExit(f"unknown mode {mode}")

reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
provider = MeterProvider(
    resource=Resource.create({
        "service.name": service,
        "service.namespace": "shop",
        "service.instance.id": "pod-1",
        "deployment.environment": "test",
    }),
    metric_readers=[reader],
    views=[View(instrument_name="http.server.request.duration",
                aggregation=ExplicitBucketHistogramAggregation([0.1, 0.5, 1.0]))],
)
meter = provider.get_meter("meshlens-test", "0.1")

requests = meter.create_counter("http.server.requests", unit="{request}", description="Requests served")
requests.add(3, {"http.request.method": "GET", "http.response.status_code": 200})
requests.add(2, {"http.request.method": "POST", "http.response.status_code": 500})

inflight = meter.create_up_down_counter("http.server.active_requests", unit="{request}")
inflight.add(5, {"http.request.method": "GET"})
inflight.add(-2, {"http.request.method": "GET"})

duration = meter.create_histogram("http.server.request.duration", unit="s", description="Duration")
for v in (0.05, 0.2, 0.3, 0.7, 2.0):
    duration.record(v, {"http.request.method": "GET"})

meter.create_observable_gauge(
    "process.memory.usage", unit="By",
    callbacks=[lambda options: [Observation(1024, {"kind": "rss"})]],
)

ok = reader.force_flush(timeout_millis=30_000)
provider.shutdown()
if not ok:
    raise SystemExit("export failed")
print("ok")
