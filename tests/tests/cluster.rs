//! The peer cluster with real node processes on 127.0.0.1: placement across nodes (the job
//! record says where each step ran), `kill -9` of a job's owner mid-transcription, a paused
//! (SIGSTOPped) owner declared down and fenced when it comes back, a restarted node rejoining,
//! drain, and garbage on the cluster port.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{hooks, response};

use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use ytcaption_actors::notify::webhook;
use ytcaption_tests::cluster::TestCluster;
use ytcaption_tests::media_server::{MediaServer, RecordedRequest};
use ytcaption_tests::node::NodeProcess;
use ytcaption_tests::smtp::SmtpSink;

const SECRET: &str = "cluster-webhook-secret-0123456789";

fn config(smtp_port: u16) -> String {
    ytcaption_tests::node::node_config(SECRET, smtp_port, "")
}

fn no_env(_: usize) -> Vec<(String, String)> {
    Vec::new()
}

fn get(node: &NodeProcess, path: &str) -> (u16, Value) {
    response(
        ureq::get(&node.url(path))
            .timeout(Duration::from_secs(10))
            .call(),
    )
}

fn submit(node: &NodeProcess, body: &Value) -> String {
    let (status, job) = response(ureq::post(&node.url("/v1/jobs")).send_json(body.clone()));
    assert_eq!(status, 202, "{job}");
    job["id"].as_str().unwrap().to_owned()
}

/// Submits the 100 s clip with a webhook (`/sink/hook`) and an email: long enough to fault
/// a node mid-transcription.
fn submit_long(node: &NodeProcess, media: &MediaServer) -> String {
    submit(
        node,
        &json!({
            "url": media.url("/files/long.wav"),
            "webhook_url": media.url("/sink/hook"),
            "email": "desk@example.com",
        }),
    )
}

/// Polls `node` until the job matches `done`.
fn wait_job(
    node: &NodeProcess,
    id: &str,
    timeout: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let (status, job) = get(node, &format!("/v1/jobs/{id}"));
        if status == 200 && done(&job) {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} not there within {timeout:?}: {status} {job}\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn terminal(job: &Value) -> bool {
    ["completed", "failed", "cancelled"].contains(&job["state"].as_str().unwrap_or(""))
}

fn transcript(node: &NodeProcess, id: &str) -> String {
    let response = ureq::get(&node.url(&format!("/v1/jobs/{id}/transcript?format=txt")))
        .call()
        .expect("transcript");
    response.into_string().unwrap()
}

fn check_hook(request: &RecordedRequest, id: &str, state: &str) {
    let header = request
        .header(webhook::SIGNATURE_HEADER)
        .expect("signature header");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    webhook::verify(SECRET.as_bytes(), header, &request.body, now, 600).expect("valid signature");
    let body: Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(body["job_id"], id, "{body}");
    assert_eq!(body["status"], state, "{body}");
}

/// Exactly one webhook and one email arrived for `id`, after a quiet second for late ones.
fn notified_once(media: &MediaServer, smtp: &SmtpSink, hook_path: &str, id: &str) {
    smtp.wait_for(1, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(2));
    let deliveries = hooks(media, hook_path);
    assert_eq!(deliveries.len(), 1, "webhooks: {}", deliveries.len());
    check_hook(&deliveries[0], id, "completed");
    assert_eq!(smtp.messages().len(), 1, "emails");
}

fn wait_transcribing(node: &NodeProcess, id: &str) {
    wait_job(node, id, Duration::from_secs(60), |job| {
        job["state"] == "transcribing"
    });
}

#[test]
fn a_job_submitted_at_one_node_is_transcribed_on_another() {
    let smtp = SmtpSink::start();
    let media = MediaServer::start(&common::fixtures());
    // n1 runs no Transcriber: its jobs must be transcribed on n2.
    let mut cluster = TestCluster::start(2, &config(smtp.port()), |i| {
        if i == 0 {
            vec![(
                "YTCAPTION_CLUSTER__ROLES".into(),
                "download,store,notify".into(),
            )]
        } else {
            Vec::new()
        }
    });
    cluster.wait_mesh(&[0, 1], Duration::from_secs(20));
    let id = submit(
        &cluster.nodes[0],
        &json!({
            "url": media.url("/files/news_espeak.wav"),
            "webhook_url": media.url("/sink/hook"),
            "email": "desk@example.com",
        }),
    );
    let (n1, n2) = (&cluster.nodes[0], &cluster.nodes[1]);
    let done = wait_job(n1, &id, Duration::from_secs(120), terminal);
    assert_eq!(done["state"], "completed", "{done}\n{}", n1.log());
    let placement = &done["placement"];
    assert_eq!(placement["owner_node"], "n1", "{done}");
    assert_eq!(placement["epoch"], 1, "{done}");
    assert_eq!(placement["ran_on"]["download"], "n1", "{done}");
    assert_eq!(placement["ran_on"]["transcribe"], "n2", "{done}");
    assert_eq!(placement["ran_on"]["store"], "n2", "{done}");
    // Any node answers for any job, transcript included.
    let (status, seen_at_n2) = get(n2, &format!("/v1/jobs/{id}"));
    assert_eq!(status, 200);
    assert_eq!(seen_at_n2["state"], "completed");
    let wer = common::wer(&common::expected_text("news_espeak"), &transcript(n2, &id));
    assert!(wer < 0.15, "wer {wer}");
    notified_once(&media, &smtp, "/sink/hook", &id);
    // A job nobody knows is a 404 everywhere.
    let (status, _) = get(n2, "/v1/jobs/0123456789abcdef01234567");
    assert_eq!(status, 404);
    // The owner took its own copy of the transcript before notifying: it outlives n2, the
    // node that stored it (local storage).
    cluster.nodes[1].kill9();
    let n1 = &cluster.nodes[0];
    let wer = common::wer(&common::expected_text("news_espeak"), &transcript(n1, &id));
    assert!(wer < 0.15, "wer {wer}\n{}", n1.log());
}

/// Splits media longer than 30 s into chunks of at most about 25 s (one second of overlap):
/// six of about 17 s for the 100 s clip on three Transcribers.
fn split_env(_: usize) -> Vec<(String, String)> {
    vec![
        ("YTCAPTION_TRANSCRIBER__SPLIT_ABOVE".into(), "30s".into()),
        ("YTCAPTION_TRANSCRIBER__SPLIT_CHUNK".into(), "25s".into()),
    ]
}

#[test]
fn long_media_is_split_across_the_cluster_and_merged_without_lost_or_doubled_words() {
    let smtp = SmtpSink::start();
    let media = MediaServer::start(&common::fixtures());
    let cluster = TestCluster::start(3, &config(smtp.port()), split_env);
    cluster.wait_mesh(&[0, 1, 2], Duration::from_secs(20));
    let n1 = &cluster.nodes[0];
    let id = submit_long(n1, &media);
    let done = wait_job(n1, &id, Duration::from_secs(300), terminal);
    let nodes = check_split(&done, n1, &id);
    assert!(nodes.len() >= 2, "all chunks ran on {nodes:?}");
    notified_once(&media, &smtp, "/sink/hook", &id);
}

#[test]
fn a_node_lost_mid_chunk_leaves_its_chunk_to_the_splitting_worker_in_the_same_attempt() {
    let smtp = SmtpSink::start();
    let media = MediaServer::start(&common::fixtures());
    let mut cluster = TestCluster::start(3, &config(smtp.port()), split_env);
    cluster.wait_mesh(&[0, 1, 2], Duration::from_secs(20));
    let id = submit_long(&cluster.nodes[0], &media);
    // The splitting worker runs where the download ran; kill another node while it holds a
    // chunk (a 17 s chunk of tiny.en takes a couple of seconds here).
    let started = wait_job(&cluster.nodes[0], &id, Duration::from_secs(60), |job| {
        job["placement"]["ran_on"]["transcribe"].is_string()
    });
    let splitter = started["placement"]["ran_on"]["transcribe"]
        .as_str()
        .unwrap()
        .to_owned();
    let name = |i: usize| format!("n{}", i + 1);
    let victim = (1..3).find(|&i| name(i) != splitter).unwrap();
    // Its Transcriber is busy (by the splitter's view of its load): it holds a chunk.
    let splitter_index = (0..3).find(|&i| name(i) == splitter).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = cluster.status(splitter_index);
        let busy = status["cluster"]["members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|member| member["name"] == name(victim).as_str())
            .flat_map(|member| member["workers"].as_array().cloned().unwrap_or_default())
            .any(|load| load["role"] == "transcriber" && load["idle"] == 0);
        if busy {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} never took a chunk",
            name(victim)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    cluster.nodes[victim].kill9();
    let done = wait_job(&cluster.nodes[0], &id, Duration::from_secs(300), terminal);
    let nodes = check_split(&done, &cluster.nodes[0], &id);
    assert_eq!(
        done["attempts"]["transcribe"], 1,
        "the step was not run again: {done}"
    );
    let log = cluster.nodes[splitter_index].log();
    assert!(
        log.contains("a chunk failed elsewhere; transcribing it here"),
        "the lost chunk was not taken back: {log}"
    );
    eprintln!("{} killed; chunks ran on {nodes:?}", name(victim));
    notified_once(&media, &smtp, "/sink/hook", &id);
}

/// A split job's checks: completed; chunks that cover the file end to end; a transcript with
/// global, ordered word times, close to the known text, with no words lost or doubled at the
/// seams. Returns the nodes that transcribed chunks.
fn check_split(done: &Value, node: &NodeProcess, id: &str) -> Vec<String> {
    assert_eq!(done["state"], "completed", "{done}\n{}", node.log());
    let chunks = done["placement"]["chunks"]
        .as_array()
        .expect("chunks")
        .clone();
    assert!(chunks.len() >= 3, "{done}");
    let mut end = 0.0;
    for chunk in &chunks {
        assert_eq!(chunk["start"].as_f64().unwrap(), end, "{chunks:?}");
        end = chunk["end"].as_f64().unwrap();
        assert!(end - chunk["start"].as_f64().unwrap() >= 10.0, "{chunks:?}");
    }
    let duration = done["duration_s"].as_f64().expect("duration");
    assert!((end - duration).abs() < 0.1, "{end} vs {duration}");
    let mut nodes: Vec<String> = chunks
        .iter()
        .map(|c| c["node"].as_str().unwrap().to_owned())
        .collect();
    nodes.sort_unstable();
    nodes.dedup();

    let json: Value = ureq::get(&node.url(&format!("/v1/jobs/{id}/transcript?format=json")))
        .call()
        .expect("json transcript")
        .into_json()
        .unwrap();
    let words: Vec<(f64, String)> = json["segments"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|segment| segment["words"].as_array().cloned().unwrap_or_default())
        .map(|word| {
            (
                word["start"].as_f64().unwrap(),
                word["word"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(words.len() > 100, "{json}");
    assert!(
        words.windows(2).all(|pair| pair[1].0 >= pair[0].0 - 0.01),
        "word times go back: {words:?}"
    );
    assert!(
        words.last().unwrap().0 > 80.0,
        "times are global: {words:?}"
    );
    let reference = common::expected_text("long");
    let text = transcript(node, id);
    let wer = common::wer(&reference, &text);
    eprintln!(
        "split over {nodes:?}: {} chunks, WER {wer:.3}",
        chunks.len()
    );
    assert!(wer < 0.2, "wer {wer}: {text}");
    let (reference_words, said) = (
        common::normalise(&reference).len() as f64,
        common::normalise(&text).len() as f64,
    );
    assert!(
        (said - reference_words).abs() / reference_words < 0.1,
        "{said} words for {reference_words}: words lost or doubled at the seams: {text}"
    );
    nodes
}

#[test]
fn kill_9_of_the_owner_mid_transcription_another_node_completes_it_once() {
    let smtp = SmtpSink::start();
    let media = MediaServer::start(&common::fixtures());
    let mut cluster = TestCluster::start(3, &config(smtp.port()), no_env);
    cluster.wait_mesh(&[0, 1, 2], Duration::from_secs(20));
    let id = submit_long(&cluster.nodes[0], &media);
    wait_transcribing(&cluster.nodes[0], &id);
    std::thread::sleep(Duration::from_millis(500));
    cluster.nodes[0].kill9();
    // n1's death is seen through the closed connection, well under a second.
    cluster.wait_member(1, "n1", "down", Duration::from_secs(1));
    let done = wait_job(&cluster.nodes[1], &id, Duration::from_secs(180), terminal);
    assert_eq!(
        done["state"],
        "completed",
        "{done}\n{}",
        cluster.nodes[1].log()
    );
    let owner = done["placement"]["owner_node"].as_str().unwrap();
    assert!(owner == "n2" || owner == "n3", "{done}");
    assert_eq!(done["placement"]["epoch"], 2, "{done}");
    let wer = common::wer(
        &common::expected_text("long"),
        &transcript(&cluster.nodes[2], &id),
    );
    assert!(wer < 0.2, "wer {wer}");
    notified_once(&media, &smtp, "/sink/hook", &id);

    // The old owner comes back on its own data: it rejoins by itself, learns the newer
    // epoch, and does not run the job again.
    cluster.nodes[0].restart();
    cluster.wait_mesh(&[0, 1, 2], Duration::from_secs(20));
    let seen = wait_job(&cluster.nodes[0], &id, Duration::from_secs(30), |job| {
        job["placement"]["epoch"] == 2 && job["state"] == "completed"
    });
    assert_eq!(seen["placement"]["owner_node"], owner);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(hooks(&media, "/sink/hook").len(), 1);
    assert_eq!(smtp.messages().len(), 1);
}

#[test]
fn a_paused_owner_is_declared_down_within_3s_and_fenced_when_it_resumes() {
    let smtp = SmtpSink::start();
    let media = MediaServer::start(&common::fixtures());
    let cluster = TestCluster::start(3, &config(smtp.port()), no_env);
    cluster.wait_mesh(&[0, 1, 2], Duration::from_secs(20));
    let id = submit_long(&cluster.nodes[0], &media);
    wait_transcribing(&cluster.nodes[0], &id);
    let stopped_ms = ytcaption_protocol::time::now_ms();
    cluster.nodes[0].signal("STOP");
    cluster.wait_member(1, "n1", "down", Duration::from_secs(10));
    let members = cluster.status(1)["cluster"]["members"].clone();
    let n1 = members
        .as_array()
        .unwrap()
        .iter()
        .find(|member| member["name"] == "n1")
        .unwrap();
    let detected_ms = n1["since_ms"].as_u64().unwrap().saturating_sub(stopped_ms);
    assert!(
        detected_ms <= 3_000,
        "hang detected after {detected_ms} ms: {n1}"
    );
    // Its job moves to a live node and completes there.
    let done = wait_job(&cluster.nodes[1], &id, Duration::from_secs(180), terminal);
    assert_eq!(
        done["state"],
        "completed",
        "{done}\n{}",
        cluster.nodes[1].log()
    );
    assert_ne!(done["placement"]["owner_node"], "n1", "{done}");
    let epoch = done["placement"]["epoch"].as_u64().unwrap();
    assert!(epoch >= 2, "{done}");

    // Resumed, n1 rejoins, learns the newer epoch and stops driving its old copy.
    cluster.nodes[0].signal("CONT");
    cluster.wait_mesh(&[0, 1, 2], Duration::from_secs(20));
    let seen = wait_job(&cluster.nodes[0], &id, Duration::from_secs(60), |job| {
        job["placement"]["epoch"].as_u64() >= Some(epoch) && terminal(job)
    });
    assert_eq!(seen["state"], "completed", "{seen}");
    notified_once(&media, &smtp, "/sink/hook", &id);
}

#[test]
fn draining_a_node_hands_its_jobs_over_and_undrain_restores_it() {
    let smtp = SmtpSink::start();
    let media = MediaServer::start(&common::fixtures());
    let cluster = TestCluster::start(2, &config(smtp.port()), no_env);
    cluster.wait_mesh(&[0, 1], Duration::from_secs(20));
    let (n1, n2) = (&cluster.nodes[0], &cluster.nodes[1]);
    let id = submit_long(n1, &media);
    wait_transcribing(n1, &id);
    // Drain n1 through n2: the request is forwarded to n1.
    let (status, body) = response(ureq::post(&n2.url("/v1/admin/nodes/n1/drain")).call());
    assert_eq!(status, 200, "{body}");
    let done = wait_job(n2, &id, Duration::from_secs(180), terminal);
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["placement"]["owner_node"], "n2", "{done}");
    assert_eq!(cluster.status(0)["cluster"]["draining"], true);
    // While n1 drains, new jobs submitted there run their steps on n2.
    let second = submit(n1, &json!({ "url": media.url("/files/news_espeak.wav") }));
    let second = wait_job(n1, &second, Duration::from_secs(120), terminal);
    assert_eq!(second["state"], "completed", "{second}");
    assert_eq!(
        second["placement"]["ran_on"]["transcribe"], "n2",
        "{second}"
    );
    let (status, _) = response(ureq::post(&n1.url("/v1/admin/nodes/n1/undrain")).call());
    assert_eq!(status, 200);
    assert_eq!(cluster.status(0)["cluster"]["draining"], false);
    let (status, body) = response(ureq::post(&n1.url("/v1/admin/nodes/no-such/drain")).call());
    assert_eq!(status, 503, "{body}");
    notified_once(&media, &smtp, "/sink/hook", &id);
}

#[test]
fn garbage_on_the_cluster_port_does_not_hurt_a_node() {
    let smtp = SmtpSink::start();
    let media = MediaServer::start(&common::fixtures());
    let cluster = TestCluster::start(2, &config(smtp.port()), no_env);
    cluster.wait_mesh(&[0, 1], Duration::from_secs(20));
    let port = cluster.cluster_ports[0];
    let garbage: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        vec![0xff; 4096],
        // A length prefix far past the frame limit, then nothing.
        vec![0x7f, 0xff, 0xff, 0xff, 0x00],
        (0..=255u8).cycle().take(100_000).collect(),
        Vec::new(),
    ];
    for bytes in garbage {
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = stream.write_all(&bytes);
            let _ = stream.flush();
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let (status, _) = get(&cluster.nodes[0], "/healthz");
    assert_eq!(status, 200);
    cluster.wait_mesh(&[0, 1], Duration::from_secs(10));
    let id = submit(
        &cluster.nodes[1],
        &json!({ "url": media.url("/files/news_espeak.wav") }),
    );
    let done = wait_job(&cluster.nodes[0], &id, Duration::from_secs(120), terminal);
    assert_eq!(done["state"], "completed", "{done}");
}

#[test]
fn a_cluster_over_tls_meshes_and_runs_jobs_and_plain_tcp_cannot_join() {
    let smtp = SmtpSink::start();
    let media = MediaServer::start(&common::fixtures());
    let dir = tempfile::tempdir().unwrap();
    let cert = ytcaption_tests::tls::TestCert::generate(dir.path());
    let ca = dir.path().join("ca.pem");
    let tls = |i: usize| {
        let mut env = vec![
            (
                "YTCAPTION_CLUSTER__TLS_CERT".to_owned(),
                cert.cert_path.display().to_string(),
            ),
            (
                "YTCAPTION_CLUSTER__TLS_KEY".to_owned(),
                cert.key_path.display().to_string(),
            ),
            (
                "YTCAPTION_CLUSTER__TLS_CA".to_owned(),
                ca.display().to_string(),
            ),
        ];
        if i == 0 {
            env.push((
                "YTCAPTION_CLUSTER__ROLES".into(),
                "download,store,notify".into(),
            ));
        }
        env
    };
    let cluster = TestCluster::start(2, &config(smtp.port()), tls);
    cluster.wait_mesh(&[0, 1], Duration::from_secs(20));
    let id = submit(
        &cluster.nodes[0],
        &json!({ "url": media.url("/files/news_espeak.wav") }),
    );
    let done = wait_job(&cluster.nodes[0], &id, Duration::from_secs(120), terminal);
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["placement"]["ran_on"]["transcribe"], "n2", "{done}");

    // A node that speaks plain TCP to the TLS listeners never becomes a member.
    let plain = NodeProcess::start_with_env(
        &config(smtp.port()),
        &[
            ("YTCAPTION_NODE_NAME", "plain"),
            (
                "YTCAPTION_CLUSTER__LISTEN",
                &format!("127.0.0.1:{}", ytcaption_tests::node::free_port()),
            ),
            (
                "YTCAPTION_CLUSTER__SEEDS",
                &format!("127.0.0.1:{}", cluster.cluster_ports[0]),
            ),
            (
                "YTCAPTION_CLUSTER__COOKIE",
                ytcaption_tests::cluster::COOKIE,
            ),
        ],
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(cluster.member_state(0, "plain"), None);
    let (status, _) = get(&plain, "/healthz");
    assert_eq!(status, 200);
    cluster.wait_mesh(&[0, 1], Duration::from_secs(5));
}
