//! The route table: every (method, path pattern) the API serves. `{id}` segments capture a job
//! id; a final `{key...}` captures the rest of the path, slashes included (a storage key). The
//! table is data, so a test can hold it against `openapi.json` both ways, bar the `/internal/`
//! routes (node to node, not part of the public API).

use http::Method;

/// Every endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    Healthz,
    Readyz,
    Metrics,
    OpenApi,
    CreateJob,
    ListJobs,
    GetJob,
    DeleteJob,
    CancelJob,
    RetryJob,
    Transcript,
    Events,
    History,
    AudioTranscriptions,
    AudioTranslations,
    AdminStatus,
    DrainNode,
    UndrainNode,
    /// Node to node: a blob of the local store, for a peer that lacks it.
    InternalBlob,
}

/// `(method, pattern, route)`, one line per endpoint.
pub const TABLE: &[(&str, &str, Route)] = &[
    ("GET", "/healthz", Route::Healthz),
    ("GET", "/readyz", Route::Readyz),
    ("GET", "/metrics", Route::Metrics),
    ("GET", "/openapi.json", Route::OpenApi),
    ("POST", "/v1/jobs", Route::CreateJob),
    ("GET", "/v1/jobs", Route::ListJobs),
    ("GET", "/v1/jobs/{id}", Route::GetJob),
    ("DELETE", "/v1/jobs/{id}", Route::DeleteJob),
    ("POST", "/v1/jobs/{id}/cancel", Route::CancelJob),
    ("POST", "/v1/jobs/{id}/retry", Route::RetryJob),
    ("GET", "/v1/jobs/{id}/transcript", Route::Transcript),
    ("GET", "/v1/jobs/{id}/events", Route::Events),
    ("GET", "/v1/jobs/{id}/history", Route::History),
    (
        "POST",
        "/v1/audio/transcriptions",
        Route::AudioTranscriptions,
    ),
    ("POST", "/v1/audio/translations", Route::AudioTranslations),
    ("GET", "/v1/admin/status", Route::AdminStatus),
    ("POST", "/v1/admin/nodes/{id}/drain", Route::DrainNode),
    ("POST", "/v1/admin/nodes/{id}/undrain", Route::UndrainNode),
    ("GET", "/internal/v1/blobs/{key...}", Route::InternalBlob),
];

impl Route {
    /// The `METHOD pattern` label used in metrics and logs (bounded cardinality: never the
    /// raw path).
    pub fn label(self) -> &'static str {
        match self {
            Route::Healthz => "GET /healthz",
            Route::Readyz => "GET /readyz",
            Route::Metrics => "GET /metrics",
            Route::OpenApi => "GET /openapi.json",
            Route::CreateJob => "POST /v1/jobs",
            Route::ListJobs => "GET /v1/jobs",
            Route::GetJob => "GET /v1/jobs/{id}",
            Route::DeleteJob => "DELETE /v1/jobs/{id}",
            Route::CancelJob => "POST /v1/jobs/{id}/cancel",
            Route::RetryJob => "POST /v1/jobs/{id}/retry",
            Route::Transcript => "GET /v1/jobs/{id}/transcript",
            Route::Events => "GET /v1/jobs/{id}/events",
            Route::History => "GET /v1/jobs/{id}/history",
            Route::AudioTranscriptions => "POST /v1/audio/transcriptions",
            Route::AudioTranslations => "POST /v1/audio/translations",
            Route::AdminStatus => "GET /v1/admin/status",
            Route::DrainNode => "POST /v1/admin/nodes/{id}/drain",
            Route::UndrainNode => "POST /v1/admin/nodes/{id}/undrain",
            Route::InternalBlob => "GET /internal/v1/blobs/{key...}",
        }
    }

    /// Whether the route belongs to the authenticated, rate-limited `/v1` API.
    pub fn is_api(self) -> bool {
        !matches!(
            self,
            Route::Healthz | Route::Readyz | Route::Metrics | Route::OpenApi | Route::InternalBlob
        )
    }

    /// Whether errors on this route use OpenAI's error shape.
    pub fn is_openai(self) -> bool {
        matches!(self, Route::AudioTranscriptions | Route::AudioTranslations)
    }
}

/// The outcome of looking a request up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Found {
        route: Route,
        /// The `{id}` segment or the `{key...}` rest, raw (not yet validated).
        id: Option<String>,
    },
    /// The path exists for other methods (listed, for `Allow`).
    MethodNotAllowed(String),
    NotFound,
}

/// Matches `path` against `pattern`; `Some(captured id or key)` on a match.
fn matches(pattern: &str, path: &str) -> Option<Option<String>> {
    let mut pattern_parts = pattern.split('/');
    let mut path_parts = path.split('/');
    let mut id = None;
    loop {
        match (pattern_parts.next(), path_parts.next()) {
            (None, None) => return Some(id),
            (Some("{id}"), Some(segment)) if !segment.is_empty() => {
                id = Some(segment.to_owned());
            }
            // The rest of the path, whatever it holds: the handler validates it.
            (Some("{key...}"), Some(segment)) if !segment.is_empty() => {
                let rest: Vec<&str> = std::iter::once(segment).chain(path_parts).collect();
                return Some(Some(rest.join("/")));
            }
            (Some(expected), Some(segment)) if expected == segment => {}
            _ => return None,
        }
    }
}

/// Finds the route of `method path`.
pub fn lookup(method: &Method, path: &str) -> Lookup {
    let mut allowed: Vec<&str> = Vec::new();
    for (route_method, pattern, route) in TABLE {
        if let Some(id) = matches(pattern, path) {
            // HEAD is served as GET (hyper drops the body).
            if *route_method == method.as_str()
                || (method == Method::HEAD && *route_method == "GET")
            {
                return Lookup::Found { route: *route, id };
            }
            allowed.push(route_method);
        }
    }
    if allowed.is_empty() {
        Lookup::NotFound
    } else {
        Lookup::MethodNotAllowed(allowed.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_with_their_id() {
        assert_eq!(
            lookup(&Method::GET, "/v1/jobs/0123456789abcdef01234567"),
            Lookup::Found {
                route: Route::GetJob,
                id: Some("0123456789abcdef01234567".into())
            }
        );
        assert_eq!(
            lookup(&Method::POST, "/v1/jobs"),
            Lookup::Found {
                route: Route::CreateJob,
                id: None
            }
        );
        assert_eq!(
            lookup(&Method::GET, "/v1/jobs/x/events"),
            Lookup::Found {
                route: Route::Events,
                id: Some("x".into())
            }
        );
        assert_eq!(
            lookup(&Method::HEAD, "/healthz"),
            Lookup::Found {
                route: Route::Healthz,
                id: None
            }
        );
    }

    #[test]
    fn internal_blob_paths_capture_the_whole_key() {
        assert_eq!(
            lookup(&Method::GET, "/internal/v1/blobs/jobs/0123abcd/media"),
            Lookup::Found {
                route: Route::InternalBlob,
                id: Some("jobs/0123abcd/media".into())
            }
        );
        assert_eq!(
            lookup(&Method::GET, "/internal/v1/blobs/a"),
            Lookup::Found {
                route: Route::InternalBlob,
                id: Some("a".into())
            }
        );
        // Odd keys are captured as they are; the handler refuses them.
        assert_eq!(
            lookup(&Method::GET, "/internal/v1/blobs/jobs//x/"),
            Lookup::Found {
                route: Route::InternalBlob,
                id: Some("jobs//x/".into())
            }
        );
        assert_eq!(
            lookup(&Method::GET, "/internal/v1/blobs/"),
            Lookup::NotFound
        );
        assert_eq!(lookup(&Method::GET, "/internal/v1/blobs"), Lookup::NotFound);
        assert_eq!(
            lookup(&Method::PUT, "/internal/v1/blobs/k"),
            Lookup::MethodNotAllowed("GET".into())
        );
        assert!(!Route::InternalBlob.is_api());
        // The path peers request is the one routed here.
        let client_path = format!(
            "{}jobs/x/media",
            ytcaption_actors::storage::peers::BLOB_PATH
        );
        assert!(matches!(
            lookup(&Method::GET, &client_path),
            Lookup::Found {
                route: Route::InternalBlob,
                ..
            }
        ));
    }

    #[test]
    fn unknown_paths_and_methods() {
        assert_eq!(lookup(&Method::GET, "/v1/jobs/"), Lookup::NotFound);
        assert_eq!(lookup(&Method::GET, "/v1/jobs//events"), Lookup::NotFound);
        assert_eq!(lookup(&Method::GET, "/nope"), Lookup::NotFound);
        assert_eq!(lookup(&Method::GET, "/v1/jobs/a/b/c"), Lookup::NotFound);
        assert_eq!(
            lookup(&Method::PUT, "/v1/jobs/abc"),
            Lookup::MethodNotAllowed("GET, DELETE".into())
        );
        assert_eq!(
            lookup(&Method::DELETE, "/v1/jobs"),
            Lookup::MethodNotAllowed("POST, GET".into())
        );
    }

    #[test]
    fn labels_match_the_table() {
        for (method, pattern, route) in TABLE {
            assert_eq!(route.label(), format!("{method} {pattern}"));
        }
    }

    /// Every `$ref` in `value`.
    fn refs<'a>(value: &'a serde_json::Value, out: &mut Vec<&'a str>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, child) in map {
                    match (key.as_str(), child.as_str()) {
                        ("$ref", Some(target)) => out.push(target),
                        _ => refs(child, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|item| refs(item, out)),
            _ => {}
        }
    }

    #[test]
    fn the_openapi_document_and_the_router_describe_the_same_routes() {
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("../openapi.json")).expect("openapi.json is JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().expect("paths");
        let mut documented = Vec::new();
        for (path, item) in paths {
            for (method, operation) in item.as_object().expect("path item") {
                if !["get", "post", "put", "delete", "patch", "head", "options"]
                    .contains(&method.as_str())
                {
                    continue;
                }
                let method = method.to_ascii_uppercase();
                // The document's path, with a concrete id, must reach the route it describes.
                let concrete = path.replace("{id}", "0123456789abcdef01234567");
                let http_method = Method::from_bytes(method.as_bytes()).unwrap();
                let found = lookup(&http_method, &concrete);
                let route = TABLE
                    .iter()
                    .find(|(m, p, _)| *m == method && p == path)
                    .unwrap_or_else(|| panic!("{method} {path} is documented but not routed"))
                    .2;
                assert!(
                    matches!(found, Lookup::Found { route: r, .. } if r == route),
                    "{method} {path} resolves to {found:?}"
                );
                assert!(
                    operation["responses"]
                        .as_object()
                        .is_some_and(|r| !r.is_empty()),
                    "{method} {path} has no responses"
                );
                documented.push((method, path.clone()));
            }
        }
        // Node-to-node routes are not the public API's: the document leaves them out.
        for (method, pattern, _) in TABLE
            .iter()
            .filter(|(_, pattern, _)| !pattern.starts_with("/internal/"))
        {
            assert!(
                documented.iter().any(|(m, p)| m == method && p == pattern),
                "{method} {pattern} is routed but not documented"
            );
        }
        let mut targets = Vec::new();
        refs(&doc, &mut targets);
        assert!(!targets.is_empty());
        for target in targets {
            let pointer = target.strip_prefix('#').expect("local $ref");
            assert!(doc.pointer(pointer).is_some(), "dangling $ref {target}");
        }
    }
}
