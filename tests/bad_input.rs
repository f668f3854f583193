//! Hostile and malformed bodies against the real binary: each gets a 4xx
//! with a message a person can act on, the server keeps serving, and what
//! was acknowledged before is still there.
#![allow(clippy::type_complexity)]

mod common;

use common::{Server, client, temp_dir};
use flate2::Compression;
use flate2::write::GzEncoder;
use std::io::Write;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

fn span_json(extra: &str) -> String {
    format!(
        r#"[{{"traceId":"00000000000000aa","id":"00000000000000bb","name":"x","timestamp":{},"duration":5,"localEndpoint":{{"serviceName":"bad-input"}}{extra}}}]"#,
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_micros()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_get_clear_4xx_and_nothing_is_lost() {
    let dir = temp_dir("bad-input");
    let server = Server::start(&dir.join("data"), &["--max-body-bytes", "33554432"]);
    let http = client();

    // Something acknowledged first.
    let good = span_json("");
    let r = http
        .post(server.url("/api/v2/spans"))
        .body(good.clone())
        .header("content-type", "application/json")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 202);

    let many_tags = {
        let tags: Vec<String> = (0..1_000_000).map(|i| format!("\"k{i}\":\"v\"")).collect();
        span_json(&format!(",\"tags\":{{{}}}", tags.join(",")))
    };
    let mut invalid_utf8 = span_json("").into_bytes();
    let pos = invalid_utf8.iter().position(|&b| b == b'x').expect("name");
    invalid_utf8[pos] = 0xff;
    let zeros = vec![0u8; 64 * 1024 * 1024];
    let bomb = gzip(&zeros);
    let truncated = {
        let g = gzip(good.as_bytes());
        g[..g.len() / 2].to_vec()
    };

    struct Case {
        name: &'static str,
        path: &'static str,
        content_type: &'static str,
        encoding: Option<&'static str>,
        body: Vec<u8>,
        status: &'static [u16],
        message: &'static str,
    }
    let cases = vec![
        Case {
            name: "malformed json",
            path: "/api/v2/spans",
            content_type: "application/json",
            encoding: None,
            body: b"[{\"traceId\": ".to_vec(),
            status: &[400],
            message: "",
        },
        Case {
            name: "not an array",
            path: "/api/v2/spans",
            content_type: "application/json",
            encoding: None,
            body: b"{\"a\":1}".to_vec(),
            status: &[400],
            message: "",
        },
        Case {
            name: "short trace id",
            path: "/api/v2/spans",
            content_type: "application/json",
            encoding: None,
            body: span_json("")
                .replace("00000000000000aa", "abc")
                .into_bytes(),
            status: &[400],
            message: "16 or 32 hex",
        },
        Case {
            name: "non-hex trace id",
            path: "/api/v2/spans",
            content_type: "application/json",
            encoding: None,
            body: span_json("")
                .replace("00000000000000aa", "zz000000000000aa")
                .into_bytes(),
            status: &[400],
            message: "hex",
        },
        Case {
            name: "negative duration",
            path: "/api/v2/spans",
            content_type: "application/json",
            encoding: None,
            body: span_json("")
                .replace("\"duration\":5", "\"duration\":-5")
                .into_bytes(),
            status: &[400],
            message: "duration",
        },
        Case {
            name: "far future",
            path: "/api/v2/spans",
            content_type: "application/json",
            encoding: None,
            body: format!(
                r#"[{{"traceId":"00000000000000aa","id":"00000000000000bb","timestamp":{}}}]"#,
                4_102_444_800_000_000i64
            )
            .into_bytes(),
            status: &[400],
            message: "ahead",
        },
        Case {
            name: "10^6 tags",
            path: "/api/v2/spans",
            content_type: "application/json",
            encoding: None,
            body: many_tags.into_bytes(),
            status: &[400],
            message: "at most 10000",
        },
        Case {
            name: "invalid utf-8",
            path: "/api/v2/spans",
            content_type: "application/json",
            encoding: None,
            body: invalid_utf8,
            status: &[400],
            message: "UTF-8",
        },
        Case {
            name: "gzip bomb",
            path: "/api/v2/spans",
            content_type: "application/json",
            encoding: Some("gzip"),
            body: bomb.clone(),
            status: &[413],
            message: "",
        },
        Case {
            name: "truncated gzip",
            path: "/api/v2/spans",
            content_type: "application/json",
            encoding: Some("gzip"),
            body: truncated.clone(),
            status: &[400],
            message: "",
        },
        Case {
            name: "unknown encoding",
            path: "/api/v2/spans",
            content_type: "application/json",
            encoding: Some("br"),
            body: good.clone().into_bytes(),
            status: &[415],
            message: "",
        },
        Case {
            name: "garbage proto3",
            path: "/api/v2/spans",
            content_type: "application/x-protobuf",
            encoding: None,
            body: vec![0xff; 100],
            status: &[400],
            message: "",
        },
        Case {
            name: "garbage v1",
            path: "/api/v1/spans",
            content_type: "application/json",
            encoding: None,
            body: b"[{]".to_vec(),
            status: &[400],
            message: "",
        },
    ];
    for c in &cases {
        let mut req = http
            .post(server.url(c.path))
            .header("content-type", c.content_type)
            .body(c.body.clone());
        if let Some(e) = c.encoding {
            req = req.header("content-encoding", e);
        }
        let r = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", c.name));
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        assert!(
            c.status.contains(&status),
            "{}: status {status}, body {text}",
            c.name
        );
        assert!(
            !text.trim().is_empty(),
            "{}: the answer says what was wrong",
            c.name
        );
        assert!(
            text.contains(c.message),
            "{}: {text:?} should mention {:?}",
            c.name,
            c.message
        );
    }

    // A body announced over the limit is refused before it is read. Sent
    // by hand: a client still writing 40 MB when the 413 arrives and the
    // server closes would see a reset instead of the answer.
    {
        use std::io::{Read, Write};
        let mut tcp =
            std::net::TcpStream::connect(("127.0.0.1", server.http_port)).expect("connect");
        write!(
            tcp,
            "POST /api/v2/spans HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n[",
            40 * 1024 * 1024
        )
        .expect("write");
        let mut answer = Vec::new();
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .expect("timeout");
        let mut buf = [0u8; 4096];
        while let Ok(n) = tcp.read(&mut buf) {
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
            if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.len() > 200 {
                break;
            }
        }
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 413"),
            "over-limit body: {answer}"
        );
    }

    // OTLP/HTTP: wrong content type, garbage protobuf, bad JSON, gzip bomb.
    let otlp: Vec<(&str, &str, Option<&str>, Vec<u8>, u16)> = vec![
        (
            "text/plain",
            "wrong content type",
            None,
            b"hello".to_vec(),
            415,
        ),
        (
            "application/x-protobuf",
            "garbage protobuf",
            None,
            vec![0xff; 64],
            400,
        ),
        (
            "application/json",
            "bad json",
            None,
            b"{\"resourceSpans\": [".to_vec(),
            400,
        ),
        (
            "application/x-protobuf",
            "gzip bomb",
            Some("gzip"),
            bomb,
            413,
        ),
    ];
    for (ct, name, enc, body, want) in otlp {
        let mut req = http
            .post(server.otlp_http_url("/v1/traces"))
            .header("content-type", ct)
            .body(body);
        if let Some(e) = enc {
            req = req.header("content-encoding", e);
        }
        let r = req.send().await.expect("otlp post");
        assert_eq!(r.status().as_u16(), want, "otlp {name}");
        assert!(
            !r.bytes().await.unwrap_or_default().is_empty(),
            "otlp {name}: has a message"
        );
    }

    // Still serving, and the acknowledged span is intact.
    let r = http
        .get(server.url("/api/v2/trace/00000000000000aa"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 200);
    let spans: Vec<serde_json::Value> = r.json().await.expect("json");
    assert_eq!(spans.len(), 1, "only the good span was stored");
    let r = http
        .get(server.url("/api/v2/trace/xyz"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 400, "a bad id in a query is a 400 too");
    let metrics = server.metrics_text().await;
    assert!(
        metrics.contains(
            "meshlens_requests_rejected_total{receiver=\"zipkin_v2_json\",reason=\"malformed\"}"
        ),
        "{metrics}"
    );
}
