//! Server-Sent Events: the wire format, a response body fed from a channel, and the loop that
//! follows one job until it ends.
//!
//! The stream starts with the job's current view (`event: state`), then sends `state` on every
//! durable change and `progress` while transcribing, and closes after a terminal state. A
//! comment every `keep_alive` keeps proxies from timing the connection out and notices a
//! client that went away.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Frame;
use serde_json::json;
use tokio::sync::{broadcast, mpsc, watch};
use ytcaption_actors::hub::Update;
use ytcaption_actors::node::Node;
use ytcaption_protocol::{JobState, Stage};

use super::view::{job_view, overall_progress};

/// Interval of keep-alive comments.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// One event: optional `event:` name, then the data, one `data:` line per line of it.
pub fn event(name: Option<&str>, data: &str) -> Bytes {
    let mut out = String::with_capacity(data.len() + 32);
    if let Some(name) = name {
        out.push_str("event: ");
        out.push_str(name);
        out.push('\n');
    }
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(line.strip_suffix('\r').unwrap_or(line));
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

/// A comment line, ignored by clients.
pub fn comment(text: &str) -> Bytes {
    Bytes::from(format!(": {}\n\n", text.replace('\n', " ")))
}

/// A response body that yields whatever is sent into its channel, and ends when every sender
/// is gone. Dropping it (the client left) makes the senders fail.
#[derive(Debug)]
pub struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

/// A channel and the body it feeds.
pub fn channel(capacity: usize) -> (mpsc::Sender<Bytes>, ChannelBody) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (tx, ChannelBody { rx })
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes))))
    }
}

/// The state event of a job.
pub fn state_event(job: &JobState, progress: Option<f32>, base_url: &str) -> Bytes {
    event(
        Some("state"),
        &job_view(job, progress, base_url).to_string(),
    )
}

/// The progress event while transcribing: overall and step percent.
pub fn progress_event(stage: Stage, step_percent: f32) -> Bytes {
    let data = json!({
        "percent": overall_progress(stage, Some(step_percent)),
        "stage": stage.as_str(),
        "step_percent": (f64::from(step_percent) * 10.0).round() / 10.0,
    });
    event(Some("progress"), &data.to_string())
}

/// What the loop follows.
#[derive(Debug)]
pub struct Follow {
    pub node: Node,
    /// Subscribed before `first` was read, so no change in between is lost.
    pub updates: broadcast::Receiver<Update>,
    pub first: JobState,
    pub base_url: String,
    pub keep_alive: Duration,
    /// Flips to true when the server shuts down: the stream ends.
    pub shutdown: watch::Receiver<bool>,
}

fn ended(job: &JobState) -> bool {
    job.is_terminal()
}

/// Sends the job's events into `tx` until the job ends, the client leaves, or the server
/// shuts down.
pub async fn follow(mut follow: Follow, tx: mpsc::Sender<Bytes>) {
    let base = follow.base_url.clone();
    let mut stage = follow.first.stage;
    let first = state_event(&follow.first, follow.node.progress(&follow.first.id), &base);
    if tx.send(first).await.is_err() || ended(&follow.first) {
        return;
    }
    let id = follow.first.id.clone();
    let start = tokio::time::Instant::now() + follow.keep_alive;
    let mut keep_alive = tokio::time::interval_at(start, follow.keep_alive);
    loop {
        let chunk = tokio::select! {
            update = follow.updates.recv() => match update {
                Ok(Update::State(job)) => {
                    stage = job.stage;
                    let done = ended(&job);
                    let chunk = state_event(&job, follow.node.progress(&id), &base);
                    if done {
                        let _ = tx.send(chunk).await;
                        return;
                    }
                    chunk
                }
                Ok(Update::Progress { percent }) => {
                    if stage != Stage::Transcribing {
                        continue;
                    }
                    progress_event(stage, percent)
                }
                // Lagged behind, or the hub dropped the channel: read the state again.
                Err(error) => {
                    let Ok(Some(job)) = follow.node.job(&id).await else {
                        return;
                    };
                    stage = job.stage;
                    let chunk = state_event(&job, follow.node.progress(&id), &base);
                    if ended(&job) || matches!(error, broadcast::error::RecvError::Closed) {
                        let _ = tx.send(chunk).await;
                        return;
                    }
                    chunk
                }
            },
            _ = keep_alive.tick() => comment("keep-alive"),
            _ = follow.shutdown.changed() => return,
            _ = tx.closed() => return,
        };
        if tx.send(chunk).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn events_put_each_data_line_on_its_own_data_field() {
        assert_eq!(
            event(Some("state"), "{\"a\":1}"),
            Bytes::from("event: state\ndata: {\"a\":1}\n\n")
        );
        assert_eq!(
            event(None, "one\ntwo\r\n"),
            Bytes::from("data: one\ndata: two\ndata: \n\n")
        );
        assert_eq!(comment("keep-alive"), Bytes::from(": keep-alive\n\n"));
        assert_eq!(comment("a\nb"), Bytes::from(": a b\n\n"));
    }

    #[test]
    fn progress_events_carry_overall_and_step_percent() {
        let text = progress_event(Stage::Transcribing, 50.04);
        let text = std::str::from_utf8(&text).unwrap();
        assert!(text.starts_with("event: progress\ndata: "), "{text}");
        let data: serde_json::Value =
            serde_json::from_str(text.trim_start_matches("event: progress\ndata: ").trim())
                .unwrap();
        assert_eq!(data["percent"], 50.0);
        assert_eq!(data["step_percent"], 50.0);
        assert_eq!(data["stage"], "transcribing");
    }

    #[tokio::test]
    async fn the_channel_body_streams_until_the_senders_are_gone() {
        let (tx, body) = channel(4);
        tokio::spawn(async move {
            for chunk in ["a", "b", "c"] {
                tx.send(Bytes::from(chunk)).await.unwrap();
            }
        });
        let all = body.collect().await.unwrap().to_bytes();
        assert_eq!(all, Bytes::from("abc"));
    }

    #[tokio::test]
    async fn a_dropped_body_fails_the_sender() {
        let (tx, body) = channel(1);
        drop(body);
        assert!(tx.send(Bytes::from("x")).await.is_err());
        assert!(tx.is_closed());
    }
}
