//! `GET /api/traces/{id}/extras`: what the Zipkin model cannot carry (OTLP
//! links, event attributes), for the trace view, over real sockets.

mod common;

use common::{Server, client, temp_dir};
use serde_json::{Value, json};

#[tokio::test]
async fn links_and_event_attributes_of_otlp_spans_are_served() {
    let dir = temp_dir("trace-extras");
    let s = Server::start(&dir, &["--no-self-scrape"]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64;
    let body = json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "worker"}}]},
        "scopeSpans": [{"spans": [{
            "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
            "name": "consume", "kind": 5,
            "startTimeUnixNano": now.to_string(), "endTimeUnixNano": (now + 1_000_000).to_string(),
            "events": [{"timeUnixNano": (now + 10_000).to_string(), "name": "retry",
                        "attributes": [{"key": "attempt", "value": {"intValue": "2"}}]}],
            "links": [{"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331",
                       "attributes": [{"key": "messaging.operation", "value": {"stringValue": "publish"}}]}]
        }, {
            "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "aaa19b7ec3c1b174",
            "parentSpanId": "eee19b7ec3c1b174", "name": "plain", "kind": 1,
            "startTimeUnixNano": now.to_string(), "endTimeUnixNano": (now + 10).to_string()
        }]}]
    }]});
    let r = client()
        .post(s.otlp_http_url("/v1/traces"))
        .json(&body)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 200);

    let r = client()
        .get(s.url("/api/traces/5b8efff798038103d269b633813fc60c/extras"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    let spans = v["spans"].as_array().expect("spans");
    assert_eq!(spans.len(), 1, "only the span with links/events: {v}");
    let sp = &spans[0];
    assert_eq!(sp["id"], "eee19b7ec3c1b174");
    assert_eq!(
        sp["links"][0]["traceId"],
        "0af7651916cd43dd8448eb211c80319c"
    );
    assert_eq!(sp["links"][0]["spanId"], "b7ad6b7169203331");
    assert!(
        sp["links"][0]["attributes"].to_string().contains("publish"),
        "{sp}"
    );
    assert_eq!(sp["events"][0]["name"], "retry");
    assert!(
        sp["events"][0]["attributes"]
            .to_string()
            .contains("attempt"),
        "{sp}"
    );

    // Unknown trace: 404; not a trace id: 400 with a message.
    let r = client()
        .get(s.url("/api/traces/00000000000000000000000000000bad/extras"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 404);
    let r = client()
        .get(s.url("/api/traces/not-hex/extras"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 400);
    assert!(!r.text().await.unwrap_or_default().is_empty());
}
