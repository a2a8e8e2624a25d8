//! Garbage, old and newer versions of cluster messages sent to a real node over its cluster
//! port, by a probe node in this process: each is refused with an answer and a counted error,
//! never a crash or a silent drop, and the node stays healthy.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use ractor::{Actor, ActorRef};
use ytcaption_actors::cluster::PeerMsg;
use ytcaption_actors::worker::WorkerMsg;
use ytcaption_protocol::cluster::{PeerAnswer, PeerRequest};
use ytcaption_protocol::wire::{decode, encode};
use ytcaption_protocol::JobId;
use ytcaption_tests::cluster::COOKIE;
use ytcaption_tests::node::{free_port, NodeProcess};

async fn remote_member(group: &str) -> ractor::ActorCell {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(cell) = ractor::pg::get_members(&group.to_owned())
            .into_iter()
            .find(|cell| !cell.get_id().is_local())
        {
            return cell;
        }
        assert!(Instant::now() < deadline, "no remote member of {group}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn ask(peer: &ActorRef<PeerMsg>, bytes: Vec<u8>) -> PeerAnswer {
    let reply = peer
        .call(
            |reply| PeerMsg::Request(bytes, reply),
            Some(Duration::from_secs(5)),
        )
        .await
        .expect("call sent");
    match reply {
        ractor::rpc::CallResult::Success(answer) => decode(&answer).expect("answers decode"),
        other => panic!("no answer: {other:?}"),
    }
}

fn refused(answer: PeerAnswer) -> String {
    match answer {
        PeerAnswer::Refused(reason) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn metric(node: &NodeProcess, code: &str) -> u64 {
    let text = ureq::get(&node.url("/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    let prefix = format!("ytcaption_cluster_wire_errors_total{{code=\"{code}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map_or(0, |value| value.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_cluster_messages_are_refused_counted_and_harmless() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let node = NodeProcess::start_with_env(
        "",
        &[
            ("YTCAPTION_NODE_NAME", "n1"),
            ("YTCAPTION_CLUSTER__LISTEN", &listen),
            ("YTCAPTION_CLUSTER__COOKIE", COOKIE),
            // The probe answers no heartbeats: keep its session open for the whole test.
            ("YTCAPTION_CLUSTER__SUSPECT_AFTER", "30s"),
            ("YTCAPTION_CLUSTER__DOWN_AFTER", "60s"),
        ],
    );
    let probe = ractor_cluster::NodeServer::new(
        0,
        COOKIE.to_owned(),
        "probe".to_owned(),
        "127.0.0.1".to_owned(),
        None,
        None,
    );
    let (server, _) = Actor::spawn(None, probe, ()).await.unwrap();
    ractor_cluster::client_connect(&server, listen.as_str())
        .await
        .unwrap();
    let peer: ActorRef<PeerMsg> = remote_member("ytcaption.peer/n1").await.into();

    // A valid request is answered (the job is unknown).
    let lookup = encode(&PeerRequest::Lookup(JobId::new(1, 1))).unwrap();
    assert_eq!(ask(&peer, lookup.clone()).await, PeerAnswer::Found(None));

    let reason = refused(ask(&peer, b"definitely not a message".to_vec()).await);
    assert!(reason.contains("magic"), "{reason}");
    let reason = refused(ask(&peer, Vec::new()).await);
    assert!(reason.contains("magic"), "{reason}");
    let mut old = lookup.clone();
    old[4..6].copy_from_slice(&0u16.to_le_bytes());
    let reason = refused(ask(&peer, old).await);
    assert!(reason.contains("version 0"), "{reason}");
    let mut newer = lookup.clone();
    newer[4..6].copy_from_slice(&99u16.to_le_bytes());
    let reason = refused(ask(&peer, newer).await);
    assert!(reason.contains("version 99"), "{reason}");
    let mut truncated = lookup.clone();
    truncated.truncate(lookup.len() - 3);
    let reason = refused(ask(&peer, truncated).await);
    assert!(reason.contains("malformed"), "{reason}");

    // A worker refuses a step request it cannot decode with an empty answer (the caller counts
    // it as a lost attempt), and does not fail.
    let worker: ActorRef<WorkerMsg> = remote_member("transcriber").await.into();
    let reply = worker
        .call(
            |reply| WorkerMsg::Run(b"garbage".to_vec(), reply),
            Some(Duration::from_secs(5)),
        )
        .await
        .unwrap();
    assert!(matches!(reply, ractor::rpc::CallResult::Success(bytes) if bytes.is_empty()));

    assert_eq!(metric(&node, "wire.bad_magic"), 3);
    assert_eq!(metric(&node, "wire.version"), 2);
    assert_eq!(metric(&node, "wire.malformed"), 1);
    // Still whole: it answers, and its supervision tree saw no failure.
    assert_eq!(ask(&peer, lookup).await, PeerAnswer::Found(None));
    let status: serde_json::Value = serde_json::from_str(
        &ureq::get(&node.url("/v1/admin/status"))
            .call()
            .unwrap()
            .into_string()
            .unwrap(),
    )
    .unwrap();
    let children = status["children"].as_array().unwrap();
    assert!(
        children.iter().all(|child| child["restarts"] == 0),
        "{status}"
    );
    server.stop(None);
}
