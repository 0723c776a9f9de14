//! The run's report: JSON, a short human summary, and an SVG timeline of
//! faults and operations.

use std::fmt::Write;

use crate::check::linearizable::Checked;
use crate::run::Report;
use crate::workload::Outcome;

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

/// The checker's lines of a summary: verdict, registers, cost, and why any
/// register failed.
pub fn check_summary(c: &Checked) -> String {
    let lin = match c.linearizable {
        Some(true) => "yes",
        Some(false) => "NO",
        None => "unknown (checker budget exhausted: a failure)",
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "linearizable: {lin} ({} registers: {} not linearizable, {} unknown)",
        c.registers,
        c.not_linearizable.len(),
        c.unknown.len()
    );
    let ops: usize = c.keys.values().map(|k| k.operations).sum();
    let unknown: usize = c.keys.values().map(|k| k.unknown_writes).sum();
    let pruned: usize = c.keys.values().map(|k| k.pruned_unknown_writes).sum();
    let largest = c.keys.values().map(|k| k.operations).max().unwrap_or(0);
    let slowest = c
        .keys
        .iter()
        .max_by(|a, b| a.1.time_ms.total_cmp(&b.1.time_ms))
        .map(|(k, v)| format!("{k} {:.0} ms", v.time_ms))
        .unwrap_or_default();
    let _ = writeln!(
        s,
        "check: {ops} operations checked (largest register {largest}; {unknown} unknown writes, {pruned} of them unseen and dropped) in {:.2} s, peak search memory {} (estimate); slowest {slowest}; budget per register {:.0} s, {}",
        c.time_s,
        mib(c.peak_memory_bytes as u64),
        c.budget_per_key.time.as_secs_f64(),
        mib(c.budget_per_key.memory_bytes as u64),
    );
    for k in c.not_linearizable.iter().chain(&c.unknown).take(10) {
        if let Some(why) = c.keys.get(k).and_then(|v| v.reason.as_ref()) {
            let _ = writeln!(s, "  {k}: {why}");
        }
    }
    s
}

pub fn summary(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "rouse-chaos seed {} — {} nodes, {} clients, {:.0}s{}",
        r.seed,
        r.nodes,
        r.clients,
        r.duration_s,
        r.sabotage
            .as_ref()
            .map(|x| format!(", sabotage: {x}"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        s,
        "operations: {} ({} ok, {} failed, {} unknown)",
        r.operations, r.ok, r.failed, r.unknown
    );
    let _ = writeln!(s, "faults: {}", r.faults.len());
    for f in &r.faults {
        let _ = writeln!(
            s,
            "  {:>6.1}s–{:>6.1}s {:<16} {}",
            f.start_ms as f64 / 1000.0,
            f.end_ms as f64 / 1000.0,
            f.kind,
            f.detail
        );
    }
    let _ = writeln!(
        s,
        "registers: {} created, {} with operations, {} deleted after use (clients move on after {} operations or {} unknown writes)",
        r.registers.created,
        r.check.registers,
        r.registers.deleted,
        r.registers.config.ops_per_register,
        r.registers.config.unknown_writes_per_register
    );
    s.push_str(&check_summary(&r.check));
    if let Some(rss) = r.process_peak_rss_bytes {
        let _ = writeln!(s, "peak memory (whole harness process): {}", mib(rss));
    }
    if let Some(f) = &r.history_file {
        let _ = writeln!(
            s,
            "history: {f} (JSON lines; initial value {:?})",
            r.initial_value
        );
    }
    let _ = writeln!(
        s,
        "lost acknowledged writes: {}",
        r.lost_acknowledged_writes
    );
    let _ = writeln!(
        s,
        "converged after heal: {} {}",
        r.converged,
        r.converged_after_s
            .map(|t| format!("({t:.1}s)"))
            .unwrap_or_default()
    );
    let _ = writeln!(s, "write after heal: {}", r.write_after_heal);
    if let Some(t) = &r.triggers {
        let _ = writeln!(
            s,
            "trigger: {} ticks claimed, {} received ({} duplicate deliveries), fired {} failed {} missed {}; claimed twice: {}, lost: {}{}",
            t.claimed, t.received, t.duplicate_deliveries, t.fired, t.failed, t.missed,
            t.trigger_ticks_claimed_twice, t.trigger_ticks_lost,
            if t.settled { "" } else { " (NOT settled: ticks still pending after 90 s)" }
        );
    }
    let _ = writeln!(s, "panics: {}", r.panics.len());
    if let Some(m) = &r.mesh {
        let _ = writeln!(
            s,
            "mesh: {} requests {:?}, answering on every node after heal: {}",
            m.requests, m.answers, m.ok_after_heal
        );
    }
    let _ = writeln!(s, "{}", if r.passed { "PASS" } else { "FAIL" });
    s
}

/// Timelines draw every operation up to this many.
const SVG_ALL_OPERATIONS: usize = 20_000;

/// A timeline: one row per client, one bar per operation (green ok,
/// orange failed, red unknown; reads thin), faults as shaded bands.
pub fn svg(r: &Report) -> String {
    let clients = r
        .history
        .iter()
        .map(|e| e.client)
        .max()
        .map_or(1, |m| m + 1);
    let end = r
        .history
        .iter()
        .map(|e| e.complete_ns / 1_000_000)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let (w, row, top) = (1400.0, 24.0, 60.0);
    let h = top + row * clients as f64 + 40.0;
    let x = |t: u64| 80.0 + (t as f64 / end) * (w - 100.0);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let lin = match r.linearizable {
        Some(true) => "yes",
        Some(false) => "NO",
        None => "unknown",
    };
    let _ = write!(
        s,
        r#"<text x="10" y="20" font-size="14">rouse-chaos seed {} — {} ops, {} faults, linearizable: {lin}, lost: {}, converged: {}{}</text>"#,
        r.seed,
        r.operations,
        r.faults.len(),
        r.lost_acknowledged_writes,
        r.converged,
        if r.passed { " — PASS" } else { " — FAIL" }
    );
    let legend = [
        ("#2e7d32", "ok"),
        ("#ef6c00", "failed"),
        ("#c62828", "unknown (timed out)"),
    ];
    for (i, (color, label)) in legend.iter().enumerate() {
        let lx = w - 420.0 + i as f64 * 130.0;
        let _ = write!(
            s,
            r#"<rect x="{lx}" y="10" width="10" height="10" fill="{color}"/><text x="{}" y="19">{label}</text>"#,
            lx + 14.0
        );
    }
    let _ = write!(
        s,
        r##"<text x="{}" y="34" fill="#555">thick bars: writes, thin: reads; shaded: faults</text>"##,
        w - 420.0
    );
    for (i, f) in r.faults.iter().enumerate() {
        let (x0, x1) = (x(f.start_ms), x(f.end_ms));
        let _ = write!(
            s,
            r##"<rect x="{x0:.1}" y="{top}" width="{:.1}" height="{:.1}" fill="#6c8ebf" opacity="0.18"><title>{}: {}</title></rect>"##,
            (x1 - x0).max(1.0),
            row * clients as f64,
            f.kind,
            f.detail
        );
        let _ = write!(
            s,
            r##"<text x="{x0:.1}" y="{:.1}" fill="#334">{}</text>"##,
            top - 6.0 - (i % 2) as f64 * 12.0,
            f.kind
        );
    }
    for c in 0..clients {
        let y = top + row * c as f64;
        let _ = write!(s, r#"<text x="10" y="{:.1}">client {c}</text>"#, y + 15.0);
    }
    // A long run's every operation would make a file of tens of megabytes:
    // past this many, acknowledged operations are left out.
    let thin = r.history.len() > SVG_ALL_OPERATIONS;
    if thin {
        let _ = write!(
            s,
            r##"<text x="10" y="48" fill="#555">{} operations: only failed and unknown ones drawn</text>"##,
            r.history.len()
        );
    }
    for e in r
        .history
        .iter()
        .filter(|e| !thin || e.outcome != Outcome::Ok)
    {
        let y = top + row * e.client as f64 + if e.op == "read" { 14.0 } else { 6.0 };
        let color = match e.outcome {
            Outcome::Ok => "#2e7d32",
            Outcome::Fail => "#ef6c00",
            Outcome::Unknown => "#c62828",
        };
        let height = if e.op == "read" { 3.0 } else { 6.0 };
        let (x0, x1) = (x(e.invoke_ns / 1_000_000), x(e.complete_ns / 1_000_000));
        let _ = write!(
            s,
            r##"<rect x="{x0:.1}" y="{y:.1}" width="{:.2}" height="{height}" fill="{color}"><title>{} {} {} {:?} {}–{} ms (node {})</title></rect>"##,
            (x1 - x0).max(0.6),
            e.op,
            e.key,
            e.value,
            e.outcome,
            e.invoke_ns / 1_000_000,
            e.complete_ns / 1_000_000,
            e.node
        );
    }
    let _ = write!(
        s,
        r#"<text x="80" y="{:.1}">0 s</text><text x="{:.1}" y="{:.1}">{:.1} s</text>"#,
        h - 10.0,
        w - 60.0,
        h - 10.0,
        end / 1000.0
    );
    s.push_str("</svg>\n");
    s
}
