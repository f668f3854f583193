//! `promql-query`: the PromQL latency benchmark. Runs every query of a file
//! as `query_range` against several servers (meshlens, Prometheus) in
//! turn, interleaved so that machine noise hits them alike, and reports
//! per query the median latency, the ratio to the first server, the number
//! of series returned and the peak memory growth of each server while the
//! query ran (VmHWM after resetting it through /proc/PID/clear_refs).

use std::time::Instant;

pub struct Target {
    pub name: String,
    pub url: String,
    pub pid: Option<u32>,
}

/// `name=http://host:port[=pid]`
pub fn parse_target(s: &str) -> anyhow::Result<Target> {
    let mut it = s.splitn(3, '=');
    let name = it.next().unwrap_or_default().to_string();
    let url = it
        .next()
        .ok_or_else(|| anyhow::anyhow!("target {s:?}: want name=url[=pid]"))?
        .trim_end_matches('/')
        .to_string();
    let pid = it.next().map(|p| p.parse()).transpose()?;
    Ok(Target { name, url, pid })
}

fn status_kb(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

fn reset_peak(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

pub async fn run(
    targets: Vec<Target>,
    queries: std::path::PathBuf,
    start_ms: i64,
    end_ms: i64,
    step: String,
    runs: usize,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&queries)?;
    let qs: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let client = reqwest::Client::new();
    let names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
    print!("| # | query |");
    for n in &names {
        print!(" {n} median ms |");
    }
    for n in names.iter().skip(1) {
        print!(" {} / {n} |", names[0]);
    }
    for n in &names {
        print!(" {n} series | {n} peak MiB |");
    }
    println!();
    let cols = 2 + names.len() * 3 + names.len() - 1;
    println!("|{}", "---|".repeat(cols));
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    for (qi, q) in qs.iter().enumerate() {
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
        let mut series: Vec<usize> = vec![0; targets.len()];
        let mut peak: Vec<Option<f64>> = vec![None; targets.len()];
        let mut base: Vec<Option<u64>> = vec![None; targets.len()];
        for (k, t) in targets.iter().enumerate() {
            if let Some(pid) = t.pid {
                reset_peak(pid);
                base[k] = status_kb(pid, "VmRSS:");
            }
        }
        // One warm-up run each, then `runs` measured, interleaved.
        for r in 0..=runs {
            for (k, t) in targets.iter().enumerate() {
                let form = [
                    ("query", q.to_string()),
                    ("start", format!("{:.3}", start_ms as f64 / 1000.0)),
                    ("end", format!("{:.3}", end_ms as f64 / 1000.0)),
                    ("step", step.clone()),
                ];
                let t0 = Instant::now();
                let resp = client
                    .post(format!("{}/api/v1/query_range", t.url))
                    .form(&form)
                    .send()
                    .await?;
                let status = resp.status();
                let body = resp.bytes().await?;
                let el = t0.elapsed().as_secs_f64() * 1000.0;
                if !status.is_success() {
                    anyhow::bail!(
                        "{} answered {status} to {q}: {}",
                        t.name,
                        String::from_utf8_lossy(&body)
                    );
                }
                if r > 0 {
                    times[k].push(el);
                } else {
                    let v: serde_json::Value = serde_json::from_slice(&body)?;
                    series[k] = v["data"]["result"].as_array().map_or(0, |a| a.len());
                }
            }
        }
        for (k, t) in targets.iter().enumerate() {
            if let (Some(pid), Some(b)) = (t.pid, base[k]) {
                peak[k] = status_kb(pid, "VmHWM:").map(|h| h.saturating_sub(b) as f64 / 1024.0);
            }
        }
        let med: Vec<f64> = times.iter_mut().map(|v| median(v)).collect();
        print!("| {} | `{}` |", qi + 1, q.replace('|', "\\|"));
        for m in &med {
            print!(" {m:.1} |");
        }
        for (k, m) in med.iter().enumerate().skip(1) {
            let r = med[0] / m;
            ratios[k].push(r);
            print!(" {r:.2} |");
        }
        for k in 0..targets.len() {
            let p = peak[k].map_or("-".to_string(), |p| format!("{p:.1}"));
            print!(" {} | {p} |", series[k]);
        }
        println!();
    }
    for (k, r) in ratios.iter_mut().enumerate().skip(1) {
        println!(
            "\nmedian over queries of ({} median / {} median): {:.2} ({} queries)",
            names[0],
            names[k],
            median(r),
            r.len()
        );
    }
    Ok(())
}
