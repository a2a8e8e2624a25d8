//! The Notifier: runs the notify step: a signed webhook and an email per job, each delivered
//! at most once as far as this node can tell.
//!
//! The outbox is the job log: the request lists the channels already delivered (their
//! `Delivered` events), and only the others are attempted. A channel delivered in this attempt
//! is reported back and recorded before the step ends; if the node dies between the
//! receiver's 2xx and that record, the next attempt sends again with the same delivery id and
//! Message-ID, so receivers can drop the duplicate.
//!
//! Per channel: a 2xx (or SMTP acceptance) delivers; 408, 429, 5xx and network errors retry
//! with the saga's backoff; other 4xx (and permanent SMTP rejections) give up at once; the
//! last attempt, or an attempt past the give-up time, gives up on what still fails.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ractor::ActorCell;
use ytcaption_protocol::wire::{Delivery, StepFailure, StepReply, StepRequest};
use ytcaption_protocol::{Channel, Reason, Step, StepOutput};

use crate::metrics::Metrics;
use crate::net::{NetGuard, NetParams};
use crate::notify::email::{job_email, EmailError, Mailer, SmtpParams, SmtpSecurity};
use crate::notify::rfc3339_utc;
use crate::notify::webhook::{
    self, JobOutcome, Verdict, WebhookBody, WebhookError, WebhookEvent, WebhookLinks,
};
use crate::worker::{Outcome, Work};

/// The process group of Notifier workers.
pub const ROLE: &str = "notifier";

/// The Notifier's settings.
#[derive(Debug, Clone)]
pub struct NotifyParams {
    pub webhook_secret: String,
    pub webhook_timeout: Duration,
    pub guard: NetGuard,
    pub smtp: Option<ytcaption_config::Smtp>,
    /// Base of the links in notifications.
    pub public_url: String,
}

#[derive(Debug)]
pub struct NotifyWork {
    params: NotifyParams,
    net: NetParams,
    mailer: Option<Mailer>,
    metrics: Arc<Metrics>,
}

impl NotifyWork {
    pub fn new(params: NotifyParams, metrics: Arc<Metrics>) -> Result<NotifyWork, EmailError> {
        let mailer = params
            .smtp
            .as_ref()
            .map(|smtp| {
                Mailer::new(SmtpParams {
                    host: smtp.host.clone(),
                    port: smtp.port,
                    security: match smtp.security {
                        ytcaption_config::SmtpSecurity::None => SmtpSecurity::None,
                        ytcaption_config::SmtpSecurity::Starttls => SmtpSecurity::StartTls,
                        ytcaption_config::SmtpSecurity::Tls => SmtpSecurity::Tls,
                    },
                    username: smtp.username.clone(),
                    password: smtp.password.clone(),
                    from: smtp.from.clone(),
                    timeout: smtp.timeout,
                    ..SmtpParams::default()
                })
            })
            .transpose()?;
        let net = NetParams {
            total_timeout: params.webhook_timeout,
            read_timeout: params.webhook_timeout,
            connect_timeout: params.webhook_timeout.min(Duration::from_secs(10)),
            ..NetParams::default()
        };
        Ok(NotifyWork {
            params,
            net,
            mailer,
            metrics,
        })
    }

    fn body(&self, request: &StepRequest) -> WebhookBody {
        let id = request.job_id.as_str();
        let base = self.params.public_url.trim_end_matches('/');
        let job_url = format!("{base}/v1/jobs/{id}");
        let (status, error) = match &request.failure {
            Some(reason) if reason.code == crate::saga::CANCELLED => (JobOutcome::Cancelled, None),
            Some(reason) => (
                JobOutcome::Failed,
                Some(WebhookError {
                    code: reason.code.clone(),
                    message: reason.message.clone(),
                }),
            ),
            None => (JobOutcome::Completed, None),
        };
        let transcript = match (&request.failure, request.input(Step::Store)) {
            (None, Some(StepOutput::Stored { formats })) => formats
                .keys()
                .map(|format| {
                    let name = format.extension().to_owned();
                    (name.clone(), format!("{job_url}/transcript?format={name}"))
                })
                .collect(),
            _ => Default::default(),
        };
        let (duration_s, language) = match request.input(Step::Transcribe) {
            Some(StepOutput::Transcribed {
                duration_s,
                language,
                ..
            }) => (Some(*duration_s), Some(language.clone())),
            _ => (None, None),
        };
        WebhookBody {
            event: WebhookEvent::for_status(status),
            job_id: id.to_owned(),
            status,
            error,
            links: WebhookLinks {
                job: job_url,
                transcript,
            },
            created_at: rfc3339_utc(request.job_id.created_ms()),
            finished_at: rfc3339_utc(crate::saga::now_ms()),
            duration_s,
            language,
        }
    }

    /// One webhook attempt; the verdict decides whether to try again.
    async fn post_webhook(&self, url: &str, body: &WebhookBody) -> (Verdict, String) {
        let Ok(json) = body.to_json() else {
            return (
                Verdict::GiveUp,
                "the webhook body could not be encoded".into(),
            );
        };
        let delivery = webhook::delivery_id(&body.job_id, body.event);
        let timestamp = crate::saga::now_ms() / 1000;
        let headers = webhook::webhook_headers(
            self.params.webhook_secret.as_bytes(),
            &delivery,
            body.event,
            timestamp,
            &json,
        );
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(name, value)| (*name, value.as_str()))
            .collect();
        let response = crate::net::request(
            http::Method::POST,
            url,
            &headers,
            Bytes::from(json),
            &self.params.guard,
            &self.net,
        )
        .await;
        match response {
            Ok(response) => {
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get(http::header::RETRY_AFTER)
                    .and_then(|value| value.to_str().ok())
                    .map(str::to_owned);
                // Drain a little of the answer so the connection closes cleanly; its content
                // does not matter.
                let _ = crate::net::read_body(response, 64 << 10, &self.net).await;
                (
                    webhook::classify(Some(status), retry_after.as_deref()),
                    format!("HTTP {status}"),
                )
            }
            Err(error) if !error.retryable() => (Verdict::GiveUp, error.to_string()),
            Err(error) => (webhook::classify(None, None), error.to_string()),
        }
    }

    async fn send_email(&self, to: &str, body: &WebhookBody) -> (Verdict, String) {
        let Some(mailer) = &self.mailer else {
            return (
                Verdict::GiveUp,
                "email requested but this node has no [notify.smtp] configured".into(),
            );
        };
        match mailer.send(&job_email(body, to)).await {
            Ok(()) => (Verdict::Delivered, "accepted".into()),
            Err(error) if error.retryable() => (Verdict::Retry { after: None }, error.to_string()),
            Err(error) => (Verdict::GiveUp, error.to_string()),
        }
    }

    async fn notify(&self, request: &StepRequest) -> (Vec<Delivery>, Vec<String>, bool) {
        let body = self.body(request);
        let last_try = request.attempt >= request.max_attempts
            || request
                .give_up_at_ms
                .is_some_and(|at| crate::saga::now_ms() >= at);
        let mut deliveries = Vec::new();
        let mut pending = Vec::new();
        let mut smtp_down = false;
        for channel in request.spec.channels() {
            if request.delivered.contains(&channel) {
                continue;
            }
            let (verdict, detail) = match (channel, &request.spec.webhook_url, &request.spec.email)
            {
                (Channel::Webhook, Some(url), _) => self.post_webhook(url, &body).await,
                (Channel::Email, _, Some(to)) => self.send_email(to, &body).await,
                _ => continue,
            };
            let name = match channel {
                Channel::Webhook => "webhook",
                Channel::Email => "email",
            };
            let outcome = match verdict {
                Verdict::Delivered => "delivered",
                Verdict::Retry { .. } if !last_try => "retry",
                _ => "gave_up",
            };
            self.metrics
                .notifications
                .with_label_values(&[name, outcome])
                .inc();
            tracing::info!(channel = name, outcome, detail, "notification attempt");
            match outcome {
                "delivered" => deliveries.push(Delivery {
                    channel,
                    delivered: true,
                    gave_up: None,
                }),
                "retry" => {
                    smtp_down |= channel == Channel::Email;
                    pending.push(format!("{name}: {detail}"));
                }
                _ => deliveries.push(Delivery {
                    channel,
                    delivered: false,
                    gave_up: Some(Reason::new(format!("notify.{name}_failed"), detail)),
                }),
            }
        }
        (deliveries, pending, smtp_down)
    }
}

impl Work for NotifyWork {
    const ROLE: &'static str = ROLE;

    async fn run(&self, request: StepRequest, _me: ActorCell) -> Outcome {
        let (deliveries, pending, smtp_down) = self.notify(&request).await;
        let result = if pending.is_empty() {
            Ok(StepOutput::Notified)
        } else {
            Err(StepFailure::transient("notify.pending", pending.join("; ")))
        };
        Outcome {
            reply: StepReply {
                job_id: request.job_id.clone(),
                step: Step::Notify,
                result,
                deliveries,
            },
            // An SMTP server that refuses to talk backs the notifiers off; an unreachable
            // webhook receiver is the client's problem, retried per job.
            dependency_down: smtp_down.then(|| "the SMTP server is unavailable".to_owned()),
        }
    }
}
