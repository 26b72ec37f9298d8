//! Results of `aerodb-bench`: per workload and system, the repetitions' rates and latencies; rendered as a
//! markdown table (median, min–max, ratio to the ceiling, AeroDB's ratio to each peer), a JSON document and one
//! SVG bar chart per workload.

use std::fmt::Write as _;

use crate::median_min_max;

/// One repetition's figures.
#[derive(Clone, Copy, Debug, Default)]
pub struct Measure {
    /// Operations (records) per second, or the workload's unit.
    pub rate: f64,
    /// Median latency, microseconds (0: not measured).
    pub p50_us: f64,
    /// 99th percentile latency, microseconds (0: not measured).
    pub p99_us: f64,
}

/// A system's repetitions of one workload.
#[derive(Clone, Debug)]
pub struct Series {
    /// The system.
    pub system: String,
    /// Whether it is the machine's ceiling (no database).
    pub ceiling: bool,
    /// Whether it is AeroDB.
    pub aerodb: bool,
    /// The repetitions.
    pub runs: Vec<Measure>,
}

/// One workload's results.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Short id (file names).
    pub id: &'static str,
    /// Title.
    pub title: String,
    /// Unit of `rate`.
    pub unit: &'static str,
    /// Whether lower is better (latencies, lags) rather than higher (rates).
    pub lower_is_better: bool,
    /// The systems.
    pub series: Vec<Series>,
}

impl Series {
    fn med(&self, f: impl Fn(&Measure) -> f64) -> (f64, f64, f64) {
        median_min_max(&self.runs.iter().map(f).collect::<Vec<_>>())
    }
}

fn fmt(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

impl Workload {
    /// The markdown table.
    #[must_use]
    pub fn markdown(&self) -> String {
        let mut out = format!("#### {}\n\n", self.title);
        let aero = self.series.iter().find(|s| s.aerodb).map(|s| s.med(|m| m.rate).0);
        let ceiling = self
            .series
            .iter()
            .find(|s| s.ceiling)
            .map(|s| s.med(|m| m.rate).0);
        let lat = self.series.iter().any(|s| s.runs.iter().any(|m| m.p99_us > 0.0));
        let _ = write!(out, "| system | {} median (min–max) |", self.unit);
        if lat {
            out.push_str(" p50 µs | p99 µs |");
        }
        if ceiling.is_some() {
            out.push_str(" ratio to ceiling |");
        }
        if aero.is_some() {
            out.push_str(if self.lower_is_better {
                " this ÷ AeroDB (> 1: AeroDB lower) |"
            } else {
                " AeroDB ÷ this |"
            });
        }
        out.push('\n');
        let cols = 2 + if lat { 2 } else { 0 } + usize::from(ceiling.is_some()) + usize::from(aero.is_some());
        out.push_str(&"|---".repeat(cols));
        out.push_str("|\n");
        for s in &self.series {
            let (m, lo, hi) = s.med(|m| m.rate);
            let _ = write!(out, "| {} | {} ({}–{}) |", s.system, fmt(m), fmt(lo), fmt(hi));
            if lat {
                let _ = write!(
                    out,
                    " {} | {} |",
                    fmt(s.med(|m| m.p50_us).0),
                    fmt(s.med(|m| m.p99_us).0)
                );
            }
            if let Some(c) = ceiling {
                let _ = write!(out, " {:.2} |", m / c);
            }
            if let Some(a) = aero {
                if s.aerodb {
                    out.push_str(" — |");
                } else if self.lower_is_better {
                    let _ = write!(out, " **{:.2}** |", m / a);
                } else {
                    let _ = write!(out, " **{:.2}** |", a / m);
                }
            }
            out.push('\n');
        }
        out
    }

    /// The JSON object.
    #[must_use]
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "title": self.title,
            "unit": self.unit,
            "lower_is_better": self.lower_is_better,
            "series": self.series.iter().map(|s| {
                let (m, lo, hi) = s.med(|m| m.rate);
                serde_json::json!({
                    "system": s.system, "ceiling": s.ceiling, "aerodb": s.aerodb,
                    "median": m, "min": lo, "max": hi,
                    "p50_us": s.med(|m| m.p50_us).0, "p99_us": s.med(|m| m.p99_us).0,
                    "runs": s.runs.iter().map(|r| serde_json::json!({"rate": r.rate, "p50_us": r.p50_us, "p99_us": r.p99_us})).collect::<Vec<_>>(),
                })
            }).collect::<Vec<_>>(),
        })
    }

    /// A horizontal bar chart: the median of each system, with its min–max as a whisker.
    #[must_use]
    pub fn svg(&self) -> String {
        let (w, row, left, top) = (760.0, 30.0, 260.0, 50.0);
        let h = top + row * self.series.len() as f64 + 40.0;
        let max = self
            .series
            .iter()
            .map(|s| s.med(|m| m.rate).2)
            .fold(0.0_f64, f64::max)
            .max(f64::MIN_POSITIVE);
        let scale = (w - left - 90.0) / max;
        let mut out = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" \
             font-size=\"13\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
             <text x=\"10\" y=\"22\" font-size=\"15\" font-weight=\"bold\">{}</text>\n\
             <text x=\"10\" y=\"40\" fill=\"#555\">{} — median of the repetitions, whisker: min–max{}</text>\n",
            xml(&self.title),
            xml(self.unit),
            if self.lower_is_better { " (lower is better)" } else { "" }
        );
        for (i, s) in self.series.iter().enumerate() {
            let (m, lo, hi) = s.med(|m| m.rate);
            let y = top + row * i as f64;
            let color = if s.aerodb || s.system.starts_with("AeroDB") {
                "#2b6cb0"
            } else if s.ceiling {
                "#888"
            } else {
                "#dd8452"
            };
            let _ = writeln!(
                out,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n\
                 <rect x=\"{left}\" y=\"{}\" width=\"{:.1}\" height=\"{}\" fill=\"{color}\"/>\n\
                 <line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{}\" y2=\"{}\" stroke=\"black\"/>\n\
                 <text x=\"{:.1}\" y=\"{}\">{}</text>",
                left - 8.0,
                y + row * 0.6,
                xml(&s.system),
                y + 4.0,
                m * scale,
                row - 8.0,
                left + lo * scale,
                left + hi * scale,
                y + row / 2.0,
                y + row / 2.0,
                left + hi * scale + 6.0,
                y + row * 0.6,
                fmt(m)
            );
        }
        out.push_str("</svg>\n");
        out
    }
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}
