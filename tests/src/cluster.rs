//! A cluster of real `ytcaption serve` processes on 127.0.0.1 (ports chosen free), each with
//! its own data directory; every node gets every other node as a seed, so a restarted node
//! dials the others by itself, and the others dial it.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::node::{free_port, NodeProcess};

pub const COOKIE: &str = "test-cluster-cookie";

/// N nodes named `n1..nN`.
#[derive(Debug)]
pub struct TestCluster {
    pub nodes: Vec<NodeProcess>,
    pub cluster_ports: Vec<u16>,
}

impl TestCluster {
    /// Starts `n` nodes with `config_toml`; `extra(i)` adds environment variables to node
    /// `i` (0-based). Waits until each is ready, not for the mesh (see [`Self::wait_mesh`]).
    pub fn start(
        n: usize,
        config_toml: &str,
        extra: impl Fn(usize) -> Vec<(String, String)>,
    ) -> TestCluster {
        let cluster_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let seeds = cluster_ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",");
        let nodes = (0..n)
            .map(|i| {
                let mut env: Vec<(String, String)> = vec![
                    ("YTCAPTION_NODE_NAME".into(), format!("n{}", i + 1)),
                    (
                        "YTCAPTION_CLUSTER__LISTEN".into(),
                        format!("127.0.0.1:{}", cluster_ports[i]),
                    ),
                    ("YTCAPTION_CLUSTER__SEEDS".into(), seeds.clone()),
                    ("YTCAPTION_CLUSTER__COOKIE".into(), COOKIE.into()),
                    ("YTCAPTION_CLUSTER__RECONNECT_CAP".into(), "1s".into()),
                ];
                env.extend(extra(i));
                let env: Vec<(&str, &str)> =
                    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                NodeProcess::start_with_env(config_toml, &env)
            })
            .collect();
        TestCluster {
            nodes,
            cluster_ports,
        }
    }

    /// `GET /v1/admin/status` of node `i`.
    pub fn status(&self, i: usize) -> Value {
        let response = ureq::get(&self.nodes[i].url("/v1/admin/status"))
            .timeout(Duration::from_secs(5))
            .call()
            .expect("admin status");
        serde_json::from_str(&response.into_string().expect("body")).expect("json")
    }

    /// The state node `i` sees `peer` in (`alive`, `suspect`, `down`), if it knows it.
    pub fn member_state(&self, i: usize, peer: &str) -> Option<String> {
        let status = self.status(i);
        status["cluster"]["members"]
            .as_array()?
            .iter()
            .find(|member| member["name"] == peer)
            .and_then(|member| member["state"].as_str().map(str::to_owned))
    }

    /// Waits until each node in `among` (0-based) sees every other one alive.
    pub fn wait_mesh(&self, among: &[usize], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let meshed = among.iter().all(|&i| {
                among.iter().filter(|&&j| j != i).all(|&j| {
                    self.member_state(i, &format!("n{}", j + 1)).as_deref() == Some("alive")
                })
            });
            if meshed {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no full mesh among {among:?} within {timeout:?}: {:?}",
                among
                    .iter()
                    .map(|&i| self.status(i)["cluster"].clone())
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until node `i` sees `peer` in `state`; the time it took.
    pub fn wait_member(&self, i: usize, peer: &str, state: &str, timeout: Duration) -> Duration {
        let start = Instant::now();
        loop {
            if self.member_state(i, peer).as_deref() == Some(state) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < timeout,
                "n{} never saw {peer} {state}: {}",
                i + 1,
                self.status(i)["cluster"]
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
