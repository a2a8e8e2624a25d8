//! The system under test and everything around it: N real `ytcaption serve` processes whose
//! cluster traffic runs through [`crate::proxy`] links, the media server (which is also the
//! webhook receiver), the SMTP sink and, for `--storage s3`, SeaweedFS. The fault primitives
//! live here too; [`crate::faults`] decides when to use them.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;
use ytcaption_actors::notify::webhook;
use ytcaption_protocol::time::now_ms;
use ytcaption_tests::media_server::{MediaServer, RecordedRequest, Reply};
use ytcaption_tests::node::{free_port, NodeProcess};
use ytcaption_tests::seaweed::SeaweedFs;
use ytcaption_tests::smtp::{ParsedMail, SmtpSink};

use crate::proxy::{Link, Mode};

pub const WEBHOOK_SECRET: &str = "chaos-webhook-secret-0123456789abcdef";
const COOKIE: &str = "chaos-cluster-cookie";
/// How long a webhook receiver answering `/sink/slow/...` waits before its 200.
pub const SLOW_HOOK: Duration = Duration::from_secs(4);

/// Locks a mutex, ignoring poisoning (a panicking thread aborts the run anyway).
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where job blobs go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Storage {
    Local,
    S3,
}

/// What a node process is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Up,
    /// SIGKILLed; comes back with a restart.
    Killed,
    /// SIGSTOPped.
    Stopped,
    /// SIGKILLed for good (permanent loss).
    Lost,
}

/// One webhook delivery the receiver accepted (answered 200).
#[derive(Debug, Clone)]
pub struct Hook {
    /// The job's client key (from the path `/sink/[slow/]<key>`).
    pub key: String,
    pub delivery: String,
    pub job_id: String,
    pub status: String,
    pub signature_ok: bool,
    pub at_ms: u64,
}

/// The webhook receiver's state.
#[derive(Debug)]
pub struct HookLog {
    /// Where `/bad/<name>` files come from (the media server serves no subdirectories).
    pub bad_dir: std::path::PathBuf,
    pub hooks: Mutex<Vec<Hook>>,
    /// While set, every delivery gets a 503 (an outage).
    pub down: AtomicBool,
    /// Deliveries refused during outages.
    pub refused: Mutex<usize>,
}

impl HookLog {
    fn handle(&self, request: &RecordedRequest) -> Option<Reply> {
        let path = request.path();
        if let Some(rest) = path.strip_prefix("/sink/") {
            if self.down.load(Ordering::SeqCst) {
                *lock(&self.refused) += 1;
                return Some(Reply::text(503, "receiver outage"));
            }
            let key = match rest.strip_prefix("slow/") {
                Some(key) => {
                    std::thread::sleep(SLOW_HOOK);
                    key
                }
                None => rest,
            };
            let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
            let signature_ok = request
                .header(webhook::SIGNATURE_HEADER)
                .is_some_and(|header| {
                    webhook::verify(
                        WEBHOOK_SECRET.as_bytes(),
                        header,
                        &request.body,
                        now_ms() / 1000,
                        600,
                    )
                    .is_ok()
                });
            lock(&self.hooks).push(Hook {
                key: key.to_owned(),
                delivery: request
                    .header("ytcaption-delivery")
                    .unwrap_or_default()
                    .to_owned(),
                job_id: body["job_id"].as_str().unwrap_or_default().to_owned(),
                status: body["status"].as_str().unwrap_or_default().to_owned(),
                signature_ok,
                at_ms: now_ms(),
            });
            return Some(Reply::text(200, "ok"));
        }
        if let Some(name) = path.strip_prefix("/bad/") {
            return Some(match std::fs::read(self.bad_dir.join(name)) {
                Ok(bytes) => {
                    let kind = if name.ends_with(".wav") {
                        "audio/wav"
                    } else {
                        "audio/mpeg"
                    };
                    Reply::new(200, kind, bytes)
                }
                Err(_) => Reply::text(404, "no such file"),
            });
        }
        // `/files/<name>?delay=<ms>`: a slow origin (the download step takes that long).
        if let Some(ms) = request.query("delay").and_then(|ms| ms.parse().ok()) {
            std::thread::sleep(Duration::from_millis(ms));
        }
        None
    }
}

#[derive(Debug)]
struct Smtp {
    current: Option<SmtpSink>,
    retired: Vec<SmtpSink>,
    port: u16,
}

/// One fault as it happened.
#[derive(Debug, Clone)]
pub struct FaultRecord {
    /// Seconds since the run started.
    pub t_s: f64,
    /// Wall clock, ms since the epoch.
    pub at_ms: u64,
    pub kind: String,
    pub target: String,
    pub detail: String,
    /// Failure detection time (a peer saw the target `down`), when measured.
    pub detection_ms: Option<u64>,
    /// When the peer saw it down (its `since_ms`).
    pub detected_at_ms: Option<u64>,
}

/// A stretch of time in which a node was cut off from every other node (killed, lost,
/// stopped or isolated).
#[derive(Debug, Clone, Copy)]
pub struct Outage {
    pub node: usize,
    pub from_ms: u64,
    /// When it ended (the node ready again, continued, or its links healed); `None`: ongoing.
    pub to_ms: Option<u64>,
    /// Permanent (never restarted).
    pub lost: bool,
}

/// The running system.
#[derive(Debug)]
pub struct World {
    pub names: Vec<String>,
    pub urls: Vec<String>,
    nodes: Vec<Mutex<NodeProcess>>,
    health: Vec<Mutex<Health>>,
    pub cluster_ports: Vec<u16>,
    links: Vec<Link>,
    pub media: MediaServer,
    pub hooks: Arc<HookLog>,
    smtp: Mutex<Smtp>,
    seaweed: Option<SeaweedFs>,
    pub faults: Mutex<Vec<FaultRecord>>,
    pub outages: Mutex<Vec<Outage>>,
    pub started: Instant,
    pub replication_factor: usize,
}

/// The node configuration file.
fn config(smtp_port: u16, storage: &str) -> String {
    ytcaption_tests::node::node_config(WEBHOOK_SECRET, smtp_port, storage)
}

/// The nodes' bucket in S3 mode.
const S3_BUCKET: &str = "ytcaption-chaos";

fn s3_config(s3: &SeaweedFs) -> String {
    format!(
        "[storage]\nbackend = \"s3\"\n\n[storage.s3]\nendpoint = \"{}\"\nregion = \"{}\"\nbucket = \"{}\"\naccess_key = \"{}\"\nsecret_key = \"{}\"\n",
        s3.endpoint(),
        s3.region,
        S3_BUCKET,
        s3.access_key(),
        s3.secret_key()
    )
}

impl World {
    /// Starts everything: `n` nodes, each ready (not yet meshed: see [`Self::wait_mesh`]).
    pub fn start(n: usize, storage: Storage, fixtures: PathBuf) -> anyhow::Result<World> {
        let hooks = Arc::new(HookLog {
            bad_dir: fixtures.join("bad"),
            hooks: Mutex::default(),
            down: AtomicBool::new(false),
            refused: Mutex::default(),
        });
        let handler_hooks = hooks.clone();
        let media =
            MediaServer::start_with(&fixtures, move |request| handler_hooks.handle(request));
        let smtp = SmtpSink::start();
        let seaweed = (storage == Storage::S3).then(SeaweedFs::start);
        let storage_toml = seaweed.as_ref().map(s3_config).unwrap_or_default();
        let config = config(smtp.port(), &storage_toml);
        let cluster_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let mut links = Vec::new();
        for from in 0..n {
            for (to, &port) in cluster_ports.iter().enumerate() {
                if from != to {
                    links.push(Link::start(from, to, port)?);
                }
            }
        }
        let names: Vec<String> = (1..=n).map(|i| format!("n{i}")).collect();
        let nodes: Vec<NodeProcess> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..n)
                .map(|i| {
                    let seeds = links
                        .iter()
                        .filter(|link| link.from == i)
                        .map(|link| format!("127.0.0.1:{}", link.port))
                        .collect::<Vec<_>>()
                        .join(",");
                    let env: Vec<(String, String)> = vec![
                        ("YTCAPTION_NODE_NAME".into(), names[i].clone()),
                        (
                            "YTCAPTION_CLUSTER__LISTEN".into(),
                            format!("127.0.0.1:{}", cluster_ports[i]),
                        ),
                        ("YTCAPTION_CLUSTER__SEEDS".into(), seeds),
                        ("YTCAPTION_CLUSTER__DISCOVER".into(), "false".into()),
                        ("YTCAPTION_CLUSTER__COOKIE".into(), COOKIE.into()),
                        ("YTCAPTION_CLUSTER__RECONNECT_CAP".into(), "1s".into()),
                        // long.wav (100 s) is split into chunks across the cluster.
                        ("YTCAPTION_TRANSCRIBER__SPLIT_ABOVE".into(), "60s".into()),
                        ("YTCAPTION_TRANSCRIBER__SPLIT_CHUNK".into(), "30s".into()),
                    ];
                    let config = config.clone();
                    scope.spawn(move || {
                        let env: Vec<(&str, &str)> =
                            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                        NodeProcess::start_with_env(&config, &env)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|handle| {
                    handle
                        .join()
                        .unwrap_or_else(|_| panic!("a node did not start"))
                })
                .collect()
        });
        let urls = nodes.iter().map(NodeProcess::base_url).collect();
        let port = smtp.port();
        Ok(World {
            names,
            urls,
            health: nodes.iter().map(|_| Mutex::new(Health::Up)).collect(),
            nodes: nodes.into_iter().map(Mutex::new).collect(),
            cluster_ports,
            links,
            media,
            hooks,
            smtp: Mutex::new(Smtp {
                current: Some(smtp),
                retired: Vec::new(),
                port,
            }),
            seaweed,
            faults: Mutex::new(Vec::new()),
            outages: Mutex::new(Vec::new()),
            started: Instant::now(),
            replication_factor: 2,
        })
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn health(&self, i: usize) -> Health {
        *lock(&self.health[i])
    }

    fn set_health(&self, i: usize, health: Health) {
        *lock(&self.health[i]) = health;
    }

    /// Nodes that are up (not killed, stopped or lost).
    pub fn up(&self) -> Vec<usize> {
        (0..self.len())
            .filter(|&i| self.health(i) == Health::Up)
            .collect()
    }

    pub fn lost(&self) -> usize {
        (0..self.len())
            .filter(|&i| self.health(i) == Health::Lost)
            .count()
    }

    pub fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// The node's output so far.
    pub fn node_log(&self, i: usize) -> String {
        lock(&self.nodes[i]).log()
    }

    /// Records a fault; returns its index in the log.
    pub fn record(&self, kind: &str, target: &str, detail: &str) -> usize {
        let record = FaultRecord {
            t_s: self.started.elapsed().as_secs_f64(),
            at_ms: now_ms(),
            kind: kind.to_owned(),
            target: target.to_owned(),
            detail: detail.to_owned(),
            detection_ms: None,
            detected_at_ms: None,
        };
        eprintln!(
            "[chaos {:>7.1}s] fault {kind} {target} {detail}",
            record.t_s
        );
        let mut faults = lock(&self.faults);
        faults.push(record);
        faults.len() - 1
    }

    /// A progress line on stderr.
    pub fn say(&self, text: &str) {
        eprintln!(
            "[chaos {:>7.1}s] {text}",
            self.started.elapsed().as_secs_f64()
        );
    }

    // ---- processes ----

    /// SIGKILL; the node stays down until [`Self::restart`].
    pub fn kill(&self, i: usize) {
        // Noted first: its peers can see it gone and take over before `kill9` returns.
        self.outage_begins(i, false);
        lock(&self.nodes[i]).kill9();
        self.set_health(i, Health::Killed);
    }

    /// SIGKILL for good.
    pub fn lose(&self, i: usize) {
        self.outage_begins(i, true);
        lock(&self.nodes[i]).kill9();
        self.set_health(i, Health::Lost);
    }

    /// Starts a killed node again on its data directory and waits until it is ready.
    pub fn restart(&self, i: usize) {
        lock(&self.nodes[i]).restart();
        self.set_health(i, Health::Up);
        self.outage_ends(i);
    }

    fn outage_begins(&self, node: usize, lost: bool) {
        let mut outages = lock(&self.outages);
        if outages.iter().any(|o| o.node == node && o.to_ms.is_none()) {
            return;
        }
        outages.push(Outage {
            node,
            from_ms: now_ms(),
            to_ms: None,
            lost,
        });
    }

    fn outage_ends(&self, node: usize) {
        let now = now_ms();
        for outage in lock(&self.outages).iter_mut() {
            if outage.node == node && outage.to_ms.is_none() && !outage.lost {
                outage.to_ms = Some(now);
            }
        }
    }

    /// The outage node `i` was in at `at_ms`, counting `grace_ms` after its end (its peers
    /// take that long to see it back).
    pub fn outage_at(&self, i: usize, at_ms: u64, grace_ms: u64) -> Option<Outage> {
        lock(&self.outages).iter().copied().find(|o| {
            o.node == i
                && o.from_ms <= at_ms
                && o.to_ms
                    .is_none_or(|to| at_ms <= to.saturating_add(grace_ms))
        })
    }

    /// How many distinct nodes were in an outage at `at_ms` (lost ones included), counting
    /// `grace_ms` after each end.
    pub fn out_at(&self, at_ms: u64, grace_ms: u64) -> usize {
        (0..self.len())
            .filter(|&i| self.outage_at(i, at_ms, grace_ms).is_some())
            .count()
    }

    /// Restarts several nodes at once.
    pub fn restart_many(&self, which: &[usize]) {
        std::thread::scope(|scope| {
            for &i in which {
                scope.spawn(move || self.restart(i));
            }
        });
    }

    pub fn stop(&self, i: usize) {
        self.outage_begins(i, false);
        lock(&self.nodes[i]).signal("STOP");
        self.set_health(i, Health::Stopped);
    }

    pub fn cont(&self, i: usize) {
        lock(&self.nodes[i]).signal("CONT");
        self.set_health(i, Health::Up);
        self.outage_ends(i);
    }

    /// Garbage bytes straight to node `i`'s cluster port (not through a proxy).
    pub fn garbage(&self, i: usize, seed: u64) {
        let mut state = seed | 1;
        let noise: Vec<u8> = (0..50_000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let payloads: [&[u8]; 3] = [
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            &[0x7f, 0xff, 0xff, 0xff, 0x00],
            &noise,
        ];
        for bytes in payloads {
            if let Ok(mut stream) =
                std::net::TcpStream::connect(("127.0.0.1", self.cluster_ports[i]))
            {
                let _ = stream.write_all(bytes);
                let _ = stream.flush();
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    // ---- links ----

    /// Sets both directed links between `a` and `b`.
    pub fn set_pair(&self, a: usize, b: usize, mode: Mode) {
        for link in &self.links {
            if (link.from == a && link.to == b) || (link.from == b && link.to == a) {
                link.set(mode);
            }
        }
    }

    /// Every link to or from `i`.
    pub fn isolate(&self, i: usize, mode: Mode) {
        if matches!(mode, Mode::Cut | Mode::Blackhole) {
            self.outage_begins(i, false);
        }
        for link in &self.links {
            if link.from == i || link.to == i {
                link.set(mode);
            }
        }
        if mode == Mode::Pass {
            self.outage_ends(i);
        }
    }

    /// Every link back to pass.
    pub fn heal_links(&self) {
        for link in &self.links {
            if link.mode() != Mode::Pass {
                link.set(Mode::Pass);
            }
        }
        for i in 0..self.len() {
            if self.health(i) == Health::Up {
                self.outage_ends(i);
            }
        }
    }

    /// Whether any link between `k` and a node other than `except` is not passing traffic.
    fn cut_off(&self, k: usize, except: usize) -> bool {
        self.links.iter().any(|l| {
            (l.from == k && l.to != except || l.to == k && l.from != except)
                && matches!(l.mode(), Mode::Cut | Mode::Blackhole)
        })
    }

    // ---- receivers ----

    pub fn webhook_outage(&self, down: bool) {
        self.hooks.down.store(down, Ordering::SeqCst);
    }

    /// Stops the SMTP sink (`down`) or starts a new one on the same port.
    pub fn smtp_outage(&self, down: bool) {
        let mut smtp = lock(&self.smtp);
        if down {
            if let Some(mut sink) = smtp.current.take() {
                sink.stop();
                smtp.retired.push(sink);
            }
        } else if smtp.current.is_none() {
            smtp.current = Some(SmtpSink::start_on(smtp.port));
        }
    }

    /// Every mail any sink received.
    pub fn mails(&self) -> Vec<ParsedMail> {
        let smtp = lock(&self.smtp);
        smtp.retired
            .iter()
            .chain(smtp.current.iter())
            .flat_map(SmtpSink::messages)
            .collect()
    }

    /// Ends every fault: links pass, stopped nodes continue, killed nodes restart (lost ones
    /// stay lost), receivers come back.
    pub fn heal(&self) {
        self.heal_links();
        self.webhook_outage(false);
        self.smtp_outage(false);
        let mut dead = Vec::new();
        for i in 0..self.len() {
            match self.health(i) {
                Health::Stopped => self.cont(i),
                Health::Killed => dead.push(i),
                Health::Up | Health::Lost => {}
            }
        }
        self.restart_many(&dead);
    }

    // ---- storage ----

    /// Every blob stored under `jobs/<id>/`, as `node:key` (local storage: every node not lost
    /// for good; S3: the bucket, as `s3:key`). An error reading a store is returned as such.
    pub fn blobs_of(&self, id: &str) -> Result<Vec<String>, String> {
        use ytcaption_actors::storage::Storage as Blobs;
        let prefix = format!("jobs/{id}/");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("tokio: {e}"))?;
        runtime.block_on(async {
            let mut found = Vec::new();
            if let Some(s3) = &self.seaweed {
                let storage = Blobs::s3(s3.s3_params(S3_BUCKET))
                    .await
                    .map_err(|e| format!("s3: {e}"))?;
                let keys = storage
                    .list(&prefix)
                    .await
                    .map_err(|e| format!("s3: {e}"))?;
                found.extend(keys.into_iter().map(|key| format!("s3:{key}")));
                return Ok(found);
            }
            for i in 0..self.len() {
                if self.health(i) == Health::Lost {
                    continue;
                }
                let root = lock(&self.nodes[i]).data_dir().join("blobs");
                let storage = Blobs::local(root).map_err(|e| format!("{}: {e}", self.names[i]))?;
                let keys = storage
                    .list(&prefix)
                    .await
                    .map_err(|e| format!("{}: {e}", self.names[i]))?;
                found.extend(
                    keys.into_iter()
                        .map(|key| format!("{}:{key}", self.names[i])),
                );
            }
            Ok(found)
        })
    }

    // ---- HTTP ----

    /// `GET` on node `i`: status and JSON (or `None` on a connection error).
    pub fn get(&self, i: usize, path: &str) -> Option<(u16, Value)> {
        get_json(&format!("{}{path}", self.urls[i]))
    }

    /// `GET` on the first up node that answers.
    pub fn get_any(&self, path: &str) -> Option<(u16, Value)> {
        self.up().into_iter().find_map(|i| self.get(i, path))
    }

    /// A job's view from any up node.
    pub fn job(&self, id: &str) -> Option<Value> {
        self.up()
            .into_iter()
            .find_map(|i| match self.get(i, &format!("/v1/jobs/{id}")) {
                Some((200, job)) => Some(job),
                _ => None,
            })
    }

    /// The node that owns job `id` now, as the cluster reports it.
    pub fn owner_of(&self, id: &str) -> Option<usize> {
        let job = self.job(id)?;
        self.index(job["placement"]["owner_node"].as_str()?)
    }

    /// How node `i` sees the members: name -> (state, since_ms).
    pub fn members(&self, i: usize) -> HashMap<String, (String, u64)> {
        let Some((200, status)) = self.get(i, "/v1/admin/status") else {
            return HashMap::new();
        };
        status["cluster"]["members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|member| {
                Some((
                    member["name"].as_str()?.to_owned(),
                    (
                        member["state"].as_str()?.to_owned(),
                        member["since_ms"].as_u64().unwrap_or(0),
                    ),
                ))
            })
            .collect()
    }

    /// Waits until some up node not cut off sees node `i` down; records the detection time on
    /// fault `record` (from `since_ms - at_ms`).
    pub fn measure_detection(&self, i: usize, record: usize, timeout: Duration) {
        let at_ms = lock(&self.faults)[record].at_ms;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let observers: Vec<usize> = self
                .up()
                .into_iter()
                .filter(|&k| k != i && !self.cut_off(k, i))
                .collect();
            let Some(&observer) = observers.first() else {
                return;
            };
            if let Some((state, since_ms)) = self.members(observer).get(&self.names[i]) {
                if state == "down" {
                    let mut faults = lock(&self.faults);
                    faults[record].detection_ms = Some(since_ms.saturating_sub(at_ms));
                    faults[record].detected_at_ms = Some(*since_ms);
                    drop(faults);
                    self.say(&format!(
                        "{} saw {} down after {} ms",
                        self.names[observer],
                        self.names[i],
                        since_ms.saturating_sub(at_ms)
                    ));
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        self.say(&format!(
            "{} not seen down within {timeout:?}",
            self.names[i]
        ));
    }

    /// Waits until every up node sees every other up node alive; false on timeout.
    pub fn wait_mesh(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let up = self.up();
            let meshed = up.iter().all(|&i| {
                let members = self.members(i);
                up.iter().filter(|&&j| j != i).all(|&j| {
                    members
                        .get(&self.names[j])
                        .is_some_and(|(state, _)| state == "alive")
                })
            });
            if meshed {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `GET url` with a short timeout: status and JSON (a non-JSON body becomes a string).
pub fn get_json(url: &str) -> Option<(u16, Value)> {
    let result = ureq::get(url).timeout(Duration::from_secs(5)).call();
    let response = match result {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(ureq::Error::Transport(_)) => return None,
    };
    let status = response.status();
    let text = response.into_string().unwrap_or_default();
    Some((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}
