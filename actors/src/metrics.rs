//! The node's Prometheus metrics. One [`Metrics`] per node, shared by the job log, the saga,
//! the workers, the supervisor and the HTTP layer, which renders it at `/metrics`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use ytcaption_protocol::{Event, Stage, Step};

/// Every metric the node exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Jobs by state (the current stage of every job not deleted).
    pub jobs: IntGaugeVec,
    pub events: IntCounterVec,
    pub step_seconds: HistogramVec,
    pub step_outcomes: IntCounterVec,
    /// Jobs waiting for a driver slot.
    pub queue_depth: IntGauge,
    /// Jobs with a running driver.
    pub active_jobs: IntGauge,
    /// Saga drivers started: one per run of a job this node drives.
    pub drivers_started: IntCounter,
    pub restarts: IntCounterVec,
    pub realtime_factor: Histogram,
    pub audio_seconds: IntCounter,
    pub download_bytes: IntCounter,
    pub http_requests: IntCounterVec,
    pub http_seconds: HistogramVec,
    pub notifications: IntCounterVec,
    /// Cluster members by state (alive, suspect, down), this node excluded.
    pub members: IntGaugeVec,
    /// Cluster messages refused because they did not decode, by reason code.
    pub wire_errors: IntCounterVec,
    /// Jobs this node took over from a lost owner, or received by a hand-over.
    pub takeovers: IntCounter,
    /// Milliseconds from a member's last heartbeat answer to it being marked down.
    pub detection_seconds: Histogram,
    /// Replication of a job log to a peer, by outcome.
    pub replications: IntCounterVec,
}

/// Metric constructors fail only on invalid names or label sets; ours are constants, checked
/// by the unit test below.
const VALID: &str = "metric definitions are constants";

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: T) -> T {
    if let Err(error) = registry.register(Box::new(metric.clone())) {
        tracing::error!(%error, "metric registration failed");
    }
    metric
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let seconds = vec![
            0.001, 0.005, 0.025, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 1800.0,
        ];
        let r = &registry;
        Metrics {
            jobs: register(
                r,
                IntGaugeVec::new(Opts::new("ytcaption_jobs", "Jobs by state"), &["state"])
                    .expect(VALID),
            ),
            events: register(
                r,
                counter_vec(
                    "ytcaption_job_events_total",
                    "Saga events recorded, by type",
                    &["event"],
                ),
            ),
            step_seconds: register(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "ytcaption_step_duration_seconds",
                        "Duration of step attempts",
                    )
                    .buckets(seconds.clone()),
                    &["step"],
                )
                .expect(VALID),
            ),
            step_outcomes: register(
                r,
                counter_vec(
                    "ytcaption_step_attempts_total",
                    "Step attempts by outcome",
                    &["step", "outcome"],
                ),
            ),
            queue_depth: register(
                r,
                gauge("ytcaption_queue_depth", "Jobs waiting for a driver slot"),
            ),
            active_jobs: register(r, gauge("ytcaption_active_jobs", "Jobs being driven")),
            drivers_started: register(
                r,
                IntCounter::new(
                    "ytcaption_job_drivers_started_total",
                    "Saga drivers started (a job's run on this node, resumed or taken over)",
                )
                .expect(VALID),
            ),
            restarts: register(
                r,
                counter_vec(
                    "ytcaption_supervisor_restarts_total",
                    "Child failures handled by the supervisor",
                    &["child", "role"],
                ),
            ),
            realtime_factor: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "ytcaption_realtime_factor",
                        "Engine seconds per second of audio",
                    )
                    .buckets(vec![0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0]),
                )
                .expect(VALID),
            ),
            audio_seconds: register(
                r,
                IntCounter::new(
                    "ytcaption_audio_seconds_total",
                    "Seconds of audio transcribed",
                )
                .expect(VALID),
            ),
            download_bytes: register(
                r,
                IntCounter::new("ytcaption_download_bytes_total", "Bytes downloaded").expect(VALID),
            ),
            http_requests: register(
                r,
                counter_vec(
                    "ytcaption_http_requests_total",
                    "HTTP requests by route and status",
                    &["route", "status"],
                ),
            ),
            http_seconds: register(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "ytcaption_http_request_duration_seconds",
                        "HTTP request latency",
                    )
                    .buckets(vec![
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
                    ]),
                    &["route"],
                )
                .expect(VALID),
            ),
            notifications: register(
                r,
                counter_vec(
                    "ytcaption_notifications_total",
                    "Notification attempts by channel and outcome",
                    &["channel", "outcome"],
                ),
            ),
            members: register(
                r,
                IntGaugeVec::new(
                    Opts::new("ytcaption_cluster_members", "Cluster peers by state"),
                    &["state"],
                )
                .expect(VALID),
            ),
            wire_errors: register(
                r,
                counter_vec(
                    "ytcaption_cluster_wire_errors_total",
                    "Cluster messages refused because they did not decode",
                    &["code"],
                ),
            ),
            takeovers: register(
                r,
                IntCounter::new(
                    "ytcaption_cluster_takeovers_total",
                    "Jobs taken over from a lost owner or handed over by a draining one",
                )
                .expect(VALID),
            ),
            detection_seconds: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "ytcaption_cluster_detection_seconds",
                        "Time from a peer's last heartbeat answer to it being marked down",
                    )
                    .buckets(vec![0.001, 0.01, 0.1, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0]),
                )
                .expect(VALID),
            ),
            replications: register(
                r,
                counter_vec(
                    "ytcaption_cluster_replications_total",
                    "Job-log replications to a peer, by outcome",
                    &["outcome"],
                ),
            ),
            registry,
        }
    }

    /// Counts a cluster message that did not decode.
    pub fn wire_error(&self, code: &str) {
        self.wire_errors.with_label_values(&[code]).inc();
    }

    /// Counts a saga event.
    pub fn observe_event(&self, event: &Event) {
        self.events.with_label_values(&[event.name()]).inc();
    }

    /// A job moved from one state to another (`None`: it appeared or disappeared).
    pub fn transition(&self, from: Option<Stage>, to: Option<Stage>) {
        if from == to {
            return;
        }
        if let Some(stage) = from {
            self.jobs.with_label_values(&[stage.as_str()]).dec();
        }
        if let Some(stage) = to {
            self.jobs.with_label_values(&[stage.as_str()]).inc();
        }
    }

    pub fn observe_step(&self, step: Step, ok: bool, millis: u64) {
        self.step_seconds
            .with_label_values(&[step.as_str()])
            .observe(millis as f64 / 1000.0);
        self.step_outcomes
            .with_label_values(&[step.as_str(), if ok { "ok" } else { "error" }])
            .inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect(VALID)
}

fn gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::new(name, help).expect(VALID)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_registers_and_renders() {
        let metrics = Metrics::new();
        metrics.transition(None, Some(Stage::Accepted));
        metrics.transition(Some(Stage::Accepted), Some(Stage::Completed));
        metrics.observe_step(Step::Transcribe, true, 1500);
        metrics
            .restarts
            .with_label_values(&["transcriber-1", "transcriber"])
            .inc();
        metrics
            .http_requests
            .with_label_values(&["jobs", "202"])
            .inc();
        metrics
            .http_seconds
            .with_label_values(&["jobs"])
            .observe(0.001);
        metrics
            .notifications
            .with_label_values(&["webhook", "delivered"])
            .inc();
        metrics.realtime_factor.observe(0.05);
        let text = metrics.render();
        for name in [
            "ytcaption_jobs{state=\"completed\"} 1",
            "ytcaption_jobs{state=\"accepted\"} 0",
            "ytcaption_step_duration_seconds_count{step=\"transcribe\"} 1",
            "ytcaption_supervisor_restarts_total",
            "ytcaption_queue_depth",
            "ytcaption_realtime_factor",
            "ytcaption_download_bytes_total",
            "ytcaption_http_requests_total",
            "ytcaption_notifications_total",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        assert!(!text.contains("invalid"), "{text}");
    }
}
