//! The guarded outbound HTTP/1.1 client shared by the Downloader and the webhook Notifier.
//!
//! Every request: parse the URL (http or https, a host, no credentials), resolve the host,
//! check **every** resolved address against the [`NetGuard`] (one forbidden address refuses the
//! whole host, so a name cannot smuggle 127.0.0.1 in among public addresses), connect to one of
//! the checked addresses (so nothing re-resolves behind the check), add TLS with the webpki
//! roots for https, and exchange one request over one connection with hyper's HTTP/1.1 client.
//!
//! Redirects are **not** followed here: a caller that follows them must run each hop through
//! [`request`] again, which re-checks the guard. Every wait is bounded: connecting, the response
//! head, each body read (idle timeout), the whole exchange ([`NetParams::total_timeout`]), and
//! the response head's size. Read bodies with [`BodyReader`] or [`read_body`], which apply the
//! same deadline.

mod guard;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue, CONNECTION, HOST, USER_AGENT};
use http::{Method, Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;

pub use guard::{forbidden_reason, Cidr, NetGuard};

/// Addresses tried per host, at most: a name resolving to dozens of addresses must not turn
/// one request into dozens of connection attempts.
const MAX_ADDRESSES_TRIED: usize = 4;

/// How long a connection outlives its exchange's deadline before it is dropped regardless.
const CONNECTION_GRACE: Duration = Duration::from_secs(2);

/// The longest URL accepted; far beyond real media links, short of abuse.
pub const MAX_URL_LEN: usize = 8 * 1024;

/// Limits for one outbound exchange.
#[derive(Debug, Clone)]
pub struct NetParams {
    /// Bound on each TCP connect attempt, and separately on the TLS handshake.
    pub connect_timeout: Duration,
    /// Idle bound: the longest wait for the response head after sending, and for each read of
    /// the body.
    pub read_timeout: Duration,
    /// Bound on the whole exchange: resolving, connecting, sending, the response head and —
    /// when read with [`BodyReader`] or [`read_body`] — the body.
    pub total_timeout: Duration,
    /// Sent as `User-Agent` unless the caller passes its own.
    pub user_agent: String,
    /// The largest response head (status line and headers) accepted.
    pub max_header_bytes: usize,
}

impl Default for NetParams {
    fn default() -> Self {
        NetParams {
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            total_timeout: Duration::from_secs(60),
            user_agent: concat!("ytcaption/", env!("CARGO_PKG_VERSION")).to_string(),
            max_header_bytes: 64 * 1024,
        }
    }
}

/// Why an outbound exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("bad URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("bad outbound allowlist entry {entry:?}: {reason}")]
    BadCidr { entry: String, reason: String },
    #[error(
        "refusing to connect to {host} ({ip}): {why} address; allowlist its network in the \
         outbound settings if this is intended"
    )]
    Forbidden {
        host: String,
        ip: IpAddr,
        why: &'static str,
    },
    #[error("cannot resolve {host}: {reason}")]
    Dns { host: String, reason: String },
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("TLS with {host} failed: {source}")]
    Tls {
        host: String,
        #[source]
        source: io::Error,
    },
    #[error("timed out {phase} after {after:?}")]
    Timeout {
        phase: &'static str,
        after: Duration,
    },
    #[error("HTTP exchange failed: {0}")]
    Http(#[source] hyper::Error),
    #[error("response head larger than {limit} bytes")]
    HeadersTooLarge { limit: usize },
    #[error("response body larger than {limit} bytes")]
    TooLarge { limit: u64 },
}

impl NetError {
    /// A stable machine-readable reason.
    pub fn code(&self) -> &'static str {
        match self {
            NetError::BadUrl { .. } => "net.bad_url",
            NetError::BadRequest(_) => "net.bad_request",
            NetError::BadCidr { .. } => "net.bad_cidr",
            NetError::Forbidden { .. } => "net.forbidden_address",
            NetError::Dns { .. } => "net.dns",
            NetError::Connect { .. } => "net.connect",
            NetError::Tls { .. } => "net.tls",
            NetError::Timeout { .. } => "net.timeout",
            NetError::Http(_) => "net.http",
            NetError::HeadersTooLarge { .. } => "net.headers_too_large",
            NetError::TooLarge { .. } => "net.too_large",
        }
    }

    /// Whether trying again later may succeed: network trouble yes, a bad or refused target no.
    pub fn retryable(&self) -> bool {
        match self {
            NetError::Dns { .. } | NetError::Connect { .. } | NetError::Timeout { .. } => true,
            // rustls reports certificate and protocol failures as InvalidData; anything else
            // (a reset mid-handshake) is the network's.
            NetError::Tls { source, .. } => source.kind() != io::ErrorKind::InvalidData,
            NetError::Http(e) => !(e.is_parse() || e.is_user()),
            NetError::BadUrl { .. }
            | NetError::BadRequest(_)
            | NetError::BadCidr { .. }
            | NetError::Forbidden { .. }
            | NetError::HeadersTooLarge { .. }
            | NetError::TooLarge { .. } => false,
        }
    }
}

/// The instant an exchange must be over by, attached to every response [`request`] returns so
/// that body readers honour [`NetParams::total_timeout`].
#[derive(Debug, Clone, Copy)]
pub struct Deadline(pub Instant);

/// A URL [`request`] can reach, split into what connecting needs.
#[derive(Debug, Clone)]
pub struct Target {
    pub uri: Uri,
    pub https: bool,
    /// The host without IPv6 brackets: what DNS, SNI and the guard see.
    pub host: String,
    pub port: u16,
}

impl Target {
    /// The `Host` header: the authority without credentials (there are none).
    fn host_header(&self) -> String {
        match self.uri.authority() {
            Some(authority) => authority.as_str().to_string(),
            None => self.host.clone(),
        }
    }

    fn path_and_query(&self) -> &str {
        self.uri.path_and_query().map_or("/", |pq| pq.as_str())
    }
}

/// Validates an absolute http(s) URL: a host, no credentials, a sane length. Any fragment is
/// dropped (it never goes on the wire).
pub fn parse_url(url: &str) -> Result<Target, NetError> {
    let bad = |reason: &str| NetError::BadUrl {
        url: truncate(url, 200),
        reason: reason.to_string(),
    };
    if url.len() > MAX_URL_LEN {
        return Err(bad(&format!("longer than {MAX_URL_LEN} bytes")));
    }
    let uri: Uri = url.trim().parse().map_err(|e| bad(&format!("{e}")))?;
    let https = match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
        Some("https") => true,
        Some("http") => false,
        Some(other) => return Err(bad(&format!("scheme {other:?} is not http or https"))),
        None => return Err(bad("not an absolute URL (no scheme)")),
    };
    let authority = uri.authority().ok_or_else(|| bad("no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad("credentials in URLs are not accepted"));
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    if port == 0 {
        return Err(bad("port 0"));
    }
    Ok(Target {
        host: host.to_ascii_lowercase(),
        port,
        https,
        uri,
    })
}

/// Cuts `text` to at most `max` bytes on a character boundary, for error messages.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Resolves `host` and checks every address against the guard; refuses the host when any one
/// is forbidden. IP literals skip DNS.
pub async fn resolve_checked(
    host: &str,
    port: u16,
    guard: &NetGuard,
) -> Result<Vec<SocketAddr>, NetError> {
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| NetError::Dns {
                host: host.to_string(),
                reason: e.to_string(),
            })?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(NetError::Dns {
            host: host.to_string(),
            reason: "no addresses".into(),
        });
    }
    for addr in &addrs {
        guard.check_host(host, addr.ip())?;
    }
    Ok(addrs)
}

/// Connects to the first checked address that answers within the connect timeout.
async fn connect_any(addrs: &[SocketAddr], timeout: Duration) -> Result<TcpStream, NetError> {
    let mut last = None;
    for addr in addrs.iter().take(MAX_ADDRESSES_TRIED) {
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                // Small request bodies (webhooks) should not wait for Nagle.
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Ok(Err(source)) => {
                last = Some(NetError::Connect {
                    addr: *addr,
                    source,
                })
            }
            Err(_) => {
                last = Some(NetError::Timeout {
                    phase: "connecting",
                    after: timeout,
                })
            }
        }
    }
    Err(last.unwrap_or(NetError::Dns {
        host: String::new(),
        reason: "no addresses".into(),
    }))
}

/// The one TLS client configuration: webpki roots, ring, TLS 1.2 and 1.3, ALPN http/1.1.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Ok(Arc::new(config))
        })
        .clone()
}

/// A connection hyper can drive: plain TCP or TLS over it.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Wraps `tcp` in TLS for `host` (SNI and certificate name; IP literals work too).
async fn tls_connect(
    host: &str,
    tcp: TcpStream,
    timeout: Duration,
) -> Result<Box<dyn Io>, NetError> {
    let tls_err = |source: io::Error| NetError::Tls {
        host: host.to_string(),
        source,
    };
    let config = tls_config().map_err(|e| tls_err(io::Error::other(e)))?;
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| {
        NetError::BadUrl {
            url: host.to_string(),
            reason: format!("not a TLS server name: {e}"),
        }
    })?;
    let connector = tokio_rustls::TlsConnector::from(config);
    match tokio::time::timeout(timeout, connector.connect(name, tcp)).await {
        Ok(Ok(stream)) => Ok(Box::new(stream)),
        Ok(Err(e)) => Err(tls_err(e)),
        Err(_) => Err(NetError::Timeout {
            phase: "in the TLS handshake",
            after: timeout,
        }),
    }
}

/// Builds the request: origin-form target, `Host`, our `User-Agent` (the caller's wins) and
/// `Connection: close`, since each connection carries one exchange.
fn build_request(
    method: Method,
    target: &Target,
    headers: &[(&str, &str)],
    body: Bytes,
    params: &NetParams,
) -> Result<Request<Full<Bytes>>, NetError> {
    let bad = |e: &dyn std::fmt::Display| NetError::BadRequest(e.to_string());
    let mut request = Request::builder()
        .method(method)
        .uri(target.path_and_query())
        .body(Full::new(body))
        .map_err(|e| bad(&e))?;
    let map = request.headers_mut();
    map.insert(
        HOST,
        HeaderValue::from_str(&target.host_header()).map_err(|e| bad(&e))?,
    );
    map.insert(
        USER_AGENT,
        HeaderValue::from_str(&params.user_agent).map_err(|e| bad(&e))?,
    );
    map.insert(CONNECTION, HeaderValue::from_static("close"));
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| bad(&e))?;
        let value = HeaderValue::from_str(value).map_err(|e| bad(&e))?;
        if name == HOST || name == USER_AGENT || name == CONNECTION {
            map.insert(name, value);
        } else {
            map.append(name, value);
        }
    }
    Ok(request)
}

fn map_hyper(e: hyper::Error, params: &NetParams) -> NetError {
    if e.is_parse_too_large() {
        NetError::HeadersTooLarge {
            limit: params.max_header_bytes,
        }
    } else {
        NetError::Http(e)
    }
}

/// Sends one request over `io` and waits for the response head. The connection task lives
/// until the body is read, dropped, or the deadline passes.
async fn exchange(
    io: Box<dyn Io>,
    request: Request<Full<Bytes>>,
    params: &NetParams,
    deadline: Instant,
) -> Result<Response<Incoming>, NetError> {
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .max_header_size(params.max_header_bytes.max(1024))
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| map_hyper(e, params))?;
    // A backstop only: readers stop at `deadline` themselves and report a timeout; the grace
    // keeps the connection from being cut first, which would read as a broken exchange.
    let backstop = deadline + CONNECTION_GRACE;
    tokio::spawn(async move {
        match tokio::time::timeout_at(backstop, connection).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "outbound connection ended with an error"),
            Err(_) => tracing::debug!("outbound connection closed at its deadline"),
        }
    });
    match tokio::time::timeout(params.read_timeout, sender.send_request(request)).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(e)) => Err(map_hyper(e, params)),
        Err(_) => Err(NetError::Timeout {
            phase: "waiting for the response",
            after: params.read_timeout,
        }),
    }
}

/// Sends one request to `uri` and returns the response head; the body is read afterwards
/// (see [`BodyReader`]). No redirects are followed. The response carries a [`Deadline`]
/// extension: the end of [`NetParams::total_timeout`].
pub async fn request(
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: Bytes,
    guard: &NetGuard,
    params: &NetParams,
) -> Result<Response<Incoming>, NetError> {
    let target = parse_url(uri)?;
    let request = build_request(method, &target, headers, body, params)?;
    let deadline = Instant::now() + params.total_timeout;
    let exchange = async {
        let addrs = resolve_checked(&target.host, target.port, guard).await?;
        let tcp = connect_any(&addrs, params.connect_timeout).await?;
        let io: Box<dyn Io> = if target.https {
            tls_connect(&target.host, tcp, params.connect_timeout).await?
        } else {
            Box::new(tcp)
        };
        exchange(io, request, params, deadline).await
    };
    let mut response = tokio::time::timeout_at(deadline, exchange)
        .await
        .map_err(|_| NetError::Timeout {
            phase: "overall",
            after: params.total_timeout,
        })??;
    response.extensions_mut().insert(Deadline(deadline));
    Ok(response)
}

/// Reads a response body chunk by chunk, each read bounded by the idle timeout and all of
/// them by the exchange's deadline.
#[derive(Debug)]
pub struct BodyReader {
    body: Incoming,
    idle: Duration,
    deadline: Option<Instant>,
    total: Duration,
}

impl BodyReader {
    /// Splits a response from [`request`] into its head and a reader honouring `params`' idle
    /// timeout and the response's [`Deadline`].
    pub fn new(response: Response<Incoming>, params: &NetParams) -> (http::response::Parts, Self) {
        let (parts, body) = response.into_parts();
        let deadline = parts.extensions.get::<Deadline>().map(|d| d.0);
        let reader = BodyReader {
            body,
            idle: params.read_timeout,
            deadline,
            total: params.total_timeout,
        };
        (parts, reader)
    }

    /// The next data chunk, `None` at the end of the body. Trailers are skipped.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, NetError> {
        loop {
            let idle = tokio::time::timeout(self.idle, self.body.frame());
            let frame = match self.deadline {
                Some(deadline) => match tokio::time::timeout_at(deadline, idle).await {
                    Ok(frame) => frame,
                    Err(_) => {
                        return Err(NetError::Timeout {
                            phase: "overall",
                            after: self.total,
                        })
                    }
                },
                None => idle.await,
            };
            let frame = frame.map_err(|_| NetError::Timeout {
                phase: "reading the body",
                after: self.idle,
            })?;
            match frame {
                None => return Ok(None),
                Some(Err(e)) => return Err(NetError::Http(e)),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        if !data.is_empty() {
                            return Ok(Some(data));
                        }
                    }
                }
            }
        }
    }
}

/// Reads a whole response body of at most `max_bytes`, with the idle timeout and deadline of
/// [`BodyReader`]. For small bodies (webhook answers, API replies), not media.
pub async fn read_body(
    response: Response<Incoming>,
    max_bytes: u64,
    params: &NetParams,
) -> Result<(http::response::Parts, Bytes), NetError> {
    let (parts, mut reader) = BodyReader::new(response, params);
    let mut body = BytesMut::new();
    while let Some(chunk) = reader.next_chunk().await? {
        if body.len() as u64 + chunk.len() as u64 > max_bytes {
            return Err(NetError::TooLarge { limit: max_bytes });
        }
        body.extend_from_slice(&chunk);
    }
    Ok((parts, body.freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_url_accepts_http_and_https_only() {
        let t = parse_url("https://Example.com/a/b?c=d#frag").unwrap();
        assert!(t.https);
        assert_eq!(t.host, "example.com");
        assert_eq!(t.port, 443);
        assert_eq!(t.path_and_query(), "/a/b?c=d");
        let t = parse_url("http://[::1]:8080").unwrap();
        assert_eq!(t.host, "::1");
        assert_eq!(t.port, 8080);
        assert_eq!(t.path_and_query(), "/");
        assert_eq!(t.host_header(), "[::1]:8080");
        for bad in [
            "ftp://example.com/x",
            "file:///etc/passwd",
            "/relative/path",
            "example.com/x",
            "http://user:pw@example.com/",
            "http://user@example.com/",
            "http://:80/",
            "http://example.com:0/",
            "http://exa mple.com/",
            "",
        ] {
            let err = parse_url(bad).unwrap_err();
            assert_eq!(err.code(), "net.bad_url", "{bad:?}");
            assert!(!err.retryable());
        }
        let long = format!("http://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert!(parse_url(&long).unwrap_err().to_string().contains("longer"));
    }

    #[test]
    fn request_headers_are_validated_and_caller_wins() {
        let target = parse_url("http://example.com:8080/x").unwrap();
        let params = NetParams::default();
        let req = build_request(
            Method::POST,
            &target,
            &[("User-Agent", "custom"), ("X-A", "1"), ("X-A", "2")],
            Bytes::from_static(b"{}"),
            &params,
        )
        .unwrap();
        assert_eq!(req.headers()[HOST], "example.com:8080");
        assert_eq!(req.headers()[USER_AGENT], "custom");
        assert_eq!(req.headers().get_all("x-a").iter().count(), 2);
        assert_eq!(req.uri(), "/x");
        let err = build_request(
            Method::GET,
            &target,
            &[("X-Bad", "line\r\nbreak")],
            Bytes::new(),
            &params,
        )
        .unwrap_err();
        assert_eq!(err.code(), "net.bad_request");
        let err = build_request(
            Method::GET,
            &target,
            &[("bad name", "v")],
            Bytes::new(),
            &params,
        )
        .unwrap_err();
        assert_eq!(err.code(), "net.bad_request");
    }

    #[tokio::test]
    async fn loopback_is_refused_before_connecting() {
        let guard = NetGuard::default();
        // Port 9 (discard) is almost certainly closed: a connect attempt would be net.connect.
        for url in [
            "http://127.0.0.1:9/",
            "http://[::1]:9/",
            "http://localhost:9/",
        ] {
            let err = request(
                Method::GET,
                url,
                &[],
                Bytes::new(),
                &guard,
                &NetParams::default(),
            )
            .await
            .unwrap_err();
            assert_eq!(err.code(), "net.forbidden_address", "{url}: {err}");
        }
    }

    #[tokio::test]
    async fn allowlisted_closed_port_is_a_retryable_connect_error() {
        let guard = NetGuard::new(&["127.0.0.1/32".to_string()]).unwrap();
        // Bind then drop a listener to get a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/");
        let err = request(
            Method::GET,
            &url,
            &[],
            Bytes::new(),
            &guard,
            &NetParams::default(),
        )
        .await
        .unwrap_err();
        assert_eq!(err.code(), "net.connect", "{err}");
        assert!(err.retryable());
    }

    #[test]
    fn tls_config_builds() {
        tls_config().unwrap();
    }
}
