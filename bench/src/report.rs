//! Output: a readable table per run on stdout, then one `BENCH_JSON {...}` line for scripts.

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// Latency percentiles of a histogram recorded in µs, in milliseconds.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Summary {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Self {
            count: h.len(),
            p50: ms(0.5),
            p90: ms(0.9),
            p99: ms(0.99),
            p999: ms(0.999),
            max: h.max() as f64 / 1000.0,
        }
    }

    pub fn json(&self) -> Value {
        if self.count == 0 {
            return Value::Null;
        }
        json!({ "p50": round3(self.p50), "p90": round3(self.p90), "p99": round3(self.p99), "p99_9": round3(self.p999), "max": round3(self.max) })
    }

    pub fn line(&self) -> String {
        if self.count == 0 {
            return "-".into();
        }
        format!(
            "p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3} ms",
            self.p50, self.p90, self.p99, self.p999, self.max
        )
    }
}

pub fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

pub fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// Prints a titled two-column table.
pub fn table(title: &str, rows: &[(&str, String)]) {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    println!("== {title} ==");
    for (key, value) in rows {
        println!("  {key:<width$}  {value}");
    }
}

/// Prints the machine-readable line of a run.
pub fn json_line(value: &Value) {
    println!("BENCH_JSON {value}");
}

/// `a / b`, or 0 when nothing was counted.
pub fn per(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}
