//! The node's HTTP API end to end: the real `ytcaption serve` process (real supervision tree,
//! job log, local storage, the tiny.en model), driven over HTTP on 127.0.0.1 by ureq, the
//! OpenAI Python SDK and the binary's own client.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use ytcaption_tests::node::{multipart, read_sse, NodeProcess, Reply};

/// Generous: several nodes share two cores while the tests run in parallel.
const JOB_TIMEOUT: Duration = Duration::from_secs(300);

fn auth(request: ureq::Request, key: Option<&str>) -> ureq::Request {
    match key {
        Some(key) => request.set("Authorization", &format!("Bearer {key}")),
        None => request,
    }
}

fn get(node: &NodeProcess, path: &str, key: Option<&str>) -> Reply {
    Reply::of(auth(ureq::get(&node.url(path)), key).call())
}

fn post_json(node: &NodeProcess, path: &str, key: Option<&str>, body: &Value) -> Reply {
    Reply::of(auth(ureq::post(&node.url(path)), key).send_json(body.clone()))
}

fn post_empty(node: &NodeProcess, path: &str, key: Option<&str>) -> Reply {
    Reply::of(auth(ureq::post(&node.url(path)), key).call())
}

fn post_form(
    node: &NodeProcess,
    path: &str,
    key: Option<&str>,
    fields: &[(&str, &str)],
    file: Option<(&str, Vec<u8>)>,
) -> Reply {
    let file = file
        .as_ref()
        .map(|(name, bytes)| ("file", *name, bytes.as_slice()));
    let (content_type, body) = multipart(fields, file);
    Reply::of(
        auth(ureq::post(&node.url(path)), key)
            .set("Content-Type", &content_type)
            .send_bytes(&body),
    )
}

fn delete(node: &NodeProcess, path: &str, key: Option<&str>) -> Reply {
    Reply::of(auth(ureq::delete(&node.url(path)), key).call())
}

fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(common::fixture(name)).unwrap()
}

/// Asserts a problem document with `status` and `code`.
fn assert_problem(reply: &Reply, status: u16, code: &str) {
    assert_eq!(reply.status, status, "{}", reply.text());
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json"),
        "{}",
        reply.text()
    );
    let body = reply.json();
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status);
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{body}"
    );
    assert!(
        body["title"].is_string() && body["type"].is_string(),
        "{body}"
    );
}

/// Polls the job until `done(view)`; panics with the last view at the deadline.
fn wait_for(
    node: &NodeProcess,
    id: &str,
    key: Option<&str>,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + JOB_TIMEOUT;
    loop {
        let reply = get(node, &format!("/v1/jobs/{id}"), key);
        assert_eq!(reply.status, 200, "{}", reply.text());
        let view = reply.json();
        if done(&view) {
            return view;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} never got there: {view}\nlog:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn state_is(state: &'static str) -> impl Fn(&Value) -> bool {
    move |view| view["state"] == state
}

fn terminal(view: &Value) -> bool {
    matches!(
        view["state"].as_str(),
        Some("completed" | "failed" | "cancelled")
    )
}

/// Serves `files` over plain HTTP/1.1 on 127.0.0.1 (one request per connection).
fn file_server(files: HashMap<String, Vec<u8>>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let files = files.clone();
            std::thread::spawn(move || {
                let path = read_request_path(&mut stream);
                let _ = match files.get(&path) {
                    Some(body) => stream
                        .write_all(
                            format!(
                                "HTTP/1.1 200 OK\r\nContent-Type: audio/mpeg\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                                body.len()
                            )
                            .as_bytes(),
                        )
                        .and_then(|()| stream.write_all(body)),
                    None => stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
                };
            });
        }
    });
    port
}

/// Accepts connections and never answers: a download that hangs until cancelled.
fn stalling_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    port
}

fn read_request_path(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 << 10 {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&head);
    text.split_whitespace().nth(1).unwrap_or("/").to_owned()
}

const ALLOW_LOCAL: &str = "[downloader]\nallow_private = [\"127.0.0.0/8\"]\n";

#[test]
fn an_upload_runs_to_completion_and_serves_every_format() {
    let node = NodeProcess::start("");
    assert!(
        node.log().contains(
            "serving on loopback without API keys: every request acts as the anonymous admin"
        ),
        "{}",
        node.log()
    );
    let reply = post_form(
        &node,
        "/v1/jobs",
        None,
        &[("formats", "srt,txt"), ("language", "en")],
        Some(("beckett.wav", fixture_bytes("beckett.wav"))),
    );
    assert_eq!(reply.status, 202, "{}", reply.text());
    let view = reply.json();
    let id = view["id"].as_str().unwrap().to_owned();
    assert_eq!(
        reply.header("location"),
        Some(format!("/v1/jobs/{id}").as_str())
    );
    assert_eq!(view["source"]["kind"], "upload");
    assert_eq!(view["source"]["filename"], "beckett.wav");
    assert_eq!(view["options"]["formats"], json!(["srt", "txt"]));
    assert_eq!(view["owner"], "anonymous");

    let done = wait_for(&node, &id, None, terminal);
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["progress"], 100.0);
    assert_eq!(done["language"], "en");
    let duration = done["duration_s"].as_f64().unwrap();
    assert!((9.0..11.0).contains(&duration), "{duration}");
    assert!(done["finished_at"].as_str().unwrap().ends_with('Z'));
    let srt_link = done["links"]["transcript"]["srt"].as_str().unwrap();
    assert_eq!(
        srt_link,
        node.url(&format!("/v1/jobs/{id}/transcript?format=srt"))
    );

    let transcript = |format: &str| {
        get(
            &node,
            &format!("/v1/jobs/{id}/transcript?format={format}"),
            None,
        )
    };
    let txt = transcript("txt");
    assert_eq!(
        txt.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert!(
        txt.text().to_lowercase().contains("ever tried"),
        "{}",
        txt.text()
    );
    let srt = transcript("srt");
    assert_eq!(
        srt.header("content-type"),
        Some("application/x-subrip; charset=utf-8")
    );
    assert!(srt.text().starts_with("1\n00:00:00,"), "{}", srt.text());
    // Not stored, rendered on request.
    let vtt = transcript("vtt");
    assert_eq!(vtt.header("content-type"), Some("text/vtt; charset=utf-8"));
    assert!(vtt.text().starts_with("WEBVTT"), "{}", vtt.text());
    let json_default = get(&node, &format!("/v1/jobs/{id}/transcript"), None);
    assert_eq!(
        json_default.header("content-type"),
        Some("application/json")
    );
    let transcript_json = json_default.json();
    assert_eq!(transcript_json["language"], "en");
    assert!(!transcript_json["segments"].as_array().unwrap().is_empty());
    assert_problem(&transcript("docx"), 422, "validation.format");

    let list = get(&node, "/v1/jobs?state=completed", None).json();
    assert!(list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|job| job["id"] == id.as_str()));
    let failed = get(&node, "/v1/jobs?state=failed", None).json();
    assert!(failed["jobs"].as_array().unwrap().is_empty(), "{failed}");

    assert_problem(
        &post_empty(&node, &format!("/v1/jobs/{id}/retry"), None),
        409,
        "job.conflict",
    );
    assert_problem(
        &post_empty(&node, &format!("/v1/jobs/{id}/cancel"), None),
        409,
        "job.conflict",
    );

    let deleted = delete(&node, &format!("/v1/jobs/{id}"), None);
    assert_eq!(deleted.status, 204, "{}", deleted.text());
    assert_problem(
        &get(&node, &format!("/v1/jobs/{id}"), None),
        404,
        "job.not_found",
    );
    assert_problem(
        &delete(&node, &format!("/v1/jobs/{id}"), None),
        404,
        "job.not_found",
    );
    let after = get(&node, "/v1/jobs", None).json();
    assert!(!after["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|job| job["id"] == id.as_str()));
}

#[test]
fn a_url_job_streams_its_events_and_idempotency_keys_return_the_first_job() {
    let files = HashMap::from([(
        "/weather.mp3".to_owned(),
        fixture_bytes("weather_festival.mp3"),
    )]);
    let port = file_server(files);
    let node = NodeProcess::start(ALLOW_LOCAL);
    let url = format!("http://127.0.0.1:{port}/weather.mp3");
    let body = json!({ "url": url, "formats": ["vtt"], "language": "en" });
    let submit = |key: &str| {
        Reply::of(
            ureq::post(&node.url("/v1/jobs"))
                .set("Idempotency-Key", key)
                .send_json(body.clone()),
        )
    };
    let first = submit("order-1");
    assert_eq!(first.status, 202, "{}", first.text());
    let id = first.json()["id"].as_str().unwrap().to_owned();

    let stream = ureq::get(&node.url(&format!("/v1/jobs/{id}/events")))
        .call()
        .unwrap();
    assert_eq!(stream.header("content-type"), Some("text/event-stream"));
    // The server closes the stream after the terminal state.
    let events = read_sse(stream.into_reader());
    assert!(events.len() >= 2, "{events:?}");
    assert!(
        events
            .iter()
            .all(|e| e.name == "state" || e.name == "progress"),
        "{events:?}"
    );
    assert_eq!(events[0].name, "state");
    let last = events.last().unwrap();
    assert_eq!(last.name, "state");
    let last: Value = serde_json::from_str(&last.data).unwrap();
    assert_eq!(last["state"], "completed", "{last}");
    assert_eq!(last["id"], id.as_str());
    let states: Vec<String> = events
        .iter()
        .filter(|e| e.name == "state")
        .map(|e| {
            serde_json::from_str::<Value>(&e.data).unwrap()["state"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(states.windows(2).all(|w| w[0] != "completed"), "{states:?}");
    for event in events.iter().filter(|e| e.name == "progress") {
        let percent = serde_json::from_str::<Value>(&event.data).unwrap()["percent"]
            .as_f64()
            .unwrap();
        assert!((0.0..=100.0).contains(&percent));
    }

    let again = submit("order-1");
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.json()["id"], id.as_str());
    assert_eq!(
        again.header("location"),
        Some(format!("/v1/jobs/{id}").as_str())
    );
    let other = submit("order-2");
    assert_eq!(other.status, 202);
    assert_ne!(other.json()["id"], id.as_str());
    let bad_key = Reply::of(
        ureq::post(&node.url("/v1/jobs"))
            .set("Idempotency-Key", &"k".repeat(256))
            .send_json(body.clone()),
    );
    assert_problem(&bad_key, 400, "request.idempotency_key");

    let vtt = get(&node, &format!("/v1/jobs/{id}/transcript?format=vtt"), None).text();
    assert!(
        vtt.starts_with("WEBVTT") && vtt.to_lowercase().contains("weather"),
        "{vtt}"
    );
    // A finished job's stream is its final state, then the end.
    let replay = read_sse(
        ureq::get(&node.url(&format!("/v1/jobs/{id}/events")))
            .call()
            .unwrap()
            .into_reader(),
    );
    assert_eq!(replay.len(), 1, "{replay:?}");
}

#[test]
fn bad_requests_get_problem_documents_with_the_right_status() {
    let stall = stalling_server();
    let config = format!("[http]\nmax_json_body = \"1KiB\"\nmax_body = \"64KiB\"\n{ALLOW_LOCAL}");
    let node = NodeProcess::start(&config);
    let jobs = "/v1/jobs";
    let send = |content_type: &str, body: &[u8]| {
        Reply::of(
            ureq::post(&node.url(jobs))
                .set("Content-Type", content_type)
                .send_bytes(body),
        )
    };
    assert_problem(
        &send("text/plain", b"https://example.com/a.mp3"),
        415,
        "request.content_type",
    );
    assert_problem(
        &send("application/json", b"{\"url\": "),
        400,
        "request.json",
    );
    assert_problem(
        &send("application/json", b"{\"url\": 5}"),
        422,
        "validation.body",
    );
    assert_problem(
        &send("application/json", &[b' '; 2048]),
        413,
        "request.too_large",
    );
    assert_problem(
        &send("multipart/form-data", b"--x--"),
        400,
        "form.no_boundary",
    );
    for (body, code) in [
        (json!({}), "validation.source"),
        (json!({"url": "ftp://example.com/a.mp3"}), "validation.url"),
        (
            json!({"url": "https://example.com/a.mp3", "email": "nobody"}),
            "validation.email",
        ),
        (
            json!({"url": "https://example.com/a.mp3", "webhook_url": "file:///x"}),
            "validation.webhook_url",
        ),
        (
            json!({"url": "https://example.com/a.mp3", "language": "klingon"}),
            "validation.language",
        ),
        (
            json!({"url": "https://example.com/a.mp3", "formats": ["docx"]}),
            "validation.format",
        ),
        (
            json!({"url": "https://example.com/a.mp3", "task": "summarize"}),
            "validation.task",
        ),
        (
            json!({"url": "https://example.com/a.mp3", "model": "../../etc"}),
            "validation.model",
        ),
        (
            json!({"url": "https://example.com/a.mp3", "model": "no-such-model"}),
            "validation.model_not_installed",
        ),
        (
            json!({"url": "https://example.com/a.mp3", "colour": "red"}),
            "validation.body",
        ),
    ] {
        assert_problem(&post_json(&node, jobs, None, &body), 422, code);
    }
    // Uploads: too large (streamed past http.max_body), empty, both sources, unknown field.
    let big = vec![7u8; 100 << 10];
    assert_problem(
        &post_form(&node, jobs, None, &[], Some(("big.wav", big))),
        413,
        "form.file_too_large",
    );
    assert_problem(
        &post_form(&node, jobs, None, &[], Some(("empty.wav", Vec::new()))),
        422,
        "validation.empty_file",
    );
    assert_problem(
        &post_form(
            &node,
            jobs,
            None,
            &[("url", "https://example.com/a.mp3")],
            Some(("a.wav", b"RIFF".to_vec())),
        ),
        422,
        "validation.source",
    );
    assert_problem(
        &post_form(&node, jobs, None, &[("colour", "red")], None),
        422,
        "form.unknown_field",
    );
    // Routing.
    assert_problem(&get(&node, "/v2/jobs", None), 404, "route.not_found");
    let wrong_method = Reply::of(ureq::put(&node.url(jobs)).call());
    assert_problem(&wrong_method, 405, "route.method_not_allowed");
    assert_eq!(wrong_method.header("allow"), Some("POST, GET"));
    for id in [
        "nope",
        "..%2F..%2Fetc%2Fpasswd",
        "0123456789ABCDEF01234567",
        "ffffffffffffffffffffffff",
    ] {
        assert_problem(
            &get(&node, &format!("/v1/jobs/{id}"), None),
            404,
            "job.not_found",
        );
    }
    assert_problem(
        &get(&node, "/v1/jobs?limit=500", None),
        422,
        "validation.limit",
    );
    assert_problem(
        &get(&node, "/v1/jobs?state=done", None),
        422,
        "validation.state",
    );
    assert_problem(
        &get(&node, "/v1/jobs?cursor=zzz", None),
        422,
        "validation.cursor",
    );
    assert_problem(
        &get(&node, "/v1/jobs?colour=red", None),
        400,
        "request.query",
    );
    // A job that cannot finish yet: its transcript is a conflict, then it is cancelled.
    let hanging = post_json(
        &node,
        jobs,
        None,
        &json!({"url": format!("http://127.0.0.1:{stall}/a.mp3")}),
    );
    assert_eq!(hanging.status, 202, "{}", hanging.text());
    let id = hanging.json()["id"].as_str().unwrap().to_owned();
    wait_for(&node, &id, None, state_is("downloading"));
    assert_problem(
        &get(&node, &format!("/v1/jobs/{id}/transcript"), None),
        409,
        "job.not_completed",
    );
    assert_problem(
        &post_empty(&node, &format!("/v1/jobs/{id}/retry"), None),
        409,
        "job.conflict",
    );
    // DELETE on a running job cancels it.
    let cancelling = delete(&node, &format!("/v1/jobs/{id}"), None);
    assert_eq!(cancelling.status, 202, "{}", cancelling.text());
    assert_eq!(cancelling.json()["cancel_requested"], true);
    let cancelled = wait_for(&node, &id, None, terminal);
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
    // Nothing above was a server error, and the node still serves.
    let metrics = get(&node, "/metrics", None).text();
    assert!(!metrics.contains("status=\"500\""), "{metrics}");
    assert_eq!(get(&node, "/healthz", None).status, 200);
}

#[test]
fn keys_roles_rate_limits_and_quotas() {
    use ytcaption_config::hash_api_key;
    let stall = stalling_server();
    let config = format!(
        r#"
[auth]
keys = [
  {{ id = "alice", hash = "{}", role = "user" }},
  {{ id = "bob", hash = "{}", role = "user", max_concurrent_jobs = 1 }},
  {{ id = "carol", hash = "{}", role = "user", rate_per_minute = 3 }},
  {{ id = "ops", hash = "{}", role = "admin" }},
]
{ALLOW_LOCAL}"#,
        hash_api_key("alice-key"),
        hash_api_key("bob-key"),
        hash_api_key("carol-key"),
        hash_api_key("ops-key"),
    );
    let node = NodeProcess::start(&config);
    assert!(!node.log().contains("without API keys"));
    let (alice, bob, carol, ops) = (
        Some("alice-key"),
        Some("bob-key"),
        Some("carol-key"),
        Some("ops-key"),
    );

    let missing = get(&node, "/v1/jobs", None);
    assert_problem(&missing, 401, "auth.missing_key");
    assert!(missing
        .header("www-authenticate")
        .unwrap()
        .starts_with("Bearer"));
    assert_problem(&get(&node, "/v1/jobs", Some("guess")), 401, "auth.bad_key");
    assert_problem(
        &Reply::of(
            ureq::get(&node.url("/v1/jobs"))
                .set("Authorization", "Basic YTpi")
                .call(),
        ),
        401,
        "auth.malformed",
    );
    // Operations endpoints need no key.
    assert_eq!(get(&node, "/healthz", None).status, 200);
    assert_eq!(get(&node, "/metrics", None).status, 200);

    let upload = post_form(
        &node,
        "/v1/jobs",
        alice,
        &[],
        Some(("beckett.wav", fixture_bytes("beckett.wav"))),
    );
    assert_eq!(upload.status, 202, "{}", upload.text());
    let alices = upload.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(upload.json()["owner"], "alice");
    assert_eq!(get(&node, &format!("/v1/jobs/{alices}"), alice).status, 200);
    assert_problem(
        &get(&node, &format!("/v1/jobs/{alices}"), bob),
        404,
        "job.not_found",
    );
    assert_problem(
        &delete(&node, &format!("/v1/jobs/{alices}"), bob),
        404,
        "job.not_found",
    );
    assert_eq!(get(&node, &format!("/v1/jobs/{alices}"), ops).status, 200);
    let bobs_list = get(&node, "/v1/jobs", bob).json();
    assert!(
        bobs_list["jobs"].as_array().unwrap().is_empty(),
        "{bobs_list}"
    );
    assert_problem(
        &get(&node, "/v1/jobs?owner=alice", bob),
        403,
        "auth.forbidden",
    );
    let by_owner = get(&node, "/v1/jobs?owner=alice", ops).json();
    assert_eq!(by_owner["jobs"][0]["id"], alices.as_str());
    assert_problem(
        &get(&node, "/v1/admin/status", alice),
        403,
        "auth.forbidden",
    );
    let status = get(&node, "/v1/admin/status", ops);
    assert_eq!(status.status, 200);
    assert!(status.json()["children"]
        .as_array()
        .is_some_and(|c| !c.is_empty()));

    // Quota: bob may have one job queued or running.
    let hanging = json!({"url": format!("http://127.0.0.1:{stall}/a.mp3")});
    let first = post_json(&node, "/v1/jobs", bob, &hanging);
    assert_eq!(first.status, 202, "{}", first.text());
    let bobs = first.json()["id"].as_str().unwrap().to_owned();
    let second = post_json(&node, "/v1/jobs", bob, &hanging);
    assert_problem(&second, 429, "quota.concurrent_jobs");
    assert!(
        second
            .header("retry-after")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert_problem(
        &post_empty(&node, &format!("/v1/jobs/{bobs}/retry"), bob),
        409,
        "job.conflict",
    );
    let cancel = post_empty(&node, &format!("/v1/jobs/{bobs}/cancel"), bob);
    assert_eq!(cancel.status, 202, "{}", cancel.text());
    assert_eq!(wait_for(&node, &bobs, bob, terminal)["state"], "cancelled");
    let retried = post_empty(&node, &format!("/v1/jobs/{bobs}/retry"), bob);
    assert_eq!(retried.status, 202, "{}", retried.text());
    assert!(!terminal(&retried.json()), "{}", retried.text());
    assert_eq!(
        post_empty(&node, &format!("/v1/jobs/{bobs}/cancel"), bob).status,
        202
    );

    // Rate limit: carol may make 3 requests a minute (a burst of 3).
    for _ in 0..3 {
        assert_eq!(get(&node, "/v1/jobs", carol).status, 200);
    }
    let limited = get(&node, "/v1/jobs", carol);
    assert_problem(&limited, 429, "rate.limited");
    let retry_after: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry_after), "{retry_after}");
    // Other keys are not affected.
    assert_eq!(get(&node, "/v1/jobs", alice).status, 200);
}

#[test]
fn unsafe_or_broken_configurations_stop_before_binding() {
    // Every interface without keys.
    let mut open = NodeProcess::spawn("", &[("YTCAPTION_HTTP__LISTEN", "0.0.0.0:0")]);
    let status = open
        .wait_exit(Duration::from_secs(30))
        .expect("the node should refuse to start");
    assert_eq!(status.code(), Some(2), "{}", open.log());
    assert!(
        open.log().contains("http.listen") && open.log().contains("without API keys"),
        "{}",
        open.log()
    );
    // The --http flag is checked the same way.
    let flag = Command::new(ytcaption_tests::node::binary())
        .args(["serve", "--http", "0.0.0.0:0"])
        .env("YTCAPTION_DATA_DIR", tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    assert_eq!(flag.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&flag.stderr).contains("without API keys"));
    // Several problems, all reported.
    let mut broken = NodeProcess::spawn("[http]\nmax_connections = 0\ncolour = \"red\"\n", &[]);
    let status = broken
        .wait_exit(Duration::from_secs(30))
        .expect("the node should refuse to start");
    assert_eq!(status.code(), Some(2), "{}", broken.log());
    let log = broken.log();
    assert!(
        !log.is_empty() && log.lines().all(|line| line.starts_with("error: ")),
        "{log}"
    );
}

#[test]
fn the_openai_sdk_works_against_the_node() {
    let python = common::repo().join(".venv-test/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run `make test-env`",
        python.display()
    );
    let node = NodeProcess::start("");
    let audio = common::fixture("beckett.wav");
    let script = r#"
import json, sys, openai
client = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="unused", max_retries=0)
audio = sys.argv[2]
out = {}
out["json"] = client.audio.transcriptions.create(model="whisper-1", file=open(audio, "rb")).text
v = client.audio.transcriptions.create(model="whisper-1", file=open(audio, "rb"),
    response_format="verbose_json", timestamp_granularities=["word", "segment"])
out["verbose"] = {"language": v.language, "duration": v.duration, "segments": len(v.segments),
    "first_segment": v.segments[0].text, "words": [w.word for w in v.words][:3],
    "word_end": v.words[0].end}
out["srt"] = client.audio.transcriptions.create(model="tiny.en", file=open(audio, "rb"), response_format="srt")
out["text"] = client.audio.transcriptions.create(model="whisper-1", file=open(audio, "rb"), response_format="text")
try:
    client.audio.transcriptions.create(model="whisper-1", file=("noise.wav", b"this is not audio"))
except openai.APIStatusError as e:
    out["bad_media"] = {"status": e.status_code, "body": e.body}
try:
    client.audio.transcriptions.create(model="whisper-1", file=open(audio, "rb"), response_format="docx")
except openai.APIStatusError as e:
    out["bad_format"] = {"status": e.status_code, "body": e.body}
print(json.dumps(out))
"#;
    let run = Command::new(&python)
        .args([
            "-W",
            "ignore",
            "-c",
            script,
            &node.base_url(),
            audio.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}\nnode log:\n{}", node.log());
    let out: Value = serde_json::from_slice(&run.stdout).unwrap();
    let text = out["json"].as_str().unwrap().to_lowercase();
    assert!(
        text.contains("ever tried") && text.contains("fail better"),
        "{out}"
    );
    assert_eq!(out["verbose"]["language"], "english");
    assert!(out["verbose"]["duration"].as_f64().unwrap() > 9.0);
    assert!(out["verbose"]["segments"].as_u64().unwrap() >= 1);
    assert_eq!(
        out["verbose"]["words"][0].as_str().unwrap().to_lowercase(),
        "ever"
    );
    assert!(out["verbose"]["word_end"].as_f64().unwrap() > 0.0);
    assert!(
        out["srt"].as_str().unwrap().starts_with("1\n00:00:00,"),
        "{out}"
    );
    assert!(
        out["text"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("fail again"),
        "{out}"
    );
    assert_eq!(out["bad_media"]["status"], 400, "{out}");
    assert!(
        out["bad_media"]["body"]["code"]
            .as_str()
            .unwrap()
            .starts_with("media."),
        "{out}"
    );
    assert_eq!(out["bad_media"]["body"]["type"], "invalid_request_error");
    assert_eq!(out["bad_format"]["status"], 422, "{out}");
    assert_eq!(
        out["bad_format"]["body"]["code"],
        "validation.response_format"
    );
    // Each request was a durable job, visible in the API.
    let jobs = get(&node, "/v1/jobs", None).json();
    assert!(jobs["jobs"].as_array().unwrap().len() >= 5, "{jobs}");
}

#[test]
fn the_cli_submits_waits_and_lists() {
    let node = NodeProcess::start("");
    let bin = ytcaption_tests::node::binary();
    let out_dir = tempfile::tempdir().unwrap();
    let output = out_dir.path().join("beckett.srt");
    let run = Command::new(&bin)
        .args([
            "submit",
            common::fixture("beckett.wav").to_str().unwrap(),
            "--wait",
            "--format",
            "srt",
        ])
        .arg("--output")
        .arg(&output)
        .env("YTCAPTION_SERVER", node.base_url())
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let srt = std::fs::read_to_string(&output).unwrap();
    assert!(
        srt.starts_with("1\n00:00:00,") && srt.to_lowercase().contains("ever tried"),
        "{srt}"
    );

    // Without --wait: the id on stdout.
    let run = Command::new(&bin)
        .args([
            "submit",
            common::fixture("beckett.wav").to_str().unwrap(),
            "--server",
            &node.base_url(),
        ])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let id = String::from_utf8(run.stdout).unwrap().trim().to_owned();
    assert_eq!(id.len(), 24, "{id}");
    wait_for(&node, &id, None, terminal);
    let list = Command::new(&bin)
        .args(["jobs", "list", "--server", &node.base_url()])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.status.success() && listed.contains(&id) && listed.contains("completed"),
        "{listed}"
    );
    let show = Command::new(&bin)
        .args(["jobs", "show", &id, "--server", &node.base_url()])
        .output()
        .unwrap();
    let shown: Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(shown["state"], "completed");

    // Failures: one `error:` line and exit status 1.
    for args in [
        vec!["submit", "ftp://example.com/a.mp3"],
        vec!["submit", "/no/such/file.wav"],
        vec!["jobs", "show", "ffffffffffffffffffffffff"],
        vec!["jobs", "cancel", &id],
    ] {
        let run = Command::new(&bin)
            .args(&args)
            .env("YTCAPTION_SERVER", node.base_url())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(1), "{args:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: {stderr}");
        assert!(lines[0].starts_with("error: "), "{args:?}: {stderr}");
    }
    // A media job that fails: --wait reports the job's reason.
    let bad = out_dir.path().join("bad.wav");
    std::fs::write(&bad, b"definitely not audio").unwrap();
    let run = Command::new(&bin)
        .args(["submit", bad.to_str().unwrap(), "--wait"])
        .env("YTCAPTION_SERVER", node.base_url())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("failed") && stderr.contains("media."),
        "{stderr}"
    );
}

#[test]
fn jobs_survive_kill_9_and_sigterm_stops_cleanly() {
    let mut node = NodeProcess::start("");
    let reply = post_form(
        &node,
        "/v1/jobs",
        None,
        &[],
        Some(("long.wav", fixture_bytes("long.wav"))),
    );
    assert_eq!(reply.status, 202, "{}", reply.text());
    let id = reply.json()["id"].as_str().unwrap().to_owned();
    wait_for(&node, &id, None, |view| {
        view["state"] == "transcribing" || terminal(view)
    });
    node.kill9();
    node.restart();
    let done = wait_for(&node, &id, None, terminal);
    assert_eq!(done["state"], "completed", "{done}\n{}", node.log());
    let text = get(&node, &format!("/v1/jobs/{id}/transcript?format=txt"), None).text();
    assert!(text.split_whitespace().count() > 100, "{text}");

    // SIGTERM with an event stream open: the stream ends, the process exits 0.
    let other = post_form(
        &node,
        "/v1/jobs",
        None,
        &[],
        Some(("long.wav", fixture_bytes("long.wav"))),
    );
    let other = other.json()["id"].as_str().unwrap().to_owned();
    let stream = ureq::get(&node.url(&format!("/v1/jobs/{other}/events")))
        .call()
        .unwrap();
    let reader = std::thread::spawn(move || read_sse(stream.into_reader()));
    std::thread::sleep(Duration::from_millis(300));
    let status = node
        .terminate(Duration::from_secs(20))
        .expect("the node should stop within its grace period");
    assert!(status.success(), "{status}\n{}", node.log());
    let events = reader.join().unwrap();
    assert!(!events.is_empty());
    assert!(node.log().contains("shutting down"), "{}", node.log());
}

#[test]
fn health_readiness_metrics_and_the_api_document() {
    let node = NodeProcess::start("");
    let health = get(&node, "/healthz", None);
    assert_eq!((health.status, health.text().trim()), (200, "ok"));
    let ready = get(&node, "/readyz", None);
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["ready"], true);
    assert_eq!(ready.json()["storage"], "ok");
    let doc = get(&node, "/openapi.json", None).json();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/v1/jobs/{id}/events"]["get"].is_object());
    assert_eq!(get(&node, "/v1/jobs", None).status, 200);
    let metrics = get(&node, "/metrics", None);
    assert_eq!(
        metrics.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = metrics.text();
    assert!(
        text.contains("ytcaption_http_requests_total{route=\"GET /v1/jobs\",status=\"200\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("ytcaption_http_request_duration_seconds_count{route=\"GET /healthz\"} 1"),
        "{text}"
    );
}

#[test]
fn connections_beyond_the_limit_wait_for_a_free_slot() {
    let node = NodeProcess::start("[http]\nmax_connections = 1\n");
    // One keep-alive connection takes the only slot.
    let mut held = TcpStream::connect((
        "127.0.0.1",
        node.base_url()
            .rsplit(':')
            .next()
            .unwrap()
            .parse::<u16>()
            .unwrap(),
    ))
    .unwrap();
    held.write_all(b"GET /healthz HTTP/1.1\r\nHost: node\r\n\r\n")
        .unwrap();
    let mut answer = [0u8; 12];
    held.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200");
    let url = node.url("/healthz");
    let started = Instant::now();
    let waiting = std::thread::spawn(move || {
        let reply = Reply::of(ureq::get(&url).timeout(Duration::from_secs(20)).call());
        (reply.status, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !waiting.is_finished(),
        "a second connection was served while the slot was taken"
    );
    drop(held);
    let (status, waited) = waiting.join().unwrap();
    assert_eq!(status, 200);
    assert!(waited >= Duration::from_millis(1500), "{waited:?}");
}

#[test]
fn an_openai_client_that_hangs_up_cancels_its_job() {
    let node = NodeProcess::start("");
    let audio = fixture_bytes("long.wav");
    let (content_type, body) = multipart(
        &[("model", "whisper-1")],
        Some(("file", "long.wav", &audio)),
    );
    let port: u16 = node.base_url().rsplit(':').next().unwrap().parse().unwrap();
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let head = format!(
        "POST /v1/audio/transcriptions HTTP/1.1\r\nHost: node\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    client.write_all(head.as_bytes()).unwrap();
    client.write_all(&body).unwrap();
    // The upload became a job that is running; then the client goes away.
    let deadline = Instant::now() + JOB_TIMEOUT;
    let id = loop {
        let jobs = get(&node, "/v1/jobs", None).json();
        if let Some(job) = jobs["jobs"].as_array().unwrap().first() {
            if job["state"] == "transcribing" {
                break job["id"].as_str().unwrap().to_owned();
            }
            assert!(!terminal(job), "{job}");
        }
        assert!(Instant::now() < deadline, "no running job:\n{}", node.log());
        std::thread::sleep(Duration::from_millis(100));
    };
    drop(client);
    let view = wait_for(&node, &id, None, terminal);
    assert_eq!(view["state"], "cancelled", "{view}");
    assert!(node.log().contains("client left"), "{}", node.log());
}
