//! The node as a real process behind its HTTP API, with real neighbours on 127.0.0.1: media
//! served over HTTP, a webhook receiver, aiosmtpd, SeaweedFS. Covers the whole saga (WER of
//! the transcript, the webhook's signature and count, the email), `kill -9` mid-transcription
//! followed by a restart, and bad input answered with specific errors while the node stays
//! healthy.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{hooks, response};

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use ytcaption_actors::notify::webhook;
use ytcaption_tests::media_server::MediaServer;
use ytcaption_tests::node::NodeProcess;
use ytcaption_tests::seaweed::SeaweedFs;
use ytcaption_tests::smtp::SmtpSink;

const SECRET: &str = "test-webhook-secret-0123456789";

/// The config every test node shares (the harness sets data dir, models, port and tiny.en);
/// `storage` adds a `[storage]` section.
fn config(smtp_port: u16, storage: &str) -> String {
    let ytdlp = common::repo().join(".venv-test/bin/yt-dlp");
    // A top-level key goes before every section; `ytdlp_path` belongs to [downloader].
    let config = ytcaption_tests::node::node_config(SECRET, smtp_port, storage);
    "node_name = \"test-node\"\n".to_owned()
        + &config.replacen(
            "[downloader]\n",
            &format!("[downloader]\nytdlp_path = \"{}\"\n", ytdlp.display()),
            1,
        )
}

fn get(node: &NodeProcess, path: &str) -> (u16, Value) {
    response(ureq::get(&node.url(path)).call())
}

fn post(node: &NodeProcess, path: &str, body: &Value) -> (u16, Value) {
    response(ureq::post(&node.url(path)).send_json(body.clone()))
}

/// Polls a job until it is terminal.
fn wait(node: &NodeProcess, id: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let (status, job) = get(node, &format!("/v1/jobs/{id}"));
        assert_eq!(status, 200, "{job}");
        let state = job["state"].as_str().unwrap().to_owned();
        if ["completed", "failed", "cancelled"].contains(&state.as_str()) {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "job stuck in {state}: {job}\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A `[storage]` section for `s3`, plus `extra` TOML.
fn s3_storage(s3: &SeaweedFs, bucket: &str, extra: &str) -> String {
    format!(
        "[storage]\nbackend = \"s3\"\n\n[storage.s3]\nendpoint = \"{}\"\nregion = \"{}\"\nbucket = \"{bucket}\"\naccess_key = \"{}\"\nsecret_key = \"{}\"\n{extra}",
        s3.endpoint(),
        s3.region,
        s3.access_key(),
        s3.secret_key()
    )
}

/// Polls a job until the transcriber is working on it.
fn wait_transcribing(node: &NodeProcess, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, state) = get(node, &format!("/v1/jobs/{id}"));
        if state["state"] == "transcribing" {
            return;
        }
        assert!(Instant::now() < deadline, "never transcribing: {state}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn text_of(node: &NodeProcess, id: &str, format: &str) -> (u16, String, String) {
    let result = ureq::get(&node.url(&format!("/v1/jobs/{id}/transcript?format={format}"))).call();
    let response = match result {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(error) => panic!("{error}"),
    };
    let status = response.status();
    let content_type = response.content_type().to_owned();
    (status, content_type, response.into_string().unwrap())
}

fn check_signature(request: &ytcaption_tests::media_server::RecordedRequest) -> Value {
    let header = request
        .header(webhook::SIGNATURE_HEADER)
        .expect("signature header");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    webhook::verify(SECRET.as_bytes(), header, &request.body, now, 600).expect("valid signature");
    // A tampered body does not verify.
    let mut tampered = request.body.clone();
    tampered.push(b' ');
    assert!(webhook::verify(SECRET.as_bytes(), header, &tampered, now, 600).is_err());
    serde_json::from_slice(&request.body).unwrap()
}

#[test]
fn a_url_job_runs_the_whole_saga_and_notifies_once() {
    let smtp = SmtpSink::start();
    let media = MediaServer::start(&common::fixtures());
    let node = NodeProcess::start(&config(smtp.port(), ""));

    let (status, job) = post(
        &node,
        "/v1/jobs",
        &json!({
            "url": media.url("/files/weather_festival.mp3"),
            "formats": ["srt", "txt"],
            "webhook_url": media.url("/sink/hook-1"),
            "email": "newsroom@example.com",
        }),
    );
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    let done = wait(&node, &id, Duration::from_secs(120));
    assert_eq!(done["state"], "completed", "{done}\n{}", node.log());

    let (status, content_type, text) = text_of(&node, &id, "txt");
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let wer = common::wer(&common::expected_text("weather_festival"), &text);
    assert!(wer < 0.15, "wer {wer}: {text}");
    let (_, _, srt) = text_of(&node, &id, "srt");
    assert!(srt.starts_with("1\n00:00:"), "{srt}");

    // Exactly one signed webhook, naming the job and its transcript links.
    let deadline = Instant::now() + Duration::from_secs(20);
    while hooks(&media, "/sink/hook-1").is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let delivered = hooks(&media, "/sink/hook-1");
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    let body = check_signature(&delivered[0]);
    assert_eq!(body["job_id"], id.as_str());
    assert_eq!(body["status"], "completed");
    assert!(body["links"]["transcript"]["srt"]
        .as_str()
        .unwrap()
        .contains(&id));

    // Exactly one email.
    let mails = smtp.wait_for(1, Duration::from_secs(20));
    assert_eq!(mails.len(), 1);
    assert!(mails[0].subject.contains(&id), "{}", mails[0].subject);
    assert!(mails[0]
        .to
        .iter()
        .any(|to| to.contains("newsroom@example.com")));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(hooks(&media, "/sink/hook-1").len(), 1);
    assert_eq!(smtp.messages().len(), 1);

    // The saga's timeline: every step started and succeeded in order, one delivery per channel.
    let (status, history) = get(&node, &format!("/v1/jobs/{id}/history"));
    assert_eq!(status, 200, "{history}");
    let types: Vec<&str> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["type"].as_str().unwrap())
        .collect();
    assert_eq!(types.first(), Some(&"accepted"), "{types:?}");
    assert_eq!(types.last(), Some(&"completed"), "{types:?}");
    assert_eq!(
        types.iter().filter(|t| **t == "step_succeeded").count(),
        4,
        "{types:?}"
    );
    assert_eq!(
        types.iter().filter(|t| **t == "delivered").count(),
        2,
        "{types:?}"
    );
    assert_eq!(
        get(&node, "/v1/jobs/0123456789abcdef01234567/history").0,
        404
    );
}

#[test]
fn kill_9_mid_transcription_then_restart_completes_with_one_webhook_and_one_email() {
    let smtp = SmtpSink::start();
    let media = MediaServer::start(&common::fixtures());
    let mut node = NodeProcess::start(&config(smtp.port(), ""));
    let (status, job) = post(
        &node,
        "/v1/jobs",
        &json!({
            "url": media.url("/files/long.wav"),
            "webhook_url": media.url("/sink/hook-2"),
            "email": "archive@example.com",
        }),
    );
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    // Wait until it is transcribing, then kill the node hard.
    wait_transcribing(&node, &id);
    std::thread::sleep(Duration::from_millis(500));
    node.restart();
    let done = wait(&node, &id, Duration::from_secs(180));
    assert_eq!(done["state"], "completed", "{done}\n{}", node.log());
    let (_, _, text) = text_of(&node, &id, "txt");
    let wer = common::wer(&common::expected_text("long"), &text);
    assert!(wer < 0.2, "wer {wer}");
    let mails = smtp.wait_for(1, Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(smtp.messages().len(), 1, "{mails:?}");
    assert_eq!(hooks(&media, "/sink/hook-2").len(), 1);
}

#[test]
fn bad_input_gets_specific_errors_and_the_node_stays_healthy() {
    let smtp = SmtpSink::start();
    let media = MediaServer::start(&common::fixtures());
    let node = NodeProcess::start(&config(smtp.port(), ""));

    // Malformed JSON: 400 problem+json.
    let result = ureq::post(&node.url("/v1/jobs"))
        .set("Content-Type", "application/json")
        .send_string("{\"url\": ");
    let (status, problem) = response(result);
    assert_eq!(status, 400, "{problem}");
    assert_eq!(problem["status"], 400);
    // Not an http(s) URL: 422.
    let (status, problem) = post(&node, "/v1/jobs", &json!({"url": "ftp://127.0.0.1/a.mp3"}));
    assert_eq!(status, 422, "{problem}");
    // An unknown format: 422.
    let (status, _) = post(
        &node,
        "/v1/jobs",
        &json!({"url": media.url("/files/beckett.wav"), "formats": ["docx"]}),
    );
    assert_eq!(status, 422);
    // Unknown job ids, malformed or not: 404.
    assert_eq!(get(&node, "/v1/jobs/../../etc/passwd").0, 404);
    assert_eq!(get(&node, "/v1/jobs/0123456789abcdef01234567").0, 404);
    // A page that is not media: the job fails with its reason.
    let (status, job) = post(&node, "/v1/jobs", &json!({"url": media.url("/html")}));
    assert_eq!(status, 202);
    let failed = wait(&node, job["id"].as_str().unwrap(), Duration::from_secs(60));
    assert_eq!(failed["state"], "failed");
    assert_eq!(failed["error"]["code"], "download.not_media", "{failed}");
    // A transcript of a failed job: 409.
    let (status, _, _) = text_of(&node, job["id"].as_str().unwrap(), "txt");
    assert_eq!(status, 409);
    // A 404 from the media server: failed with the HTTP status, not retried forever.
    let (_, job) = post(&node, "/v1/jobs", &json!({"url": media.url("/status/404")}));
    let failed = wait(&node, job["id"].as_str().unwrap(), Duration::from_secs(60));
    assert_eq!(failed["error"]["code"], "download.http_status", "{failed}");
    // Garbage on the HTTP port does not hurt the node.
    {
        use std::io::Write;
        let address = node.base_url().trim_start_matches("http://").to_owned();
        let mut socket = std::net::TcpStream::connect(address).unwrap();
        let _ = socket.write_all(b"\x00\x01\x02 garbage \r\n\r\n\xff\xfe");
    }
    assert_eq!(get(&node, "/healthz").0, 200);
    // Idempotency: the same key returns the same job.
    let key_request = |key: &str| {
        response(
            ureq::post(&node.url("/v1/jobs"))
                .set("Idempotency-Key", key)
                .send_json(json!({"url": media.url("/files/beckett.wav")})),
        )
    };
    let (first_status, first) = key_request("abc-1");
    let (second_status, second) = key_request("abc-1");
    assert_eq!(first_status, 202);
    assert!(second_status == 200 || second_status == 202);
    assert_eq!(first["id"], second["id"]);
}

#[test]
fn s3_storage_on_seaweedfs_serves_the_transcript() {
    let smtp = SmtpSink::start();
    let s3 = SeaweedFs::start();
    let media = MediaServer::start(&common::fixtures());
    let storage = s3_storage(&s3, "ytcaption-e2e", "");
    let node = NodeProcess::start(&config(smtp.port(), &storage));
    let (status, job) = post(
        &node,
        "/v1/jobs",
        &json!({"url": media.url("/files/weather_festival.m4a"), "formats": ["vtt"]}),
    );
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    let done = wait(&node, &id, Duration::from_secs(120));
    assert_eq!(done["state"], "completed", "{done}\n{}", node.log());
    let (status, _, vtt) = text_of(&node, &id, "vtt");
    assert_eq!(status, 200);
    assert!(vtt.starts_with("WEBVTT"), "{vtt}");
    let (_, _, text) = text_of(&node, &id, "txt");
    let wer = common::wer(&common::expected_text("weather_festival"), &text);
    assert!(wer < 0.15, "wer {wer}: {text}");
}

/// Storage goes down mid-job: the worker that hits it fails on purpose, its supervisor backs it
/// off and, past the restart intensity, marks it unavailable (visible in the admin endpoint
/// and the metrics); the job waits instead of failing and completes once storage is back.
#[test]
fn a_dependency_outage_trips_supervision_and_the_job_waits_it_out() {
    let smtp = SmtpSink::start();
    let mut s3 = SeaweedFs::start();
    let media = MediaServer::start(&common::fixtures());
    let storage = s3_storage(
        &s3,
        "outage",
        "timeout = \"2s\"\n\n\
         [supervisor]\nmax_restarts = 2\nwithin = \"60s\"\nbackoff_base = \"100ms\"\nbackoff_cap = \"200ms\"\ncooldown = \"1s\"\n\n\
         [jobs.download]\nattempts = 100\n",
    );
    let mut toml = config(smtp.port(), &storage);
    toml = toml.replace("[downloader]\n", "[downloader]\nworkers = 1\n");
    let node = NodeProcess::start(&toml);
    s3.stop();
    let (status, job) = post(
        &node,
        "/v1/jobs",
        &json!({"url": media.url("/files/weather_festival.wav")}),
    );
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();

    // The downloader fails on the storage error, restarts with backoff, then goes unavailable.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen_unavailable = false;
    let downloader = loop {
        let (status, admin) = get(&node, "/v1/admin/status");
        assert_eq!(status, 200, "{admin}");
        let child = admin["children"]
            .as_array()
            .unwrap()
            .iter()
            .find(|child| child["name"] == "downloader-1")
            .cloned()
            .unwrap();
        seen_unavailable |= child["state"] == "unavailable";
        if seen_unavailable && child["restarts"].as_u64().unwrap() >= 2 {
            break child;
        }
        assert!(
            Instant::now() < deadline,
            "no restarts seen: {admin}\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        downloader["last_failure"]
            .as_str()
            .unwrap()
            .contains("storage"),
        "{downloader}"
    );
    let metrics = ureq::get(&node.url("/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        metrics.contains(
            "ytcaption_supervisor_restarts_total{child=\"downloader-1\",role=\"downloader\"}"
        ),
        "{metrics}"
    );
    // Meanwhile the job is still alive, waiting.
    let (_, waiting) = get(&node, &format!("/v1/jobs/{id}"));
    assert!(
        ["accepted", "downloading"].contains(&waiting["state"].as_str().unwrap()),
        "{waiting}"
    );

    s3.restart();
    let done = wait(&node, &id, Duration::from_secs(120));
    assert_eq!(done["state"], "completed", "{done}\n{}", node.log());
    let (_, _, text) = text_of(&node, &id, "txt");
    assert!(
        common::wer(&common::expected_text("weather_festival"), &text) < 0.15,
        "{text}"
    );
}

/// A URL on a host routed to yt-dlp (here `localhost`, standing in for YouTube, which cannot be
/// reached from tests) is fetched by the real yt-dlp and transcribed.
#[test]
fn a_ytdlp_host_is_downloaded_through_ytdlp() {
    let smtp = SmtpSink::start();
    let media = MediaServer::start(&common::fixtures());
    let toml = config(smtp.port(), "").replace(
        "[downloader]\n",
        "[downloader]\nytdlp_hosts = [\"localhost\"]\n",
    );
    let node = NodeProcess::start(&toml);
    let url = media
        .url("/files/weather_festival.mp4")
        .replace("127.0.0.1", "localhost");
    let (status, job) = post(&node, "/v1/jobs", &json!({"url": url}));
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    let done = wait(&node, &id, Duration::from_secs(120));
    assert_eq!(done["state"], "completed", "{done}\n{}", node.log());
    let (_, _, text) = text_of(&node, &id, "txt");
    assert!(
        common::wer(&common::expected_text("weather_festival"), &text) < 0.15,
        "{text}"
    );
    // yt-dlp (not the direct downloader, whose user agent is `ytcaption/...`) fetched it.
    let agents: Vec<String> = media
        .requests()
        .into_iter()
        .filter(|request| request.path() == "/files/weather_festival.mp4")
        .map(|request| request.header("user-agent").unwrap_or_default().to_owned())
        .collect();
    assert!(!agents.is_empty());
    assert!(
        agents.iter().all(|agent| !agent.starts_with("ytcaption")),
        "{agents:?}"
    );
}

/// Cancelling mid-transcription removes the job's blobs and tells its webhook and email once,
/// as cancelled; a retry then runs it to completion and tells them again, as completed.
#[test]
fn a_cancelled_job_notifies_once_and_a_retry_completes_it() {
    let smtp = SmtpSink::start();
    let media = MediaServer::start(&common::fixtures());
    let node = NodeProcess::start(&config(smtp.port(), ""));
    let (status, job) = post(
        &node,
        "/v1/jobs",
        &json!({
            "url": media.url("/files/long.wav"),
            "webhook_url": media.url("/sink/hook-cancel"),
            "email": "desk@example.com",
        }),
    );
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    wait_transcribing(&node, &id);
    let (status, _) = response(ureq::delete(&node.url(&format!("/v1/jobs/{id}"))).call());
    assert_eq!(status, 202);
    let cancelled = wait(&node, &id, Duration::from_secs(60));
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
    let mails = smtp.wait_for(1, Duration::from_secs(20));
    assert!(
        mails[0].subject.contains("cancelled"),
        "{}",
        mails[0].subject
    );
    let hooks_now = hooks(&media, "/sink/hook-cancel");
    assert_eq!(hooks_now.len(), 1);
    assert_eq!(check_signature(&hooks_now[0])["status"], "cancelled");

    let (status, _) = post(&node, &format!("/v1/jobs/{id}/retry"), &json!({}));
    assert_eq!(status, 202);
    let done = wait(&node, &id, Duration::from_secs(180));
    assert_eq!(done["state"], "completed", "{done}\n{}", node.log());
    smtp.wait_for(2, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(500));
    let all = hooks(&media, "/sink/hook-cancel");
    assert_eq!(all.len(), 2);
    assert_eq!(check_signature(&all[1])["status"], "completed");
    assert_eq!(smtp.messages().len(), 2);
}

/// Once a job's transcript is stored only its notifications remain, and a cancel (or a delete)
/// is refused: it would remove the transcript the webhook announces and tell the receiver a
/// second time. The chaos harness found this as a job that ended `cancelled` after its
/// webhook had said `completed`.
#[test]
fn a_job_sending_its_notifications_can_no_longer_be_cancelled() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use ytcaption_tests::media_server::Reply;

    let smtp = SmtpSink::start();
    // The receiver answers 503 until released: the job waits in `notifying`, retrying.
    let busy = Arc::new(AtomicBool::new(true));
    let media = MediaServer::start_with(&common::fixtures(), {
        let busy = busy.clone();
        move |request| {
            (request.path() == "/sink/held" && busy.load(Ordering::SeqCst))
                .then(|| Reply::text(503, "busy"))
        }
    });
    let node = NodeProcess::start(&config(smtp.port(), ""));
    let (status, job) = post(
        &node,
        "/v1/jobs",
        &json!({
            "url": media.url("/files/weather_festival.wav"),
            "webhook_url": media.url("/sink/held"),
        }),
    );
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(120);
    while media.hits("/sink/held") < 2 {
        assert!(
            Instant::now() < deadline,
            "no webhook attempts\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, notifying) = get(&node, &format!("/v1/jobs/{id}"));
    assert_eq!(notifying["state"], "notifying", "{notifying}");

    let (status, refused) = post(&node, &format!("/v1/jobs/{id}/cancel"), &json!({}));
    assert_eq!(status, 409, "{refused}");
    assert!(
        refused.to_string().contains("sending its notifications"),
        "{refused}"
    );
    let (status, refused) = response(ureq::delete(&node.url(&format!("/v1/jobs/{id}"))).call());
    assert_eq!(status, 409, "{refused}");

    busy.store(false, Ordering::SeqCst);
    let done = wait(&node, &id, Duration::from_secs(60));
    assert_eq!(done["state"], "completed", "{done}\n{}", node.log());
    assert_eq!(done["cancel_requested"], false, "{done}");
    let (status, _, text) = text_of(&node, &id, "txt");
    assert_eq!(status, 200);
    assert!(
        common::wer(&common::expected_text("weather_festival"), &text) < 0.15,
        "{text}"
    );
    // Every attempt carried the same delivery, as completed.
    let attempts = hooks(&media, "/sink/held");
    let bodies: Vec<Value> = attempts.iter().map(check_signature).collect();
    assert!(
        bodies.iter().all(|body| body["status"] == "completed"),
        "{bodies:?}"
    );
    let ids: std::collections::BTreeSet<_> = attempts
        .iter()
        .map(|request| request.header(webhook::DELIVERY_HEADER).unwrap_or_default())
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
}
