//! The email path against a real SMTP server (aiosmtpd, see `ytcaption_tests::smtp`): what
//! arrives, and how each kind of failure is reported (code and retryability).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, TcpListener};
use std::time::Duration;

use ytcaption_actors::notify::email::{
    job_email, Email, EmailError, Mailer, SmtpParams, SmtpSecurity,
};
use ytcaption_actors::notify::webhook::{
    JobOutcome, WebhookBody, WebhookError, WebhookEvent, WebhookLinks,
};
use ytcaption_tests::smtp::{SinkOptions, SinkTls, SmtpSink};

const WAIT: Duration = Duration::from_secs(10);
const FROM: &str = "ytcaption <notify@ytcaption.test>";

fn completed(job_id: &str) -> WebhookBody {
    WebhookBody {
        event: WebhookEvent::JobCompleted,
        job_id: job_id.to_owned(),
        status: JobOutcome::Completed,
        error: None,
        links: WebhookLinks {
            job: format!("https://cap.example/v1/jobs/{job_id}"),
            transcript: BTreeMap::from([
                (
                    "srt".to_owned(),
                    format!("https://cap.example/t/{job_id}.srt"),
                ),
                (
                    "vtt".to_owned(),
                    format!("https://cap.example/t/{job_id}.vtt"),
                ),
            ]),
        },
        created_at: "2023-11-14T22:13:20Z".to_owned(),
        finished_at: "2023-11-14T22:15:00Z".to_owned(),
        duration_s: Some(93.5),
        language: Some("en".to_owned()),
    }
}

fn params(port: u16) -> SmtpParams {
    SmtpParams {
        host: "127.0.0.1".to_owned(),
        port,
        from: FROM.to_owned(),
        timeout: Duration::from_secs(5),
        send_timeout: Duration::from_secs(15),
        ..SmtpParams::default()
    }
}

async fn send(params: SmtpParams, email: &Email) -> Result<(), EmailError> {
    Mailer::new(params).expect("mailer").send(email).await
}

fn closed_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a probe port");
    listener.local_addr().expect("probe port").port()
}

#[tokio::test]
async fn completed_job_mail_arrives_intact() {
    let sink = SmtpSink::start();
    let body = completed("job_a1b2");
    let email = job_email(&body, "Client <client@example.com>");
    send(params(sink.port()), &email).await.unwrap();

    let mails = sink.wait_for(1, WAIT);
    assert_eq!(mails.len(), 1);
    let mail = &mails[0];
    assert_eq!(mail.to, ["client@example.com"]);
    assert_eq!(mail.from, "notify@ytcaption.test");
    assert_eq!(mail.subject, "Transcript ready: job_a1b2");
    assert_eq!(mail.message_id, "<job_a1b2.job.completed@ytcaption>");
    assert_eq!(mail.message_id, email.message_id);
    assert!(
        mail.header("To").unwrap().contains("client@example.com"),
        "{:?}",
        mail.headers
    );
    assert!(mail
        .header("From")
        .unwrap()
        .contains("notify@ytcaption.test"));
    assert!(mail.header("Date").is_some());
    assert!(mail
        .header("Content-Type")
        .unwrap()
        .starts_with("text/plain"));
    assert_eq!(mail.header("X-Ytc-Tls"), Some("no"));
    assert!(mail.body.contains("job_a1b2 is done"), "{}", mail.body);
    assert!(mail
        .body
        .contains("srt: https://cap.example/t/job_a1b2.srt"));
    assert!(mail
        .body
        .contains("vtt: https://cap.example/t/job_a1b2.vtt"));
    assert!(mail
        .body
        .contains("Job status: https://cap.example/v1/jobs/job_a1b2"));
    assert!(mail.body.contains("Audio length: 1 min 34 s"));
}

#[tokio::test]
async fn failed_job_mail_and_resend_share_the_message_id() {
    let sink = SmtpSink::start();
    let mut body = completed("job-9");
    body.event = WebhookEvent::JobFailed;
    body.status = JobOutcome::Failed;
    body.links.transcript.clear();
    body.error = Some(WebhookError {
        code: "download.unavailable".to_owned(),
        message: "the video is private".to_owned(),
    });
    let email = job_email(&body, "client@example.com");
    let mailer = Mailer::new(params(sink.port())).unwrap();
    mailer.send(&email).await.unwrap();
    // A resend after an ambiguous failure: same Message-ID, so recognisably the same mail.
    mailer.send(&email).await.unwrap();

    let mails = sink.wait_for(2, WAIT);
    assert_eq!(mails.len(), 2);
    assert_eq!(mails[0].subject, "Transcription failed: job-9");
    assert_eq!(mails[0].message_id, "<job-9.job.failed@ytcaption>");
    assert_eq!(mails[1].message_id, mails[0].message_id);
    assert!(mails[0]
        .body
        .contains("Reason: the video is private (download.unavailable)"));
}

#[tokio::test]
async fn non_ascii_content_survives() {
    let sink = SmtpSink::start();
    let email = Email {
        to: "Zoë <zoe@example.com>".to_owned(),
        subject: "Transcription prête : réunion".to_owned(),
        text_body: format!("Bonjour, voilà le texte. {}\n", "é".repeat(200)),
        message_id: "<utf8-test@ytcaption>".to_owned(),
    };
    send(params(sink.port()), &email).await.unwrap();
    let mail = &sink.wait_for(1, WAIT)[0];
    assert_eq!(mail.subject, email.subject);
    assert_eq!(mail.body.trim_end(), email.text_body.trim_end());
}

#[tokio::test]
async fn bad_address_is_final_and_sends_nothing() {
    let sink = SmtpSink::start();
    let mut email = job_email(&completed("job-x"), "not-an-address");
    let err = send(params(sink.port()), &email).await.unwrap_err();
    assert_eq!(err.code(), "email.bad_address", "{err}");
    assert!(!err.retryable());

    email.to = "a@b\r\nBcc: victim@example.com".to_owned();
    let err = send(params(sink.port()), &email).await.unwrap_err();
    assert_eq!(err.code(), "email.bad_address", "{err}");
    assert!(sink.messages().is_empty());
}

#[tokio::test]
async fn closed_port_is_retryable() {
    let email = job_email(&completed("job-x"), "client@example.com");
    let err = send(params(closed_port()), &email).await.unwrap_err();
    assert_eq!(err.code(), "email.unavailable", "{err}");
    assert!(err.retryable());
}

#[tokio::test]
async fn permanent_refusal_is_final_transient_is_retryable() {
    let sink = SmtpSink::start();
    let mailer = Mailer::new(params(sink.port())).unwrap();

    let rejected = job_email(&completed("job-r"), "reject-me@example.com");
    let err = mailer.send(&rejected).await.unwrap_err();
    assert_eq!(err.code(), "email.rejected", "{err}");
    assert!(!err.retryable());
    assert!(err.to_string().contains("550"), "{err}");

    let deferred = job_email(&completed("job-t"), "tempfail@example.com");
    let err = mailer.send(&deferred).await.unwrap_err();
    assert_eq!(err.code(), "email.unavailable", "{err}");
    assert!(err.retryable());
    assert!(err.to_string().contains("451"), "{err}");

    // The pooled connection is still good for the next mail.
    let fine = job_email(&completed("job-ok"), "ok@example.com");
    mailer.send(&fine).await.unwrap();
    let mails = sink.wait_for(1, WAIT);
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].to, ["ok@example.com"]);
}

#[tokio::test]
async fn silent_server_times_out_as_retryable() {
    // Accepts connections and never says a word.
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.push(stream);
        }
    });
    let email = job_email(&completed("job-x"), "client@example.com");
    let started = std::time::Instant::now();
    let err = send(
        SmtpParams {
            timeout: Duration::from_millis(500),
            send_timeout: Duration::from_secs(3),
            ..params(port)
        },
        &email,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), "email.unavailable", "{err}");
    assert!(err.retryable());
    assert!(started.elapsed() < Duration::from_secs(5));
}

fn starttls_sink() -> SmtpSink {
    SmtpSink::start_with(SinkOptions {
        tls: SinkTls::StartTls,
        auth: Some(("mailer".to_owned(), "s3cret".to_owned())),
    })
}

fn tls_params(sink: &SmtpSink, security: SmtpSecurity) -> SmtpParams {
    SmtpParams {
        security,
        username: Some("mailer".to_owned()),
        password: Some("s3cret".to_owned()),
        extra_root_pem: sink.ca_pem().map(<[u8]>::to_vec),
        ..params(sink.port())
    }
}

#[tokio::test]
async fn starttls_with_auth_delivers() {
    let sink = starttls_sink();
    let email = job_email(&completed("job-tls"), "client@example.com");
    let mailer = Mailer::new(tls_params(&sink, SmtpSecurity::StartTls)).unwrap();
    mailer.check().await.unwrap();
    mailer.send(&email).await.unwrap();
    let mails = sink.wait_for(1, WAIT);
    assert_eq!(mails[0].subject, "Transcript ready: job-tls");
    assert_eq!(mails[0].header("X-Ytc-Tls"), Some("yes"));
    assert_eq!(mails[0].header("X-Ytc-Login"), Some("mailer"));
}

#[tokio::test]
async fn wrong_password_is_rejected() {
    let sink = starttls_sink();
    let email = job_email(&completed("job-x"), "client@example.com");
    let params = SmtpParams {
        password: Some("wrong".to_owned()),
        ..tls_params(&sink, SmtpSecurity::StartTls)
    };
    let err = send(params, &email).await.unwrap_err();
    assert_eq!(err.code(), "email.rejected", "{err}");
    assert!(err.to_string().contains("535"), "{err}");
    assert!(sink.messages().is_empty());
}

#[tokio::test]
async fn untrusted_certificate_is_a_tls_error() {
    let sink = starttls_sink();
    let email = job_email(&completed("job-x"), "client@example.com");
    let params = SmtpParams {
        extra_root_pem: None,
        ..tls_params(&sink, SmtpSecurity::StartTls)
    };
    let err = send(params, &email).await.unwrap_err();
    assert_eq!(err.code(), "email.tls", "{err}");
    assert!(err.retryable());
    assert!(sink.messages().is_empty());
}

#[tokio::test]
async fn starttls_required_but_not_offered() {
    let sink = SmtpSink::start();
    let email = job_email(&completed("job-x"), "client@example.com");
    let params = SmtpParams {
        security: SmtpSecurity::StartTls,
        ..params(sink.port())
    };
    let err = send(params, &email).await.unwrap_err();
    assert_eq!(err.code(), "email.protocol", "{err}");
    assert!(sink.messages().is_empty(), "no downgrade to plain text");
}

#[tokio::test]
async fn implicit_tls_delivers() {
    let sink = SmtpSink::start_with(SinkOptions {
        tls: SinkTls::Implicit,
        auth: None,
    });
    let email = job_email(&completed("job-smtps"), "client@example.com");
    let params = SmtpParams {
        username: None,
        password: None,
        ..tls_params(&sink, SmtpSecurity::Tls)
    };
    send(params, &email).await.unwrap();
    let mails = sink.wait_for(1, WAIT);
    assert_eq!(mails[0].subject, "Transcript ready: job-smtps");
    assert_eq!(mails[0].header("X-Ytc-Tls"), Some("yes"));
}

#[tokio::test]
async fn parallel_sinks_are_independent() {
    let sinks: Vec<SmtpSink> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4).map(|_| scope.spawn(SmtpSink::start)).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ports: std::collections::HashSet<u16> = sinks.iter().map(SmtpSink::port).collect();
    assert_eq!(ports.len(), sinks.len());
    for (i, sink) in sinks.iter().enumerate() {
        let email = job_email(&completed(&format!("job-{i}")), "client@example.com");
        send(params(sink.port()), &email).await.unwrap();
    }
    for (i, sink) in sinks.iter().enumerate() {
        let mails = sink.wait_for(1, WAIT);
        assert_eq!(mails.len(), 1);
        assert_eq!(mails[0].subject, format!("Transcript ready: job-{i}"));
    }
}
