//! Percentiles and number formatting.

use std::time::Duration;

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Dist {
    pub n: usize,
    pub mean: f64,
    pub min: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn dist(values: &[f64]) -> Dist {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return Dist::default();
    }
    Dist {
        n: v.len(),
        mean: v.iter().sum::<f64>() / v.len() as f64,
        min: v[0],
        p50: percentile(&v, 50.0),
        p95: percentile(&v, 95.0),
        p99: percentile(&v, 99.0),
        max: v[v.len() - 1],
    }
}

pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
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

/// Seconds as a human figure: `1.23 s`, `45.6 ms`, `789 µs`.
pub fn secs(s: f64) -> String {
    if !s.is_finite() {
        "n/a".into()
    } else if s >= 100.0 {
        format!("{s:.0} s")
    } else if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 0.001 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{:.0} µs", s * 1e6)
    }
}

pub fn dur(d: Duration) -> String {
    secs(d.as_secs_f64())
}

/// Milliseconds with one decimal.
pub fn ms(s: f64) -> String {
    if s.is_finite() {
        format!("{:.1} ms", s * 1e3)
    } else {
        "n/a".into()
    }
}

/// Microseconds, whole.
pub fn us(s: f64) -> String {
    if s.is_finite() {
        format!("{} µs", int((s * 1e6).round() as u64))
    } else {
        "n/a".into()
    }
}

/// An integer with thousands separators: 1,234,567.
pub fn int(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn rate(per_s: f64) -> String {
    if per_s.is_finite() {
        format!("{} docs/s", int(per_s.round() as u64))
    } else {
        "n/a".into()
    }
}

/// A ratio: `12.3×`, `1.07×`.
pub fn ratio(r: f64) -> String {
    if !r.is_finite() {
        "n/a".into()
    } else if r >= 10.0 {
        format!("{r:.0}×")
    } else {
        format!("{r:.2}×")
    }
}

/// A percentage difference: `+12.3 %`.
pub fn pct(r: f64) -> String {
    if r.is_finite() {
        format!("{:+.1} %", (r - 1.0) * 100.0)
    } else {
        "n/a".into()
    }
}
