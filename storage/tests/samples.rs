//! The sample store end to end, in process: append, select, label APIs,
//! flush, restart (WAL replay and catalog segments), out-of-order rules,
//! duplicates, compaction, retention.
#![allow(clippy::unwrap_used)]

use meshlens_storage::samples::{
    Labels, MatchOp, Matcher, RejectReason, Sample, SampleBatch, SeriesWrite, is_stale_nan,
    stale_nan,
};
use meshlens_storage::{Storage, StorageConfig, Telemetry};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("meshlens-samples-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn config(d: &std::path::Path) -> StorageConfig {
    let mut cfg = StorageConfig::new(d);
    cfg.maintenance_interval = Duration::from_secs(3600);
    cfg.samples.flush_age = Duration::from_secs(3600);
    cfg
}

async fn open(cfg: &StorageConfig) -> Arc<Storage> {
    Storage::open(cfg.clone(), Telemetry::new()).await.unwrap()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn labels(name: &str, pairs: &[(&str, &str)]) -> Labels {
    let mut v: Vec<(&str, &str)> = vec![("__name__", name)];
    v.extend_from_slice(pairs);
    Labels::series(v).unwrap()
}

fn write(l: &Labels, pts: &[(i64, f64)]) -> SeriesWrite {
    SeriesWrite {
        labels: l.clone(),
        samples: pts
            .iter()
            .map(|&(t, v)| Sample {
                timestamp_ms: t,
                value: v,
            })
            .collect(),
    }
}

fn batch(series: Vec<SeriesWrite>) -> SampleBatch {
    SampleBatch {
        known: Default::default(),
        series,
        metadata: vec![],
    }
}

fn eq(name: &str, v: &str) -> Matcher {
    Matcher::equal(name, v)
}

/// 50 envoy-like counters over 30 minutes at 15 s.
fn counters(t0: i64) -> Vec<SeriesWrite> {
    (0..50)
        .map(|i| {
            let l = labels(
                "envoy_cluster_upstream_rq_total",
                &[
                    ("cluster", &format!("c{i}")),
                    ("pod", &format!("p{}", i % 5)),
                ],
            );
            let pts: Vec<(i64, f64)> = (0..120)
                .map(|k| (t0 + k * 15_000, (k * (i + 1)) as f64))
                .collect();
            write(&l, &pts)
        })
        .collect()
}

#[tokio::test]
async fn append_select_flush_restart() {
    let d = dir("basic");
    let cfg = config(&d);
    let t0 = now_ms() - 3_600_000;
    let s = open(&cfg).await;
    let rep = s.samples().append(batch(counters(t0))).await.unwrap();
    assert_eq!(rep.accepted, 50 * 120);
    assert_eq!(rep.series_created, 50);
    assert_eq!(rep.rejected_total(), 0);

    let check = |got: Vec<meshlens_storage::samples::SeriesData>| {
        assert_eq!(got.len(), 10, "pod=p1 has 10 series");
        for sd in &got {
            assert_eq!(sd.labels.get("pod"), Some("p1"));
            let i: i64 = sd.labels.get("cluster").unwrap()[1..].parse().unwrap();
            // [t0+10min, t0+20min] = samples 40..=80
            assert_eq!(sd.timestamps.len(), 41);
            assert_eq!(sd.timestamps[0], t0 + 40 * 15_000);
            assert_eq!(sd.values[0], (40 * (i + 1)) as f64);
            assert_eq!(*sd.values.last().unwrap(), (80 * (i + 1)) as f64);
        }
    };
    let m = [
        eq("__name__", "envoy_cluster_upstream_rq_total"),
        eq("pod", "p1"),
    ];
    let (a, b) = (t0 + 600_000, t0 + 1_200_000);
    check(s.samples().select(&m, a, b).await.unwrap());

    // From Parquet after a flush.
    s.samples().flush().await.unwrap();
    let st = s.samples().stats();
    assert_eq!(st.head_samples, 0);
    assert_eq!(st.file_samples, 6000);
    check(s.samples().select(&m, a, b).await.unwrap());
    s.shutdown().await.unwrap();

    // After a restart the catalog comes back from its segments.
    let s = open(&cfg).await;
    check(s.samples().select(&m, a, b).await.unwrap());
    assert_eq!(s.samples().stats().series, 50);
    assert_eq!(
        s.samples().label_values("pod", &[], i64::MIN, i64::MAX, 0),
        vec!["p0", "p1", "p2", "p3", "p4"]
    );
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn wal_replay_without_flush() {
    let d = dir("replay");
    let cfg = config(&d);
    let t0 = now_ms() - 60_000;
    {
        let s = open(&cfg).await;
        let l = labels("x", &[("a", "1")]);
        s.samples()
            .append(batch(vec![write(
                &l,
                &[(t0, 1.0), (t0 + 1000, stale_nan())],
            )]))
            .await
            .unwrap();
        // No shutdown: the process "dies" with the samples only in the WAL.
        std::mem::forget(s);
    }
    // A second store on the same directory replays the WAL. (The first one's
    // WAL thread is still alive but idle; nothing is appended to it again.)
    let s = open(&cfg).await;
    let got = s
        .samples()
        .select(&[eq("__name__", "x")], t0, t0 + 1000)
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].timestamps, vec![t0, t0 + 1000]);
    assert_eq!(got[0].values[0], 1.0);
    assert!(
        is_stale_nan(got[0].values[1]),
        "stale markers are stored bit-exact"
    );
    s.shutdown().await.unwrap();
}

/// Samples sent by series id land in the same series as by labels, follow
/// the same rules, survive a crash through the WAL; an id the catalog does
/// not hold is refused, not stored.
#[tokio::test]
async fn samples_by_known_series_id() {
    use meshlens_storage::samples::KnownSeriesSamples;
    let d = dir("by-id");
    let cfg = config(&d);
    let t0 = now_ms() - 60_000;
    let a = labels("x", &[("a", "1")]);
    let b = labels("x", &[("a", "2")]);
    let smp = |pts: &[(i64, f64)]| -> Vec<Sample> {
        pts.iter()
            .map(|&(t, v)| Sample {
                timestamp_ms: t,
                value: v,
            })
            .collect()
    };
    {
        let s = open(&cfg).await;
        s.samples()
            .append(batch(vec![write(&a, &[(t0, 1.0)])]))
            .await
            .unwrap();
        let mut known = Vec::new();
        s.samples()
            .known_series(&[a.series_id(), b.series_id()], &mut known);
        assert_eq!(known, vec![true, false]);

        let mut by_id = KnownSeriesSamples::default();
        by_id.push(
            a.series_id(),
            &smp(&[(t0 + 1000, 2.0), (t0 - 600_000, 0.5)]),
        );
        by_id.push(b.series_id(), &smp(&[(t0, 7.0)]));
        by_id.push(a.series_id(), &smp(&[(t0 + 2000, 3.0)]));
        let mut req = batch(vec![write(&labels("y", &[]), &[(t0, 5.0)])]);
        req.known = by_id;
        assert_eq!(req.sample_count(), 5);
        let rep = s.samples().append(req).await.unwrap();
        assert_eq!(rep.accepted, 3);
        assert_eq!(
            rep.rejected,
            vec![
                (RejectReason::UnknownSeries, 1),
                (RejectReason::OutOfOrder, 1)
            ]
        );
        let msg = rep.describe_rejections();
        assert!(
            msg.contains("x{a=\"1\"} @ "),
            "examples name the series: {msg}"
        );
        assert!(msg.contains("not in the catalog"), "{msg}");
        // No shutdown: the samples are only in the WAL.
        std::mem::forget(s);
    }
    let s = open(&cfg).await;
    let got = s
        .samples()
        .select(&[eq("__name__", "x")], t0 - 1_000_000, t0 + 10_000)
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "series b was never created");
    assert_eq!(got[0].labels, a);
    assert_eq!(got[0].timestamps, vec![t0, t0 + 1000, t0 + 2000]);
    assert_eq!(got[0].values, vec![1.0, 2.0, 3.0]);
    let y = s
        .samples()
        .select(&[eq("__name__", "y")], t0 - 1000, t0 + 1000)
        .await
        .unwrap();
    assert_eq!(y[0].values, vec![5.0]);
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn out_of_order_duplicates_and_bounds() {
    let d = dir("ooo");
    let mut cfg = config(&d);
    cfg.samples.ooo_window = Duration::from_secs(60);
    let s = open(&cfg).await;
    let now = now_ms();
    let l = labels("g", &[]);
    s.samples()
        .append(batch(vec![write(&l, &[(now - 10_000, 1.0)])]))
        .await
        .unwrap();
    // Within the window: accepted and sorted in. Duplicate time: last wins.
    let rep = s
        .samples()
        .append(batch(vec![write(
            &l,
            &[
                (now - 30_000, 2.0),
                (now - 10_000, 3.0),
                (now - 200_000, 9.0),
                (now + 7_200_000, 1.0),
            ],
        )]))
        .await
        .unwrap();
    assert_eq!(rep.accepted, 2);
    assert_eq!(
        rep.rejected,
        vec![
            (RejectReason::OutOfOrder, 1),
            (RejectReason::TooFarInFuture, 1)
        ]
    );
    assert!(
        rep.describe_rejections().contains("out of order"),
        "{}",
        rep.describe_rejections()
    );
    let got = s
        .samples()
        .select(&[eq("__name__", "g")], now - 100_000, now)
        .await
        .unwrap();
    assert_eq!(got[0].timestamps, vec![now - 30_000, now - 10_000]);
    assert_eq!(got[0].values, vec![2.0, 3.0]);
    // Same after flushing (dedup inside the file) and with a second file.
    s.samples().flush().await.unwrap();
    s.samples()
        .append(batch(vec![write(&l, &[(now - 10_000, 4.0)])]))
        .await
        .unwrap();
    s.samples().flush().await.unwrap();
    let got = s
        .samples()
        .select(&[eq("__name__", "g")], now - 100_000, now)
        .await
        .unwrap();
    assert_eq!(
        got[0].values,
        vec![2.0, 4.0],
        "the later write of a timestamp wins across files"
    );
    // Older than retention.
    let rep = s
        .samples()
        .append(batch(vec![write(
            &labels("h", &[]),
            &[(now - 8 * 86_400_000, 1.0)],
        )]))
        .await
        .unwrap();
    assert_eq!(rep.rejected, vec![(RejectReason::TooOld, 1)]);
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn limits_refuse_new_series_not_old_ones() {
    let d = dir("limits");
    let mut cfg = config(&d);
    cfg.samples.max_series = 2;
    cfg.samples.max_labels_per_series = 3;
    let s = open(&cfg).await;
    let now = now_ms();
    let a = labels("a", &[]);
    let b = labels("b", &[]);
    let c = labels("c", &[]);
    let wide = labels("w", &[("x", "1"), ("y", "2"), ("z", "3")]);
    let rep = s
        .samples()
        .append(batch(vec![
            write(&a, &[(now, 1.0)]),
            write(&wide, &[(now, 1.0)]),
            write(&b, &[(now, 1.0)]),
        ]))
        .await
        .unwrap();
    assert_eq!(rep.accepted, 2);
    assert_eq!(rep.rejected, vec![(RejectReason::LabelLimit, 1)]);
    let rep = s
        .samples()
        .append(batch(vec![
            write(&c, &[(now, 1.0)]),
            write(&a, &[(now + 1, 2.0)]),
        ]))
        .await
        .unwrap();
    assert_eq!(rep.accepted, 1, "existing series keep working at the limit");
    assert_eq!(rep.rejected, vec![(RejectReason::SeriesLimit, 1)]);
    assert!(rep.describe_rejections().contains("limit of 2 series"));
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn label_apis_and_matchers() {
    let d = dir("labels");
    let cfg = config(&d);
    let s = open(&cfg).await;
    let now = now_ms();
    let sw = |n: &str, p: &[(&str, &str)]| write(&labels(n, p), &[(now, 1.0)]);
    s.samples()
        .append(batch(vec![
            sw("up", &[("job", "a"), ("instance", "1")]),
            sw("up", &[("job", "b"), ("instance", "2")]),
            sw(
                "istio_requests_total",
                &[("reporter", "source"), ("response_code", "503")],
            ),
        ]))
        .await
        .unwrap();
    let ss = s.samples();
    assert_eq!(
        ss.label_names(&[], i64::MIN, i64::MAX, 0),
        vec!["__name__", "instance", "job", "reporter", "response_code"]
    );
    assert_eq!(
        ss.label_names(&[vec![eq("__name__", "up")]], i64::MIN, i64::MAX, 0),
        vec!["__name__", "instance", "job"]
    );
    assert_eq!(
        ss.label_values("__name__", &[], i64::MIN, i64::MAX, 1),
        vec!["istio_requests_total"]
    );
    let re = Matcher::new(MatchOp::Regex, "response_code", "5..").unwrap();
    let got = ss.series(&[vec![re]], i64::MIN, i64::MAX, 0);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].get("reporter"), Some("source"));
    // Two matcher sets are a union; time range outside every sample -> nothing.
    assert_eq!(
        ss.series(
            &[vec![eq("job", "a")], vec![eq("job", "b")]],
            i64::MIN,
            i64::MAX,
            0
        )
        .len(),
        2
    );
    assert!(ss.series(&[vec![eq("job", "a")]], 0, 1000, 0).is_empty());
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn compaction_merges_a_closed_partition_and_keeps_answers() {
    let d = dir("compact");
    let cfg = config(&d);
    let s = open(&cfg).await;
    // A partition well in the past (closed).
    let t0 = (now_ms() - 24 * 3_600_000) / 7_200_000 * 7_200_000;
    let all = counters(t0);
    for chunk in all.chunks(10) {
        s.samples().append(batch(chunk.to_vec())).await.unwrap();
        s.samples().flush().await.unwrap();
    }
    assert_eq!(s.samples().stats().files, 5);
    let m = [eq("__name__", "envoy_cluster_upstream_rq_total")];
    let before = s.samples().select(&m, t0, t0 + 3_600_000).await.unwrap();
    assert_eq!(s.samples().compact().await.unwrap(), 1);
    assert_eq!(s.samples().stats().files, 1);
    let after = s.samples().select(&m, t0, t0 + 3_600_000).await.unwrap();
    assert_eq!(before, after);
    assert_eq!(after.len(), 50);
    s.shutdown().await.unwrap();
    let s = open(&cfg).await;
    assert_eq!(
        s.samples().select(&m, t0, t0 + 3_600_000).await.unwrap(),
        after
    );
    assert_eq!(s.samples().series(&[m.to_vec()], t0, t0 + 1, 0).len(), 50);
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn retention_removes_expired_files() {
    let d = dir("retention");
    let mut cfg = config(&d);
    cfg.retention = Duration::from_secs(3 * 3600);
    let s = open(&cfg).await;
    let now = now_ms();
    let l = labels("r", &[]);
    s.samples()
        .append(batch(vec![write(&l, &[(now - 2 * 3_600_000 - 1000, 1.0)])]))
        .await
        .unwrap();
    s.samples().flush().await.unwrap();
    assert_eq!(s.samples().enforce_retention().await.unwrap(), 0);
    s.shutdown().await.unwrap();
    let mut cfg2 = cfg.clone();
    cfg2.retention = Duration::from_secs(3600);
    let s = open(&cfg2).await;
    assert_eq!(s.samples().enforce_retention().await.unwrap(), 1);
    assert!(
        s.samples()
            .select(&[eq("__name__", "r")], 0, now)
            .await
            .unwrap()
            .is_empty()
    );
    s.shutdown().await.unwrap();
}

/// A file with several row groups and many pages: reading a few series
/// (page-index pruning) gives exactly what a full read gives.
#[tokio::test]
async fn few_series_from_a_large_file_match_a_full_read() {
    // Through the in-memory read cache and straight from the object store.
    for cache in [256 << 20, 0] {
        few_series_case(cache).await;
    }
}

async fn few_series_case(cache: usize) {
    let d = dir(&format!("pages-{cache}"));
    let mut cfg = config(&d);
    cfg.samples.read_cache_bytes = cache;
    let s = open(&cfg).await;
    let t0 = now_ms() - 3_600_000;
    let series: Vec<SeriesWrite> = (0..1500)
        .map(|i| SeriesWrite {
            labels: labels("m", &[("i", &i.to_string()), ("g", &(i % 7).to_string())]),
            samples: (0..120)
                .map(|k| Sample {
                    timestamp_ms: t0 + k * 15_000,
                    value: (i * 1000 + k) as f64,
                })
                .collect(),
        })
        .collect();
    s.samples()
        .append(SampleBatch {
            known: Default::default(),
            series,
            metadata: vec![],
        })
        .await
        .unwrap();
    s.samples().flush().await.unwrap();
    assert!(s.samples().stats().files >= 1);
    let all = s
        .samples()
        .select(&[Matcher::equal("__name__", "m")], t0, t0 + 3_600_000)
        .await
        .unwrap();
    assert_eq!(all.len(), 1500);
    for g in ["3", "5"] {
        let few = s
            .samples()
            .select(
                &[
                    Matcher::equal("__name__", "m"),
                    Matcher::equal("g", g),
                    Matcher::new(MatchOp::Regex, "i", "1?[0-9]?[0-9]").unwrap(),
                ],
                t0 + 300_000,
                t0 + 900_000,
            )
            .await
            .unwrap();
        assert!(!few.is_empty());
        for f in &few {
            let full = all.iter().find(|a| a.labels == f.labels).unwrap();
            let want: Vec<(i64, f64)> = full
                .timestamps
                .iter()
                .zip(&full.values)
                .filter(|(t, _)| **t >= t0 + 300_000 && **t <= t0 + 900_000)
                .map(|(t, v)| (*t, *v))
                .collect();
            let got: Vec<(i64, f64)> = f
                .timestamps
                .iter()
                .copied()
                .zip(f.values.iter().copied())
                .collect();
            assert_eq!(got, want, "{}", f.labels);
            assert_eq!(got.len(), 41);
        }
    }
    s.shutdown().await.unwrap();
}

/// `summarize` answers what summarising `select`'s samples answers, for
/// whole-minute and arbitrary windows, over several flushed files (one cut
/// mid-minute), the head, out-of-order writes, rewrites of a stored time,
/// counter resets and staleness markers; with the per-minute summaries
/// built at flush, built on first use after a restart, and turned off.
#[tokio::test]
async fn summaries_match_raw_samples() {
    use meshlens_storage::samples::Summary;
    let d = dir("summaries");
    let mut cfg = config(&d);
    cfg.samples.ooo_window = Duration::from_secs(3 * 3600);
    let s = open(&cfg).await;
    let t0 = (now_ms() - 2 * 3_600_000) / 60_000 * 60_000;
    let mut seed = 11u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let series: Vec<Labels> = (0..40)
        .map(|i| {
            labels(
                "req_total",
                &[("i", &i.to_string()), ("g", &(i % 3).to_string())],
            )
        })
        .collect();
    let mut vals = vec![0.0f64; series.len()];
    // Four chunks of 25 minutes; flush after each but the last (head).
    for chunk in 0..4i64 {
        let mut w = Vec::new();
        for (i, l) in series.iter().enumerate() {
            let mut pts = Vec::new();
            // Scrape offsets that are not whole minutes, different per series.
            let mut t = t0 + chunk * 1_500_000 + 1 + (i as i64 * 977) % 15_000;
            while t < t0 + (chunk + 1) * 1_500_000 {
                vals[i] = match rnd() % 40 {
                    0 => 1.0,
                    1 => stale_nan(),
                    _ => {
                        if vals[i].is_nan() {
                            0.0
                        } else {
                            vals[i] + (rnd() % 9) as f64
                        }
                    }
                };
                pts.push((t, vals[i]));
                t += 15_000;
            }
            w.push(write(l, &pts));
        }
        s.samples().append(batch(w)).await.unwrap();
        if chunk == 1 {
            // Out of order (inside the window) and a rewrite of a stored time.
            s.samples()
                .append(batch(vec![
                    write(&series[3], &[(t0 + 1_234_567, 5.0)]),
                    write(&series[4], &[(t0 + 1 + 4 * 977, 99.0)]),
                ]))
                .await
                .unwrap();
        }
        if chunk < 3 {
            s.samples().flush().await.unwrap();
        }
    }
    let check = |s: Arc<Storage>| async move {
        let mut windows = vec![];
        for (a, b) in [(0, 100), (5, 60), (24, 26), (30, 99), (0, 25), (60, 61)] {
            // Whole minutes, and the same shifted by odd amounts.
            windows.push((t0 + a * 60_000 + 1, t0 + b * 60_000));
            windows.push((t0 + a * 60_000 + 7_777, t0 + b * 60_000 - 1_234));
        }
        // Several windows at once answer what each answers alone.
        let m = [eq("__name__", "req_total")];
        let many = s.samples().summarize_windows(&m, &windows).await.unwrap();
        for (w, &(lo, hi)) in windows.iter().enumerate() {
            let one = s.samples().summarize(&m, lo, hi).await.unwrap();
            let from_many: Vec<(Labels, Summary)> = many
                .iter()
                .filter_map(|(l, v)| v[w].map(|x| (l.clone(), x)))
                .collect();
            assert_eq!(one, from_many, "window {lo}..{hi}");
        }
        for (lo, hi) in windows {
            for m in [vec![eq("__name__", "req_total")], vec![eq("g", "1")]] {
                let mut got = s.samples().summarize(&m, lo, hi).await.unwrap();
                got.sort_by(|a, b| a.0.cmp(&b.0));
                let want: Vec<(Labels, Summary)> = s
                    .samples()
                    .select(&m, lo, hi)
                    .await
                    .unwrap()
                    .into_iter()
                    .filter_map(|x| Summary::of(&x.timestamps, &x.values).map(|y| (x.labels, y)))
                    .collect();
                assert_eq!(got.len(), want.len(), "window {lo}..{hi}");
                for ((gl, g), (wl, w)) in got.iter().zip(&want) {
                    assert_eq!(gl, wl);
                    assert_eq!(
                        (
                            g.first_t,
                            g.last_t,
                            g.count,
                            g.first_v.to_bits(),
                            g.last_v.to_bits()
                        ),
                        (
                            w.first_t,
                            w.last_t,
                            w.count,
                            w.first_v.to_bits(),
                            w.last_v.to_bits()
                        ),
                        "{gl:?} window {lo}..{hi}"
                    );
                    assert!((g.resets - w.resets).abs() <= 1e-9 * w.resets.abs().max(1.0));
                }
            }
        }
    };
    let c = |s: &Arc<Storage>, r: &str| {
        s.telemetry()
            .counter("meshlens_samples_summarized_series_total", &[("read", r)])
    };
    // Whole-minute windows over files alone read summaries, except the two
    // series written out of order.
    let m = [eq("__name__", "req_total")];
    s.samples()
        .summarize(&m, t0 + 1, t0 + 60 * 60_000)
        .await
        .unwrap();
    assert_eq!((c(&s, "summaries"), c(&s, "raw")), (38.0, 2.0));
    s.samples()
        .summarize(&m, t0 + 5_001, t0 + 60 * 60_000)
        .await
        .unwrap();
    assert!(c(&s, "raw") > 2.0, "a window cutting minutes reads raw");
    check(s.clone()).await;
    s.shutdown().await.unwrap();
    // After a restart the summaries are built from the files on first use.
    let s = open(&cfg).await;
    check(s.clone()).await;
    s.shutdown().await.unwrap();
    cfg.samples.rollup_cache_bytes = 0;
    let s = open(&cfg).await;
    check(s.clone()).await;
    s.shutdown().await.unwrap();
}
