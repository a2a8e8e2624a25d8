//! The storage behaviour suite, run unchanged against both backends: a local directory and a
//! real SeaweedFS server (one per test, see `ytcaption_tests::seaweed`). Then what only S3 can
//! do wrong: refused credentials, an unreachable or crashed server, a missing bucket, a blob
//! whose content does not match its recorded checksum.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tempfile::TempDir;
use ytcaption_actors::storage::{S3Params, Storage, StorageError};
use ytcaption_tests::seaweed::SeaweedFs;

/// A store under test plus what keeps it alive, and a scratch directory for files.
struct Fixture {
    storage: Storage,
    scratch: TempDir,
    _server: Option<SeaweedFs>,
    _root: Option<TempDir>,
}

impl Fixture {
    fn is_s3(&self) -> bool {
        matches!(self.storage, Storage::S3(_))
    }

    fn file(&self, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let path = self.scratch.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

async fn local() -> Fixture {
    let root = tempfile::tempdir().unwrap();
    Fixture {
        storage: Storage::local(root.path().join("store")).unwrap(),
        scratch: tempfile::tempdir().unwrap(),
        _server: None,
        _root: Some(root),
    }
}

async fn seaweed() -> SeaweedFs {
    tokio::task::spawn_blocking(SeaweedFs::start).await.unwrap()
}

async fn s3() -> Fixture {
    let server = seaweed().await;
    let storage = Storage::s3(server.s3_params("ytcaption-test"))
        .await
        .unwrap_or_else(|e| panic!("connecting to SeaweedFS: {e}\nlog:\n{}", server.log()));
    Fixture {
        storage,
        scratch: tempfile::tempdir().unwrap(),
        _server: Some(server),
        _root: None,
    }
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Deterministic bytes that neither compress nor repeat (xorshift).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

// ---- the shared suite ----

async fn roundtrip(fx: Fixture) {
    let s = &fx.storage;
    let json = br#"{"text":"hello"}"#.to_vec();
    let info = s
        .put_bytes("jobs/1/transcript.json", json.clone(), "application/json")
        .await
        .unwrap();
    assert_eq!(info.key, "jobs/1/transcript.json");
    assert_eq!(info.size, json.len() as u64);
    assert_eq!(info.sha256, sha(&json));
    assert_eq!(
        s.get_bytes("jobs/1/transcript.json", 1024).await.unwrap(),
        json
    );

    let media = noise(1024 * 1024 + 7, 1);
    let src = fx.file("media.bin", &media);
    let info = s.put_file("jobs/1/media", &src).await.unwrap();
    assert_eq!(
        (info.size, info.sha256.clone()),
        (media.len() as u64, sha(&media))
    );
    assert!(s.exists("jobs/1/media").await.unwrap());

    let dest = fx.scratch.path().join("copy.bin");
    assert_eq!(
        s.get_to_file("jobs/1/media", &dest).await.unwrap(),
        media.len() as u64
    );
    assert_eq!(sha(&std::fs::read(&dest).unwrap()), sha(&media));

    // Too large is refused whole, not truncated.
    let err = s.get_bytes("jobs/1/media", 1000).await.unwrap_err();
    assert!(
        matches!(err, StorageError::TooLarge { size, limit: 1000, .. } if size == media.len() as u64),
        "{err:?}"
    );
    assert!(!err.retryable());

    // Overwrite replaces the content.
    let srt = b"1\n00:00:00,000 --> 00:00:01,000\nhello\n".to_vec();
    s.put_bytes("jobs/1/transcript.json", srt.clone(), "text/plain")
        .await
        .unwrap();
    assert_eq!(
        s.get_bytes("jobs/1/transcript.json", 1024).await.unwrap(),
        srt
    );

    // Empty blobs are blobs.
    let info = s
        .put_bytes("jobs/1/empty", Vec::new(), "text/plain")
        .await
        .unwrap();
    assert_eq!((info.size, info.sha256), (0, sha(b"")));
    assert!(s.get_bytes("jobs/1/empty", 0).await.unwrap().is_empty());
    let empty_dest = fx.scratch.path().join("empty.bin");
    assert_eq!(s.get_to_file("jobs/1/empty", &empty_dest).await.unwrap(), 0);
    assert_eq!(std::fs::metadata(&empty_dest).unwrap().len(), 0);

    // Only the local store offers an in-place path.
    match s.local_path("jobs/1/media") {
        Some(path) => {
            assert!(!fx.is_s3());
            assert_eq!(sha(&std::fs::read(path).unwrap()), sha(&media));
        }
        None => assert!(fx.is_s3(), "local store must expose the blob's path"),
    }
    s.health().await.unwrap();
    let described = s.describe();
    let expected_prefix = if fx.is_s3() {
        "s3:http://127.0.0.1:"
    } else {
        "local:/"
    };
    assert!(described.starts_with(expected_prefix), "{described}");
}

async fn large_file(fx: Fixture) {
    let s = &fx.storage;
    // 20 MiB and a bit: above the 16 MiB multipart threshold, three 8 MiB parts on S3.
    let content = noise(20 * 1024 * 1024 + 123, 2);
    let src = fx.file("big.bin", &content);
    let info = s.put_file("jobs/big/media", &src).await.unwrap();
    assert_eq!(info.size, content.len() as u64);
    assert_eq!(info.sha256, sha(&content));

    let dest = fx.scratch.path().join("big-copy.bin");
    assert_eq!(
        s.get_to_file("jobs/big/media", &dest).await.unwrap(),
        content.len() as u64
    );
    let copy = std::fs::read(&dest).unwrap();
    assert_eq!(copy.len(), content.len());
    assert_eq!(sha(&copy), info.sha256);
    // Nothing but the destination was left in its directory.
    let mut names: Vec<String> = std::fs::read_dir(fx.scratch.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, vec!["big-copy.bin", "big.bin"]);

    assert!(matches!(
        s.get_bytes("jobs/big/media", 1024 * 1024).await,
        Err(StorageError::TooLarge { .. })
    ));
    let all = s
        .get_bytes("jobs/big/media", 64 * 1024 * 1024)
        .await
        .unwrap();
    assert_eq!(sha(&all), info.sha256);
}

async fn listing_and_deletes(fx: Fixture) {
    let s = &fx.storage;
    for key in [
        "jobs/a/media",
        "jobs/a/transcript.json",
        "jobs/a/transcript.srt",
        "jobs/ab/media",
        "uploads/x",
    ] {
        s.put_bytes(key, key.as_bytes().to_vec(), "text/plain")
            .await
            .unwrap();
    }
    assert_eq!(
        s.list("jobs/a/").await.unwrap(),
        vec![
            "jobs/a/media",
            "jobs/a/transcript.json",
            "jobs/a/transcript.srt"
        ]
    );
    assert_eq!(s.list("jobs/a").await.unwrap().len(), 4);
    assert_eq!(s.list("").await.unwrap().len(), 5);
    assert!(s.list("nothing/").await.unwrap().is_empty());

    s.delete("jobs/a/media").await.unwrap();
    assert!(!s.exists("jobs/a/media").await.unwrap());
    assert!(matches!(
        s.get_bytes("jobs/a/media", 100).await,
        Err(StorageError::NotFound(_))
    ));
    // Idempotent.
    s.delete("jobs/a/media").await.unwrap();
    s.delete("never/existed").await.unwrap();

    assert_eq!(s.delete_prefix("jobs/a/").await.unwrap(), 2);
    assert_eq!(s.list("jobs/").await.unwrap(), vec!["jobs/ab/media"]);
    assert_eq!(s.delete_prefix("nothing/").await.unwrap(), 0);
    let err = s.delete_prefix("").await.unwrap_err();
    assert_eq!(err.code(), "storage.bad_key");
    assert_eq!(
        s.list("").await.unwrap(),
        vec!["jobs/ab/media", "uploads/x"]
    );
    assert_eq!(s.get_bytes("uploads/x", 100).await.unwrap(), b"uploads/x");
}

async fn same_content_two_keys(fx: Fixture) {
    let s = &fx.storage;
    let content = noise(300_000, 3);
    let src = fx.file("same.bin", &content);
    let a = s.put_file("jobs/1/media", &src).await.unwrap();
    let b = s
        .put_bytes("jobs/2/media", content.clone(), "audio/mpeg")
        .await
        .unwrap();
    assert_eq!(a.sha256, b.sha256);
    s.delete("jobs/1/media").await.unwrap();
    assert_eq!(s.get_bytes("jobs/2/media", 1 << 20).await.unwrap(), content);
    s.delete("jobs/2/media").await.unwrap();
    assert!(s.list("").await.unwrap().is_empty());
}

async fn missing_and_bad_keys(fx: Fixture) {
    let s = &fx.storage;
    let err = s.get_bytes("jobs/none/media", 10).await.unwrap_err();
    assert!(
        matches!(err, StorageError::NotFound(ref k) if k == "jobs/none/media"),
        "{err:?}"
    );
    assert_eq!(err.code(), "storage.not_found");
    assert!(!err.retryable());
    let dest = fx.scratch.path().join("never.bin");
    assert!(matches!(
        s.get_to_file("jobs/none/media", &dest).await,
        Err(StorageError::NotFound(_))
    ));
    assert!(!dest.exists());
    assert_eq!(std::fs::read_dir(fx.scratch.path()).unwrap().count(), 0);
    assert!(!s.exists("jobs/none/media").await.unwrap());

    let src = fx.file("x.bin", b"x");
    let bad = |r: Result<(), StorageError>| {
        let err = r.unwrap_err();
        assert_eq!(err.code(), "storage.bad_key", "{err:?}");
        assert!(!err.retryable());
    };
    for key in [
        "",
        "/abs",
        "jobs/../x",
        "jobs//x",
        "jobs/x/",
        "a b",
        "jobs/./x",
        "ключ",
    ] {
        bad(s
            .put_bytes(key, b"x".to_vec(), "text/plain")
            .await
            .map(|_| ()));
        bad(s.put_file(key, &src).await.map(|_| ()));
        bad(s.get_bytes(key, 10).await.map(|_| ()));
        bad(s.get_to_file(key, &dest).await.map(|_| ()));
        bad(s.exists(key).await.map(|_| ()));
        bad(s.delete(key).await);
        assert_eq!(s.local_path(key), None);
    }
    bad(s.list("/jobs").await.map(|_| ()));
    bad(s.delete_prefix("../").await.map(|_| ()));
    bad(s
        .put_bytes(&"k".repeat(513), vec![], "text/plain")
        .await
        .map(|_| ()));
    assert!(
        s.list("").await.unwrap().is_empty(),
        "a bad key stored something"
    );
    // Putting a file that does not exist is a local I/O error, and stores nothing.
    let err = s
        .put_file("jobs/1/media", Path::new("/nonexistent/in.wav"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "storage.io");
    assert!(!s.exists("jobs/1/media").await.unwrap());
}

macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod local_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::local().await).await;
                }
            )*
        }
        mod s3_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::s3().await).await;
                }
            )*
        }
    };
}

on_both_backends!(
    roundtrip,
    large_file,
    listing_and_deletes,
    same_content_two_keys,
    missing_and_bad_keys,
);

// ---- S3 failure modes ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_wrong_credentials_are_denied() {
    let server = seaweed().await;
    let good = Storage::s3(server.s3_params("denied-test")).await.unwrap();
    good.put_bytes("k", b"secret".to_vec(), "text/plain")
        .await
        .unwrap();

    for (access_key, secret_key) in [
        (server.access_key().to_owned(), "wrong-secret".to_owned()),
        ("unknown-access".to_owned(), server.secret_key().to_owned()),
    ] {
        let params = S3Params {
            access_key,
            secret_key,
            ..server.s3_params("denied-test")
        };
        let err = Storage::s3(params.clone()).await.unwrap_err();
        assert_eq!(err.code(), "storage.denied", "{err:?}");
        assert!(!err.retryable());

        // Without create_bucket the constructor does not call out; operations are denied.
        let bad = Storage::s3(S3Params {
            create_bucket: false,
            ..params
        })
        .await
        .unwrap();
        for result in [
            bad.health().await.map(|_| ()),
            bad.get_bytes("k", 100).await.map(|_| ()),
            bad.put_bytes("k", b"overwrite".to_vec(), "text/plain")
                .await
                .map(|_| ()),
            bad.list("").await.map(|_| ()),
        ] {
            let err = result.unwrap_err();
            assert_eq!(err.code(), "storage.denied", "{err:?}");
        }
    }
    assert_eq!(good.get_bytes("k", 100).await.unwrap(), b"secret");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_closed_port_is_unavailable() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let params = S3Params {
        endpoint: format!("http://127.0.0.1:{port}"),
        access_key: "a".into(),
        secret_key: "b".into(),
        timeout: Duration::from_secs(5),
        ..S3Params::default()
    };
    let err = Storage::s3(S3Params {
        create_bucket: true,
        ..params.clone()
    })
    .await
    .unwrap_err();
    assert_eq!(err.code(), "storage.unavailable", "{err:?}");
    assert!(err.retryable());

    let storage = Storage::s3(params).await.unwrap();
    assert_eq!(
        storage.describe(),
        format!("s3:http://127.0.0.1:{port}/ytcaption")
    );
    for result in [
        storage.health().await.map(|_| ()),
        storage
            .put_bytes("k", b"x".to_vec(), "text/plain")
            .await
            .map(|_| ()),
        storage.exists("k").await.map(|_| ()),
    ] {
        let err = result.unwrap_err();
        assert_eq!(err.code(), "storage.unavailable", "{err:?}");
        assert!(err.retryable());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_crash_and_recovery() {
    let mut server = seaweed().await;
    let storage = Storage::s3(server.s3_params("crash-test")).await.unwrap();
    storage
        .put_bytes("jobs/1/media", b"before".to_vec(), "audio/mpeg")
        .await
        .unwrap();

    server.stop();
    let err = storage.health().await.unwrap_err();
    assert!(err.retryable(), "{err:?}");
    assert_eq!(err.code(), "storage.unavailable");

    let server = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    })
    .await
    .unwrap();
    // The S3 gateway answers before weed's filer and volume server are back, so right after
    // a restart a call may still fail: it must fail as retryable, and succeed soon after.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let stored = loop {
        let attempt = match storage.health().await {
            Ok(()) => storage.get_bytes("jobs/1/media", 100).await,
            Err(err) => Err(err),
        };
        match attempt {
            Ok(bytes) => break bytes,
            Err(err) => {
                assert!(err.retryable(), "after a restart: {err:?}");
                assert!(
                    std::time::Instant::now() < deadline,
                    "storage still failing 30 s after the restart: {err:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_eq!(stored, b"before");
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_missing_bucket_is_a_config_error() {
    let server = seaweed().await;
    let storage = Storage::s3(S3Params {
        create_bucket: false,
        ..server.s3_params("never-created")
    })
    .await
    .unwrap();
    let err = storage.health().await.unwrap_err();
    assert_eq!(err.code(), "storage.config", "{err:?}");
    // Creating it on connect fixes that; a second connect finds it.
    Storage::s3(server.s3_params("never-created"))
        .await
        .unwrap();
    Storage::s3(server.s3_params("never-created"))
        .await
        .unwrap();
    storage.health().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_checksum_mismatch_is_corrupt() {
    let server = seaweed().await;
    let storage = Storage::s3(server.s3_params("corrupt-test")).await.unwrap();
    // Write an object behind the store's back whose recorded checksum is another content's.
    let raw = raw_bucket(&server, "corrupt-test");
    let mut headers = http::HeaderMap::new();
    headers.insert("x-amz-meta-sha256", sha(b"original").parse().unwrap());
    raw.put_object_with_content_type_and_headers(
        "jobs/1/media",
        b"tampered",
        "audio/mpeg",
        Some(headers),
    )
    .await
    .unwrap();

    let err = storage.get_bytes("jobs/1/media", 100).await.unwrap_err();
    assert!(
        matches!(&err, StorageError::Corrupt { expected, actual, .. }
            if *expected == sha(b"original") && *actual == sha(b"tampered")),
        "{err:?}"
    );
    assert_eq!(err.code(), "storage.corrupt");
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("media");
    let err = storage
        .get_to_file("jobs/1/media", &dest)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "storage.corrupt");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no partial file left"
    );

    // What the store itself wrote reads back fine.
    storage
        .put_bytes("jobs/1/media", b"tampered".to_vec(), "audio/mpeg")
        .await
        .unwrap();
    assert_eq!(
        storage.get_bytes("jobs/1/media", 100).await.unwrap(),
        b"tampered"
    );
}

/// A plain rust-s3 client on the server, to look at objects without the store in between.
fn raw_bucket(server: &SeaweedFs, bucket: &str) -> Box<s3::Bucket> {
    let credentials = s3::creds::Credentials::new(
        Some(server.access_key()),
        Some(server.secret_key()),
        None,
        None,
        None,
    )
    .unwrap();
    let region = s3::Region::Custom {
        region: server.region.clone(),
        endpoint: server.endpoint(),
    };
    s3::Bucket::new(bucket, region, credentials)
        .unwrap()
        .with_path_style()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_part_sizes_and_thresholds() {
    let server = seaweed().await;
    const MIB: usize = 1024 * 1024;
    let storage = Storage::s3(S3Params {
        part_size: 5 * MIB,
        multipart_threshold: 6 * MIB as u64,
        ..server.s3_params("parts-test")
    })
    .await
    .unwrap();
    let raw = raw_bucket(&server, "parts-test");
    let dir = tempfile::tempdir().unwrap();
    // At the threshold (one PUT), an exact multiple of the part size, and a short last part.
    for (seed, size) in [(10, 6 * MIB), (11, 10 * MIB), (12, 12 * MIB + 3)] {
        let content = noise(size, seed);
        let src = dir.path().join("src.bin");
        std::fs::write(&src, &content).unwrap();
        let key = format!("jobs/{size}/media");
        let info = storage.put_file(&key, &src).await.unwrap();
        assert_eq!(
            (info.size, info.sha256.clone()),
            (size as u64, sha(&content))
        );

        // Single PUTs record their checksum; multipart uploads cannot (known only at the end).
        let (head, _) = raw.head_object(&key).await.unwrap();
        let recorded = head.metadata.unwrap_or_default().get("sha256").cloned();
        if size <= 6 * MIB {
            assert_eq!(recorded, Some(sha(&content)), "{size}: single PUT expected");
        } else {
            assert_eq!(recorded, None, "{size}: multipart upload expected");
        }

        let dest = dir.path().join("dest.bin");
        assert_eq!(storage.get_to_file(&key, &dest).await.unwrap(), size as u64);
        assert_eq!(sha(&std::fs::read(&dest).unwrap()), sha(&content), "{size}");
    }
    // No multipart upload left open.
    let open = raw.list_multiparts_uploads(None, None).await.unwrap();
    let uploads: usize = open.iter().map(|page| page.uploads.len()).sum();
    assert_eq!(uploads, 0);
}

#[test]
fn seaweed_servers_start_in_parallel_on_distinct_ports() {
    let servers: Vec<SeaweedFs> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..3).map(|_| scope.spawn(SeaweedFs::start)).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut endpoints: Vec<String> = servers.iter().map(SeaweedFs::endpoint).collect();
    endpoints.sort();
    endpoints.dedup();
    assert_eq!(endpoints.len(), 3);
    let dirs: Vec<_> = servers.iter().map(|s| s.data_dir().to_owned()).collect();
    drop(servers);
    for dir in dirs {
        assert!(!dir.exists(), "data dir {} left behind", dir.display());
    }
}
