//! Results as Markdown tables and an SVG chart of latency percentiles.

use std::fmt::Write as _;

use crate::scenarios::Row;

fn ratio(v: f64, reference: f64) -> String {
    if reference > 0.0 && v > 0.0 {
        format!("{:.2}x", v / reference)
    } else {
        "-".into()
    }
}

/// One table for throughput scenarios, one for the rest; ratios are against the tokio floor of
/// the same scenario in the same run.
pub fn markdown(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| scenario | server | req/s | vs floor | p50 us | p90 us | p99 us | p99.9 us | user us/req | vs floor | sys us/req | syscalls/req | peak RSS MB | errors |");
    let _ = writeln!(
        out,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in rows.iter().filter(|r| r.rps > 0.0) {
        let floor = rows
            .iter()
            .find(|f| f.scenario == r.scenario && f.server == "tokio floor");
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.3} | {} | {:.3} | {:.2} | {:.1} | {:.0} |",
            r.scenario,
            r.server,
            r.rps,
            floor.map(|f| ratio(r.rps, f.rps)).unwrap_or_default(),
            r.p50_us,
            r.p90_us,
            r.p99_us,
            r.p999_us,
            r.user_us_per_req,
            floor.map(|f| ratio(r.user_us_per_req, f.user_us_per_req)).unwrap_or_default(),
            r.sys_us_per_req,
            if r.syscalls_per_req < 0.0 { f64::NAN } else { r.syscalls_per_req },
            r.peak_rss_mb,
            r.errors
        );
    }
    let others: Vec<&Row> = rows.iter().filter(|r| !r.extra.is_empty()).collect();
    if !others.is_empty() {
        let _ = writeln!(out, "\n| scenario | server | figures |\n|---|---|---|");
        for r in others {
            let figures: Vec<String> = r
                .extra
                .iter()
                .map(|(k, v)| format!("{k} {}", short(*v)))
                .collect();
            let _ = writeln!(
                out,
                "| {} | {} | {} |",
                r.scenario,
                r.server,
                figures.join(", ")
            );
        }
    }
    out
}

fn short(v: f64) -> String {
    if v.fract() == 0.0 || v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Grouped bars: p50, p99 and p99.9 per scenario and server, on a log scale.
pub fn svg(rows: &[Row]) -> String {
    let bars: Vec<&Row> = rows.iter().filter(|r| r.rps > 0.0).collect();
    let (left, top, bar_h, gap) = (230.0, 40.0, 14.0, 10.0);
    let width = 900.0;
    let plot_w = width - left - 40.0;
    let height = top + bars.len() as f64 * (3.0 * bar_h + gap) + 50.0;
    let max = bars.iter().map(|r| r.p999_us).fold(10.0, f64::max);
    let scale = |v: f64| plot_w * (v.max(1.0).log10() / max.log10());
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{left}" y="20" font-size="14">Round-trip latency (microseconds, log scale): p50, p99, p99.9</text>"#
    );
    let colours = ["#4c78a8", "#f58518", "#e45756"];
    for (i, r) in bars.iter().enumerate() {
        let y0 = top + i as f64 * (3.0 * bar_h + gap);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{} / {}</text>"#,
            left - 8.0,
            y0 + 1.8 * bar_h,
            r.scenario,
            r.server
        );
        for (j, (v, c)) in [r.p50_us, r.p99_us, r.p999_us]
            .iter()
            .zip(colours)
            .enumerate()
        {
            let y = y0 + j as f64 * bar_h;
            let w = scale(*v);
            let _ = writeln!(
                s,
                r#"<rect x="{left}" y="{y}" width="{w:.1}" height="{}" fill="{c}"/><text x="{:.1}" y="{}">{v:.0}</text>"#,
                bar_h - 2.0,
                left + w + 4.0,
                y + bar_h - 4.0
            );
        }
    }
    let _ = writeln!(s, "</svg>");
    s
}
