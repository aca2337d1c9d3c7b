//! Measurements: latency histograms, counters, and the server process's
//! CPU time and memory read from /proc.

use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// A latency histogram in microseconds, shared by tasks: the whole run,
/// and the current window of a timeline (so a soak shows whether its
/// last minute is worse than its first).
pub struct Latency(Mutex<Windowed>);

struct Windowed {
    run: Histogram<u64>,
    window: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        let histogram =
            || Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds");
        Self(Mutex::new(Windowed {
            run: histogram(),
            window: histogram(),
        }))
    }
}

impl Latency {
    /// Records one observation.
    pub fn record(&self, d: Duration) {
        let us = (d.as_micros() as u64).clamp(1, 120_000_000);
        if let Ok(mut h) = self.0.lock() {
            let _ = h.run.record(us);
            let _ = h.window.record(us);
        }
    }

    /// Forgets what was recorded (at the end of the warm-up).
    pub fn reset(&self) {
        if let Ok(mut h) = self.0.lock() {
            h.run.reset();
            h.window.reset();
        }
    }

    /// The window since the previous call, which starts a new one.
    pub fn take_window(&self) -> LatencySummary {
        let h = match self.0.lock() {
            Ok(mut w) => {
                let h = w.window.clone();
                w.window.reset();
                h
            }
            Err(e) => e.into_inner().window.clone(),
        };
        summarise(&h)
    }

    /// p50, p99, p99.9 and max in milliseconds.
    pub fn summary(&self) -> LatencySummary {
        let h = self
            .0
            .lock()
            .map(|h| h.run.clone())
            .unwrap_or_else(|e| e.into_inner().run.clone());
        summarise(&h)
    }
}

fn summarise(h: &Histogram<u64>) -> LatencySummary {
    let ms = |us: u64| us as f64 / 1000.0;
    LatencySummary {
        count: h.len(),
        p50_ms: ms(h.value_at_quantile(0.5)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        p999_ms: ms(h.value_at_quantile(0.999)),
        max_ms: ms(h.max()),
    }
}

/// A latency distribution, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct LatencySummary {
    /// Observations.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

/// CPU and memory of a process, from /proc (Linux).
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    /// User + system CPU time in seconds.
    pub cpu_seconds: f64,
    /// Resident memory in bytes.
    pub rss_bytes: u64,
    /// Peak resident memory in bytes.
    pub peak_rss_bytes: u64,
    /// Bytes the process caused to be written to storage (`write_bytes`
    /// of /proc/PID/io): the write-ahead log, the database file and
    /// anything else it wrote.
    pub disk_write_bytes: u64,
}

/// Reads a process's CPU time and memory.
pub fn sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let ticks = 100.0; // USER_HZ on Linux
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|v| v * 1024)
            .unwrap_or(0)
    };
    let disk_write_bytes = std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|l| l.strip_prefix("write_bytes:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0);
    Some(ProcSample {
        disk_write_bytes,
        cpu_seconds: (utime + stime) / ticks,
        rss_bytes: kb("VmRSS:"),
        peak_rss_bytes: kb("VmHWM:"),
    })
}
