//! A real SeaweedFS S3 server for tests: `SeaweedFs::start()` runs `weed mini` on 127.0.0.1
//! with a fresh data directory and its own ports, waits until S3 answers, and kills it on drop.
//!
//! ```no_run
//! # async fn demo() {
//! use ytcaption_actors::storage::Storage;
//! use ytcaption_tests::seaweed::SeaweedFs;
//! let seaweed = tokio::task::spawn_blocking(SeaweedFs::start).await.unwrap();
//! let storage = Storage::s3(seaweed.s3_params("media")).await.unwrap();
//! # }
//! ```
//!
//! # Robustness
//! - **Ports:** `weed mini` opens ten listeners (master, volume, filer, S3, admin; HTTP and
//!   gRPC each). All are passed explicitly, drawn at random below the kernel's ephemeral range
//!   (so outgoing connections do not take them), checked free, and never handed out twice in
//!   one process, so tests can start servers in parallel. Another process can still grab a
//!   port between the check and weed's bind: a start that fails on a taken port is retried
//!   with new ports.
//! - **Readiness:** polled (S3 answers HTTP) for up to 30 s; a failure panics with weed's log.
//! - **Cleanup:** drop kills the server and removes its data directory and the gRPC socket
//!   files weed leaves in `/tmp`. A watchdog shell holds a pipe from this process and, when the
//!   pipe closes, kills weed and removes those files, so a test binary that dies without
//!   unwinding (abort, SIGKILL) leaves neither servers nor files behind.
//!
//! The binary is `<repo>/.venv-test/bin/weed` (`make test-env` installs it) or
//! `$YTCAPTION_WEED`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ytcaption_actors::storage::S3Params;

const ACCESS_KEY: &str = "ytcaption-test-access";
const SECRET_KEY: &str = "ytcaption-test-secret";
/// SeaweedFS accepts any signing region; the tests pin one.
const REGION: &str = "us-east-1";
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Starts retried because another process took a port between the check and weed's bind.
const START_ATTEMPTS: usize = 4;
/// Port pool: below Linux's default ephemeral range (32768-60999). The admin gRPC port is the
/// admin HTTP port + 10000 (see [`Ports`]), hence the upper bound.
const PORT_RANGE: std::ops::Range<u16> = 20000..32000;
/// weed's workers dial the admin server's gRPC at its HTTP port + 10000 whatever
/// `-admin.port.grpc` says, so that is where it must listen.
const ADMIN_GRPC_OFFSET: u16 = 10000;

/// A running SeaweedFS (`weed mini`) with an S3 endpoint on 127.0.0.1.
#[derive(Debug)]
pub struct SeaweedFs {
    /// The signing region to use.
    pub region: String,
    ports: Ports,
    weed: PathBuf,
    process: Option<Running>,
    dir: tempfile::TempDir,
}

#[derive(Debug)]
struct Running {
    child: Child,
    watchdog: Child,
}

/// Every listener weed mini opens.
#[derive(Debug, Clone, Copy)]
struct Ports {
    master: u16,
    master_grpc: u16,
    volume: u16,
    volume_grpc: u16,
    filer: u16,
    filer_grpc: u16,
    s3: u16,
    s3_grpc: u16,
    admin: u16,
    admin_grpc: u16,
}

enum StartError {
    /// weed exited because a port was taken: try other ports.
    PortTaken(String),
    /// Anything else: give up with this message.
    Failed(String),
}

impl SeaweedFs {
    /// Starts a server and waits until its S3 endpoint answers. Blocking (about a second): from
    /// async code call it through `tokio::task::spawn_blocking`. Panics with weed's log when it
    /// cannot start.
    pub fn start() -> SeaweedFs {
        let weed = weed_binary();
        let mut taken = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let dir = tempfile::Builder::new()
                .prefix("seaweedfs-test-")
                .tempdir()
                .expect("creating a temp dir for SeaweedFS");
            let mut server = SeaweedFs {
                region: REGION.to_owned(),
                ports: Ports::allocate(),
                weed: weed.clone(),
                process: None,
                dir,
            };
            match server.launch() {
                Ok(()) => return server,
                Err(StartError::PortTaken(log)) => taken.push(log),
                Err(StartError::Failed(message)) => panic!("{message}"),
            }
        }
        panic!(
            "SeaweedFS could not bind its ports in {START_ATTEMPTS} attempts; last log:\n{}",
            taken.last().map(String::as_str).unwrap_or("")
        );
    }

    /// `http://127.0.0.1:<port>`, the S3 endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.s3)
    }

    pub fn access_key(&self) -> &str {
        ACCESS_KEY
    }

    pub fn secret_key(&self) -> &str {
        SECRET_KEY
    }

    /// Storage parameters for `bucket` on this server (path style, bucket created on connect).
    pub fn s3_params(&self, bucket: &str) -> S3Params {
        S3Params {
            endpoint: self.endpoint(),
            region: self.region.clone(),
            bucket: bucket.to_owned(),
            access_key: ACCESS_KEY.to_owned(),
            secret_key: SECRET_KEY.to_owned(),
            path_style: true,
            create_bucket: true,
            ..S3Params::default()
        }
    }

    /// The server's data directory (also holds `weed.log`).
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// What weed printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Kills the server (as a crash would), keeping its data and ports for [`Self::restart`].
    /// Operations against it now fail as an unreachable store does.
    pub fn stop(&mut self) {
        if let Some(running) = self.process.take() {
            running.kill();
        }
        self.remove_sockets();
    }

    /// Starts the server again on the same ports and data (after [`Self::stop`]). Panics with
    /// the log if it cannot (for instance another process took a port meanwhile).
    pub fn restart(&mut self) {
        self.stop();
        match self.launch() {
            Ok(()) => {}
            Err(StartError::PortTaken(log)) => {
                panic!("SeaweedFS could not get its ports back on restart; log:\n{log}")
            }
            Err(StartError::Failed(message)) => panic!("{message}"),
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("weed.log")
    }

    /// Spawns weed and its watchdog, then waits for S3 to answer.
    fn launch(&mut self) -> Result<(), StartError> {
        let data = self.dir.path().join("data");
        std::fs::create_dir_all(&data).expect("creating the SeaweedFS data dir");
        let config = self.dir.path().join("s3.json");
        std::fs::write(&config, identities_json()).expect("writing the SeaweedFS s3 config");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("creating the SeaweedFS log");
        let child = Command::new(&self.weed)
            .arg("mini")
            .args(self.args(&data, &config))
            .current_dir(self.dir.path())
            // weed's own log files go to $TMPDIR: keep them in the data dir.
            .env("TMPDIR", self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning the log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("could not run {}: {e}", self.weed.display()));
        let watchdog = spawn_watchdog(child.id(), self.dir.path(), &self.ports.grpc_sockets());
        self.process = Some(Running { child, watchdog });
        self.wait_ready()
    }

    fn args(&self, data: &Path, config: &Path) -> Vec<String> {
        let p = self.ports;
        let mut args: Vec<String> = [
            ("dir", data.display().to_string()),
            ("ip", "127.0.0.1".into()),
            ("ip.bind", "127.0.0.1".into()),
            ("s3.config", config.display().to_string()),
            ("master.port", p.master.to_string()),
            ("master.port.grpc", p.master_grpc.to_string()),
            ("volume.port", p.volume.to_string()),
            ("volume.port.grpc", p.volume_grpc.to_string()),
            ("filer.port", p.filer.to_string()),
            ("filer.port.grpc", p.filer_grpc.to_string()),
            ("s3.port", p.s3.to_string()),
            ("s3.port.grpc", p.s3_grpc.to_string()),
            ("admin.port", p.admin.to_string()),
            ("admin.port.grpc", p.admin_grpc.to_string()),
            // Unix sockets default to /tmp/seaweedfs-<kind>-<port>.sock; keep them ours.
            (
                "filer.localSocket",
                data.join("filer.sock").display().to_string(),
            ),
            ("s3.localSocket", data.join("s3.sock").display().to_string()),
            ("webdav", "false".into()),
            ("admin.ui", "false".into()),
            ("s3.port.iceberg", "0".into()),
            ("s3.port.lance", "0".into()),
            ("master.telemetry", "false".into()),
            ("volume.preStopSeconds", "0".into()),
        ]
        .into_iter()
        .map(|(name, value)| format!("-{name}={value}"))
        .collect();
        // Small volumes: a test stores megabytes, not the 1 GiB weed would size for this disk.
        args.push("-master.volumeSizeLimitMB=64".into());
        args
    }

    /// Polls until S3 answers HTTP (weed enforces signatures, so an anonymous GET gets a 403:
    /// any HTTP answer means the gateway is up), weed exits, or the deadline passes.
    fn wait_ready(&mut self) -> Result<(), StartError> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let url = format!("{}/", self.endpoint());
        loop {
            let exited = match self.process.as_mut() {
                Some(running) => running.child.try_wait().ok().flatten(),
                None => return Err(StartError::Failed("SeaweedFS is not running".into())),
            };
            if let Some(status) = exited {
                self.stop();
                let log = self.log();
                if log.contains("address already in use") {
                    return Err(StartError::PortTaken(log));
                }
                return Err(StartError::Failed(format!(
                    "SeaweedFS exited during start-up ({status}); log:\n{log}"
                )));
            }
            let answered = match ureq::get(&url).timeout(Duration::from_secs(2)).call() {
                Ok(_) | Err(ureq::Error::Status(..)) => true,
                Err(ureq::Error::Transport(_)) => false,
            };
            if answered {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(StartError::Failed(format!(
                    "SeaweedFS S3 at {url} did not answer within {STARTUP_TIMEOUT:?}; log:\n{}",
                    self.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// weed removes its gRPC sockets on a clean shutdown only; it is killed here.
    fn remove_sockets(&self) {
        for socket in self.ports.grpc_sockets() {
            let _ = std::fs::remove_file(socket);
        }
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Running {
    /// Watchdog first (so it cannot signal a recycled pid), then weed; both reaped.
    fn kill(mut self) {
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Ports {
    /// The Unix sockets weed creates next to its gRPC ports, in /tmp whatever $TMPDIR says.
    fn grpc_sockets(&self) -> Vec<PathBuf> {
        [
            ("master", self.master_grpc),
            ("volume", self.volume_grpc),
            ("filer", self.filer_grpc),
            ("s3", self.s3_grpc),
            ("admin", self.admin_grpc),
        ]
        .into_iter()
        .map(|(kind, port)| PathBuf::from(format!("/tmp/seaweedfs-{kind}-grpc-{port}.sock")))
        .collect()
    }

    fn allocate() -> Ports {
        let next = || crate::ports::reserve(PORT_RANGE, 0);
        let (master, master_grpc, volume, volume_grpc) = (next(), next(), next(), next());
        let (filer, filer_grpc, s3, s3_grpc) = (next(), next(), next(), next());
        let admin = crate::ports::reserve(PORT_RANGE, ADMIN_GRPC_OFFSET);
        Ports {
            master,
            master_grpc,
            volume,
            volume_grpc,
            filer,
            filer_grpc,
            s3,
            s3_grpc,
            admin,
            admin_grpc: admin + ADMIN_GRPC_OFFSET,
        }
    }
}

/// A shell that waits on a pipe from this process and, when the pipe closes (this process died
/// by any means, even SIGKILL), kills weed and removes its files. Killed first on a normal stop,
/// so it never runs otherwise.
fn spawn_watchdog(pid: u32, dir: &Path, sockets: &[PathBuf]) -> Child {
    // $0 = weed's pid, $1 = the temp dir, the rest = socket files.
    const SCRIPT: &str = r#"read -r _ignored
kill -KILL "$0" 2>/dev/null
i=0
while kill -0 "$0" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
rm -rf -- "$1"
shift
rm -f -- "$@""#;
    Command::new("sh")
        .arg("-c")
        .arg(SCRIPT)
        .arg(pid.to_string())
        .arg(dir)
        .args(sockets)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting the SeaweedFS watchdog shell")
}

fn identities_json() -> String {
    format!(
        r#"{{"identities":[{{"name":"admin","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
    )
}

/// `$YTCAPTION_WEED`, or the test venv's weed.
fn weed_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("YTCAPTION_WEED") {
        return PathBuf::from(path);
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv-test/bin/weed");
    assert!(
        path.is_file(),
        "SeaweedFS is missing at {}: run `make test-env` (deploy/test-env/install.sh)",
        path.display()
    );
    path
}
