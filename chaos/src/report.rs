//! The summary table (stdout) and the JSON report (`--report FILE`).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use serde_json::{json, Value};

use crate::oracle::{percentiles, OwnerChange, Verdict};
use crate::world::{lock, World};
use crate::Cli;

/// Everything a report needs.
#[derive(Debug)]
pub struct Report<'a> {
    pub cli: &'a Cli,
    pub seed: u64,
    pub replay: &'a str,
    pub world: &'a World,
    pub verdict: &'a Verdict,
    pub elapsed: Duration,
}

fn pct(values: &[u64]) -> String {
    match percentiles(values) {
        Some((p50, p99)) => format!("p50 {p50} ms, p99 {p99} ms (n={})", values.len()),
        None => "-".into(),
    }
}

impl Report<'_> {
    fn owner_changes(&self, class: OwnerChange) -> &[u64] {
        self.verdict
            .owner_changes
            .get(&class)
            .map_or(&[][..], Vec::as_slice)
    }

    fn faults_by_kind(&self) -> BTreeMap<String, usize> {
        let mut kinds = BTreeMap::new();
        for fault in lock(&self.world.faults).iter() {
            *kinds.entry(fault.kind.clone()).or_default() += 1;
        }
        kinds
    }

    fn count(&self, name: &str) -> usize {
        self.verdict.counts.get(name).copied().unwrap_or(0)
    }

    /// The human summary.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let mode = match &self.cli.scenario {
            Some(name) => format!("scenario {name}"),
            None => "random".into(),
        };
        let _ = writeln!(
            out,
            "\n== ytcaption-chaos: {mode}, {} nodes, {:?} storage, seed {}, {:.0} s ==",
            self.cli.nodes,
            self.cli.storage,
            self.seed,
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(out, "{:<34} {}", "faults", lock(&self.world.faults).len());
        for (kind, n) in self.faults_by_kind() {
            let _ = writeln!(out, "  {kind:<32} {n}");
        }
        for name in [
            "submitted",
            "not acknowledged",
            "acknowledged",
            "completed",
            "completed split across nodes",
            "failed as expected",
            "cancelled by the client",
            "cancelled too late (finished)",
            "orphaned blobs after a cancel",
            "lost",
            "duplicated (job)",
            "duplicated (webhook)",
            "duplicated (email)",
            "webhook redelivered (same id)",
            "email redelivered (same id)",
            "stale copies",
            "steps started twice",
            "jobs with a violation",
        ] {
            let _ = writeln!(out, "{name:<34} {}", self.count(name));
        }
        let _ = writeln!(
            out,
            "{:<34} {}",
            "webhooks refused in outages",
            *lock(&self.world.hooks.refused)
        );
        let _ = writeln!(
            out,
            "{:<34} {}",
            "detection time",
            pct(&self.verdict.detection_ms)
        );
        for class in OwnerChange::ALL {
            let values = self.verdict.owner_changes.get(&class);
            // The takeover line always shows; the others only when they happened.
            if values.is_some() || class == OwnerChange::Takeover {
                let _ = writeln!(
                    out,
                    "{:<34} {}",
                    class.label(),
                    pct(values.map_or(&[][..], Vec::as_slice))
                );
            }
        }
        let _ = writeln!(
            out,
            "{:<34} {}",
            "job latency (ack to terminal)",
            pct(&self.verdict.latency_ms)
        );
        for note in &self.verdict.notes {
            let _ = writeln!(out, "note: {note}");
        }
        if self.verdict.violations.is_empty() {
            let _ = writeln!(out, "RESULT: PASS (no invariant broken)");
        } else {
            let _ = writeln!(
                out,
                "RESULT: FAIL, {} violation(s):",
                self.verdict.violations.len()
            );
            for violation in &self.verdict.violations {
                let _ = writeln!(out, "  - {violation}");
            }
        }
        let _ = writeln!(out, "seed {}; replay: {}", self.seed, self.replay);
        out
    }

    /// The machine-readable report.
    pub fn json(&self) -> Value {
        let stats = |values: &[u64]| match percentiles(values) {
            Some((p50, p99)) => {
                json!({"p50_ms": p50, "p99_ms": p99, "n": values.len(), "values_ms": values})
            }
            None => json!({"n": 0}),
        };
        let faults: Vec<Value> = lock(&self.world.faults)
            .iter()
            .map(|f| {
                json!({
                    "t_s": (f.t_s * 10.0).round() / 10.0, "at_ms": f.at_ms, "kind": f.kind,
                    "target": f.target, "detail": f.detail, "detection_ms": f.detection_ms,
                })
            })
            .collect();
        json!({
            "pass": self.verdict.violations.is_empty(),
            "seed": self.seed,
            "replay": self.replay,
            "mode": self.cli.scenario.clone().unwrap_or_else(|| "random".into()),
            "nodes": self.cli.nodes,
            "storage": format!("{:?}", self.cli.storage).to_lowercase(),
            "elapsed_s": self.elapsed.as_secs_f64(),
            "faults_by_kind": self.faults_by_kind(),
            "faults": faults,
            "counts": self.verdict.counts,
            "webhooks_refused_in_outages": *lock(&self.world.hooks.refused),
            "detection": stats(&self.verdict.detection_ms),
            "takeover": stats(self.owner_changes(OwnerChange::Takeover)),
            "owner_changes": OwnerChange::ALL
                .iter()
                .map(|class| (class.as_str(), stats(self.owner_changes(*class))))
                .collect::<BTreeMap<_, _>>(),
            "latency": stats(&self.verdict.latency_ms),
            "violations": self.verdict.violations,
            "notes": self.verdict.notes,
            "jobs": self.verdict.jobs,
        })
    }
}
