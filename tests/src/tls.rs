//! Throwaway TLS certificates for test servers on 127.0.0.1.
//!
//! [`TestCert::generate`] makes a private CA and a server certificate it signs, valid for
//! `localhost` and `127.0.0.1`, with the `openssl` command. A separate CA (rather than one
//! self-signed server certificate) is what rustls wants: it refuses a CA certificate presented
//! as the server's own. Clients trust [`TestCert::ca_pem`]; servers load
//! [`TestCert::cert_path`] and [`TestCert::key_path`].

use std::path::{Path, PathBuf};
use std::process::Command;

/// A CA and a server certificate signed by it, in a directory the caller owns.
#[derive(Debug, Clone)]
pub struct TestCert {
    /// The CA certificate, PEM: what clients must trust.
    pub ca_pem: Vec<u8>,
    /// The server certificate, PEM.
    pub cert_path: PathBuf,
    /// The server's private key, PEM, unencrypted.
    pub key_path: PathBuf,
}

impl TestCert {
    /// Writes `ca.pem`, `ca.key`, `server.pem`, `server.key` into `dir`. Panics with the
    /// reason when `openssl` is missing or fails.
    pub fn generate(dir: &Path) -> TestCert {
        let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
        let ext = dir.join("server.ext");
        std::fs::write(
            &ext,
            "basicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth\n\
             subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .unwrap_or_else(|e| panic!("writing {}: {e}", ext.display()));
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
        openssl(
            &[
                &["req", "-x509", "-nodes", "-days", "3650"],
                &ec[..],
                &["-subj", "/CN=ytcaption test CA"],
                &["-addext", "basicConstraints=critical,CA:TRUE"],
                &["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
                &["-keyout", &path("ca.key"), "-out", &path("ca.pem")],
            ]
            .concat(),
        );
        openssl(
            &[
                &["req", "-new", "-nodes"],
                &ec[..],
                &["-subj", "/CN=localhost"],
                &["-keyout", &path("server.key"), "-out", &path("server.csr")],
            ]
            .concat(),
        );
        openssl(&[
            "x509",
            "-req",
            "-days",
            "3650",
            "-set_serial",
            "2",
            "-in",
            &path("server.csr"),
            "-CA",
            &path("ca.pem"),
            "-CAkey",
            &path("ca.key"),
            "-extfile",
            &ext.to_string_lossy(),
            "-out",
            &path("server.pem"),
        ]);
        let ca_pem = std::fs::read(dir.join("ca.pem"))
            .unwrap_or_else(|e| panic!("reading the generated CA: {e}"));
        TestCert {
            ca_pem,
            cert_path: dir.join("server.pem"),
            key_path: dir.join("server.key"),
        }
    }
}

fn openssl(args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running openssl (apt-get install openssl): {e}"));
    assert!(
        output.status.success(),
        "openssl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}
