//! Figures from latencies, and the table a run prints.

use std::time::Duration;

use crate::Figures;

pub(crate) fn summarize(name: &str, latencies: &mut [Duration], seconds: f64) -> Figures {
    latencies.sort_unstable();
    let pick = |q: f64| {
        if latencies.is_empty() {
            return 0.0;
        }
        let index = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[index].as_secs_f64() * 1000.0
    };
    Figures {
        scenario: name.to_owned(),
        requests: latencies.len() as u64,
        seconds,
        per_second: latencies.len() as f64 / seconds,
        p50_ms: pick(0.50),
        p99_ms: pick(0.99),
        p999_ms: pick(0.999),
        ..Figures::default()
    }
}

pub(crate) fn print_table(results: &[Figures]) {
    println!(
        "\n{:<40} {:>9} {:>7} {:>10} {:>7} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7} {:>8}",
        "scenario",
        "requests",
        "errors",
        "per sec",
        "ratio",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "RSS MB",
        "CPU s",
        "µs/req",
        "others s"
    );
    for f in results {
        let opt = |v: Option<f64>| {
            v.filter(|v| v.is_finite())
                .map_or("-".to_owned(), |v| format!("{v:.2}"))
        };
        println!(
            "{:<40} {:>9} {:>7} {:>10.0} {:>7} {:>8.2} {:>8.2} {:>8.2} {:>8} {:>7} {:>7} {:>8}",
            f.scenario,
            f.requests,
            f.errors,
            f.per_second,
            opt(f.ratio_to_baseline),
            f.p50_ms,
            f.p99_ms,
            f.p999_ms,
            opt(f.daemon_peak_rss_mb),
            opt(f.daemon_cpu_seconds),
            f.daemon_cpu_us_per_request
                .map_or("-".to_owned(), |v| format!("{v:.0}")),
            opt(f
                .nats_cpu_seconds
                .zip(f.loadgen_cpu_seconds)
                .map(|(a, b)| a + b)),
        );
        if !f.note.is_empty() {
            println!("    {}", f.note);
        }
    }
}
