//! Loading: the built-in defaults, then the TOML file, then `YTCAPTION_*` environment
//! overrides, merged into one `toml` tree and deserialized once, so the file and the
//! environment go through exactly the same parsing and validation.
//!
//! # Environment overrides
//! `YTCAPTION_<KEY>` where `<KEY>` is the key path in upper case with `__` (double underscore)
//! between levels: `YTCAPTION_HTTP__LISTEN=0.0.0.0:9000`, `YTCAPTION_STORAGE__S3__ENDPOINT=…`,
//! `YTCAPTION_NODE_NAME=edge-2`; `YTCAPTION_DATA_DIR` and `YTCAPTION_MODELS_DIR` are the
//! top-level `data_dir` and `models_dir`. Values are typed by the schema: string keys (including
//! durations, sizes, addresses and paths) take the value as is; numbers and booleans are read
//! as TOML scalars; lists are comma-separated (`a.com,b.com`) or a TOML array (`["a","b"]`).
//! An empty variable counts as unset. Lists of tables (`auth.keys`) can only be set in the file.
//!
//! Names with `__` that are not in the schema are errors, like unknown fields in the file.
//! Single-segment names outside the schema are not config and are ignored (the known ones are
//! [`NON_CONFIG_ENV`]), except when they look like a misspelt override such as
//! `YTCAPTION_HTTP_LISTEN` (one underscore), which is refused with the right spelling.
//!
//! Reading the file is blocking IO: load before starting the async runtime (or in
//! `spawn_blocking`).

use std::path::{Path, PathBuf};

use toml::{Table, Value};

use crate::error::{ConfigErrors, ConfigIssue};
use crate::schema::{ApiKey, Config, Smtp};

/// Prefix of every configuration environment variable.
pub const ENV_PREFIX: &str = "YTCAPTION_";

/// `YTCAPTION_*` variables used by ytcaption's tools that are not configuration keys; ignored
/// by [`Config::load`]. (`YTCAPTION_DATA_DIR` and `YTCAPTION_MODELS_DIR` are config keys.)
/// - `YTCAPTION_FFMPEG`: ffmpeg binary used by tests and the model tools.
/// - `YTCAPTION_BIN`: the `ytcaption` binary used by scripts.
/// - `YTCAPTION_CONVERTER`: model converter used by `deploy/model/install.sh`.
/// - `YTCAPTION_FUZZ_STRICT_PANICS`: fuzzing switch.
pub const NON_CONFIG_ENV: [&str; 4] = [
    "YTCAPTION_FFMPEG",
    "YTCAPTION_BIN",
    "YTCAPTION_CONVERTER",
    "YTCAPTION_FUZZ_STRICT_PANICS",
];

/// One environment variable turned into a key path and a typed value.
#[derive(Debug, Clone)]
struct EnvOverride {
    var: String,
    path: Vec<String>,
    value: Value,
}

impl EnvOverride {
    fn key(&self) -> String {
        self.path.join(".")
    }
}

impl Config {
    /// Defaults, then `file` (if any), then the `YTCAPTION_*` variables of `env` (pass
    /// `std::env::vars()`), then [`Config::validate`]. Every problem found is returned at once.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigErrors> {
        let mut issues = Vec::new();
        let source = file.and_then(|path| match std::fs::read_to_string(path) {
            Ok(text) => Some((path.display().to_string(), text)),
            Err(e) => {
                issues.push(ConfigIssue::Read {
                    file: path.display().to_string(),
                    reason: e.to_string(),
                });
                None
            }
        });
        load_source(source, env, issues)
    }

    /// Like [`Config::load`] with the file's text given directly (`origin` names it in errors).
    pub fn load_str(
        origin: &str,
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigErrors> {
        load_source(
            Some((origin.to_string(), text.to_string())),
            env,
            Vec::new(),
        )
    }

    /// Every key the schema accepts, dotted and sorted (`http.listen`; fields of list items as
    /// `auth.keys.id`), optional ones included.
    pub fn key_paths() -> Result<Vec<String>, ConfigErrors> {
        let schema = tree_of(&schema_exemplar()).map_err(single)?;
        let mut paths = Vec::new();
        collect_paths(&schema, "", &mut paths);
        paths.sort();
        Ok(paths)
    }
}

fn single(issue: ConfigIssue) -> ConfigErrors {
    ConfigErrors::one(issue)
}

fn load_source(
    source: Option<(String, String)>,
    env: impl IntoIterator<Item = (String, String)>,
    mut issues: Vec<ConfigIssue>,
) -> Result<Config, ConfigErrors> {
    let defaults = tree_of(&Config::default()).map_err(single)?;
    let schema = tree_of(&schema_exemplar()).map_err(single)?;
    let mut base = defaults;
    if let Some((origin, text)) = source {
        match parse_file(&origin, &text) {
            Ok(table) => merge(&mut base, table),
            Err(issue) => issues.push(issue),
        }
    }
    let file_ok = issues.is_empty();
    let mut overrides = Vec::new();
    let mut env: Vec<(String, String)> = env.into_iter().collect();
    env.sort();
    for (var, raw) in env {
        match env_override(&var, &raw, &schema) {
            Ok(Some(found)) => overrides.push(found),
            Ok(None) => {}
            Err(issue) => issues.push(issue),
        }
    }
    let config = apply_overrides(&base, &overrides, &mut issues);
    if let Some(config) = config.as_ref().filter(|_| file_ok) {
        if let Err(errors) = config.validate() {
            issues.extend(errors.issues().iter().cloned());
        }
    }
    match (ConfigErrors::from_issues(issues), config) {
        (Some(errors), _) => Err(errors),
        (None, Some(config)) => Ok(config),
        (None, None) => Err(single(ConfigIssue::Internal(
            "configuration could not be built".into(),
        ))),
    }
}

/// The defaults with every optional part filled in, so that the serialized tree shows every
/// key and its type (used to type environment values and to list key paths).
fn schema_exemplar() -> Config {
    let mut config = Config::default();
    let some = || Some(String::new());
    config.data_dir = Some(PathBuf::new());
    config.models_dir = Some(PathBuf::new());
    config.http.public_url = some();
    config.auth.keys = vec![ApiKey::default()];
    config.downloader.allow_private = vec![String::new()];
    config.downloader.cookies_file = Some(PathBuf::new());
    config.storage.local.path = Some(PathBuf::new());
    config.storage.s3.access_key = some();
    config.storage.s3.secret_key = some();
    config.notify.webhook_secret = some();
    config.cluster.listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 1)));
    config.cluster.advertise = some();
    config.cluster.cookie = some();
    config.cluster.seeds = vec![String::new()];
    config.cluster.tls_cert = Some(PathBuf::new());
    config.cluster.tls_key = Some(PathBuf::new());
    config.cluster.tls_ca = Some(PathBuf::new());
    config.notify.allow_private = vec![String::new()];
    config.notify.smtp = Some(Smtp {
        username: some(),
        password: some(),
        ..Smtp::default()
    });
    config
}

fn tree_of(config: &Config) -> Result<Table, ConfigIssue> {
    match Value::try_from(config) {
        Ok(Value::Table(table)) => Ok(table),
        Ok(_) => Err(ConfigIssue::Internal("config is not a table".into())),
        Err(e) => Err(ConfigIssue::Internal(format!(
            "serializing the defaults: {e}"
        ))),
    }
}

fn collect_paths(table: &Table, prefix: &str, out: &mut Vec<String>) {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            Value::Table(inner) => collect_paths(inner, &path, out),
            Value::Array(items) => match items.first() {
                Some(Value::Table(inner)) => collect_paths(inner, &path, out),
                _ => out.push(path),
            },
            _ => out.push(path),
        }
    }
}

/// Parses the file twice: as a plain table (syntax errors) and as a [`Config`] (unknown fields,
/// wrong types), both with positions in the operator's own file.
fn parse_file(origin: &str, text: &str) -> Result<Table, ConfigIssue> {
    let table: Table = toml::from_str(text).map_err(|e| parse_issue(origin, text, &e))?;
    toml::from_str::<Config>(text).map_err(|e| parse_issue(origin, text, &e))?;
    Ok(table)
}

fn parse_issue(origin: &str, text: &str, error: &toml::de::Error) -> ConfigIssue {
    let (line, column) = error.span().map(|s| line_column(text, s.start)).unzip();
    ConfigIssue::Parse {
        origin: origin.to_string(),
        line,
        column,
        message: error.message().trim().to_string(),
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Deep merge: tables merge key by key, anything else (lists included) replaces.
fn merge(base: &mut Table, over: Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(Value::Table(inner)), Value::Table(value)) => merge(inner, value),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

fn set_path(table: &mut Table, path: &[String], value: Value) {
    match path {
        [] => {}
        [last] => {
            table.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = table
                .entry(first.clone())
                .or_insert_with(|| Value::Table(Table::new()));
            if !entry.is_table() {
                *entry = Value::Table(Table::new());
            }
            if let Value::Table(inner) = entry {
                set_path(inner, rest, value);
            }
        }
    }
}

fn deserialize(tree: Table) -> Result<Config, toml::de::Error> {
    Value::Table(tree).try_into()
}

/// Applies all overrides and deserializes once; on failure, tries each override alone on the
/// file's tree to name every variable whose value does not fit.
fn apply_overrides(
    base: &Table,
    overrides: &[EnvOverride],
    issues: &mut Vec<ConfigIssue>,
) -> Option<Config> {
    let mut tree = base.clone();
    for found in overrides {
        set_path(&mut tree, &found.path, found.value.clone());
    }
    let combined = match deserialize(tree) {
        Ok(config) => return Some(config),
        Err(e) => e,
    };
    if let Err(e) = deserialize(base.clone()) {
        issues.push(ConfigIssue::Internal(format!(
            "defaults and file do not combine: {}",
            e.message()
        )));
        return None;
    }
    let before = issues.len();
    for found in overrides {
        let mut alone = base.clone();
        set_path(&mut alone, &found.path, found.value.clone());
        if let Err(e) = deserialize(alone) {
            issues.push(ConfigIssue::EnvValue {
                var: found.var.clone(),
                key: found.key(),
                message: e.message().trim().to_string(),
            });
        }
    }
    if issues.len() == before {
        issues.push(ConfigIssue::EnvKey {
            var: "environment".into(),
            message: combined.message().trim().to_string(),
        });
    }
    None
}

/// Where a key path leads in the schema tree.
enum Lookup<'a> {
    Leaf(&'a Value),
    Section,
    /// `path[depth]` is not a key of the table reached; `known` lists that table's keys.
    Missing {
        depth: usize,
        known: Vec<String>,
    },
    /// The path goes inside a list of tables, which the environment cannot address.
    InsideList(String),
}

fn lookup<'a>(schema: &'a Table, path: &[String]) -> Lookup<'a> {
    let mut table = schema;
    for (i, part) in path.iter().enumerate() {
        let last = i + 1 == path.len();
        let Some(value) = table.get(part) else {
            return Lookup::Missing {
                depth: i,
                known: table.keys().cloned().collect(),
            };
        };
        match value {
            Value::Table(_) if last => return Lookup::Section,
            Value::Table(inner) => table = inner,
            Value::Array(items) if !last && items.first().is_some_and(Value::is_table) => {
                return Lookup::InsideList(path[..=i].join("."))
            }
            _ if last => return Lookup::Leaf(value),
            _ => {
                return Lookup::Missing {
                    depth: i + 1,
                    known: Vec::new(),
                }
            }
        }
    }
    Lookup::Section
}

fn env_name(path: &[String]) -> String {
    format!("{ENV_PREFIX}{}", path.join("__").to_ascii_uppercase())
}

/// The override a variable stands for: `Ok(None)` when it is not a config variable.
fn env_override(var: &str, raw: &str, schema: &Table) -> Result<Option<EnvOverride>, ConfigIssue> {
    let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
        return Ok(None);
    };
    if NON_CONFIG_ENV.contains(&var) || raw.is_empty() {
        return Ok(None);
    }
    let key_issue = |message: String| ConfigIssue::EnvKey {
        var: var.to_string(),
        message,
    };
    let path: Vec<String> = rest
        .to_ascii_lowercase()
        .split("__")
        .map(str::to_string)
        .collect();
    if path.iter().any(String::is_empty) {
        return Err(key_issue(
            "malformed name: levels are joined by a double underscore, e.g. YTCAPTION_HTTP__LISTEN"
                .into(),
        ));
    }
    let value = match lookup(schema, &path) {
        Lookup::Leaf(exemplar) => env_value(raw, exemplar).map_err(key_issue)?,
        Lookup::Section => {
            return Err(key_issue(format!(
                "`{}` is a section; set one of its keys, e.g. {}__<KEY>",
                path.join("."),
                var
            )))
        }
        Lookup::InsideList(list) => {
            return Err(key_issue(format!(
                "`{list}` is a list of tables; set it in the config file"
            )))
        }
        Lookup::Missing { depth: 0, .. } if path.len() == 1 => {
            return misspelt_override(&path[0], schema).map_or(Ok(None), |fix| {
                Err(key_issue(format!(
                    "not a config key; did you mean {fix}? (levels are joined by `__`)"
                )))
            })
        }
        Lookup::Missing { depth, known } => {
            let parent = path[..depth].join(".");
            let key = path.join(".");
            let hint = match (parent.is_empty(), known.is_empty()) {
                (_, true) => format!("`{parent}` has no keys"),
                (true, false) => format!("top-level keys: {}", known.join(", ")),
                (false, false) => format!("keys of `{parent}`: {}", known.join(", ")),
            };
            return Err(key_issue(format!("unknown config key `{key}` ({hint})")));
        }
    };
    Ok(Some(EnvOverride {
        var: var.to_string(),
        path,
        value,
    }))
}

/// `YTCAPTION_HTTP_LISTEN` for `YTCAPTION_HTTP__LISTEN`: a top-level name that starts with
/// a section name and a single underscore. Returns the correct spelling when it exists.
fn misspelt_override(name: &str, schema: &Table) -> Option<String> {
    schema
        .iter()
        .filter(|(_, value)| value.is_table())
        .find_map(|(section, _)| {
            let rest = name.strip_prefix(section.as_str())?.strip_prefix('_')?;
            (!rest.is_empty()).then(|| env_name(&[section.clone(), rest.to_string()]))
        })
}

/// Types a raw variable by the schema's example value at that key.
fn env_value(raw: &str, exemplar: &Value) -> Result<Value, String> {
    match exemplar {
        Value::String(_) => Ok(Value::String(raw.to_string())),
        Value::Array(items) if items.first().is_some_and(Value::is_table) => {
            Err("a list of tables; set it in the config file".into())
        }
        Value::Array(_) if raw.trim_start().starts_with('[') => match toml_scalar(raw) {
            Some(Value::Array(items)) => Ok(Value::Array(items)),
            _ => Err(format!("`{raw}` is not a TOML array")),
        },
        Value::Array(_) => Ok(Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(|item| Value::String(item.to_string()))
                .collect(),
        )),
        _ => Ok(toml_scalar(raw).unwrap_or_else(|| Value::String(raw.to_string()))),
    }
}

/// `raw` read as a TOML value (`8080`, `true`, `2.5`, `["a"]`), or `None`.
fn toml_scalar(raw: &str) -> Option<Value> {
    if raw.contains(['\n', '\r']) {
        return None;
    }
    let mut table: Table = toml::from_str(&format!("v = {raw}")).ok()?;
    table.remove("v")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Table {
        tree_of(&schema_exemplar()).unwrap()
    }

    #[test]
    fn line_column_counts_characters() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 6), (2, 1));
        assert_eq!(line_column(text, 9), (2, 3));
        assert_eq!(line_column(text, 1_000), (3, 1));
    }

    #[test]
    fn env_values_are_typed_by_the_schema() {
        let schema = schema();
        let cases = [
            ("YTCAPTION_NODE_NAME", "1234", Value::String("1234".into())),
            ("YTCAPTION_HTTP__MAX_CONNECTIONS", "7", Value::Integer(7)),
            ("YTCAPTION_JOBS__KEEP_MEDIA", "true", Value::Boolean(true)),
            ("YTCAPTION_JOBS__RETRY__FACTOR", "1.5", Value::Float(1.5)),
            (
                "YTCAPTION_HTTP__LISTEN",
                "0.0.0.0:9000",
                Value::String("0.0.0.0:9000".into()),
            ),
            (
                "YTCAPTION_DOWNLOADER__YTDLP_HOSTS",
                "a.com, b.com,",
                Value::Array(vec![
                    Value::String("a.com".into()),
                    Value::String("b.com".into()),
                ]),
            ),
            (
                "YTCAPTION_NOTIFY__ALLOW_PRIVATE",
                "[\"10.0.0.0/8\"]",
                Value::Array(vec![Value::String("10.0.0.0/8".into())]),
            ),
            (
                "YTCAPTION_NOTIFY__SMTP__PORT",
                "nope",
                Value::String("nope".into()),
            ),
        ];
        for (var, raw, want) in cases {
            let found = env_override(var, raw, &schema).unwrap().unwrap();
            assert_eq!(found.value, want, "{var}");
        }
    }

    #[test]
    fn env_names_outside_the_schema() {
        let schema = schema();
        for ignored in ["PATH", "YTCAPTION_FFMPEG", "YTCAPTION_SOMETHING_ELSE"] {
            assert!(
                env_override(ignored, "x", &schema).unwrap().is_none(),
                "{ignored}"
            );
        }
        assert!(env_override("YTCAPTION_HTTP__LISTEN", "", &schema)
            .unwrap()
            .is_none());
        let message = |var: &str| env_override(var, "x", &schema).unwrap_err().to_string();
        assert_eq!(
            message("YTCAPTION_HTTP_LISTEN"),
            "YTCAPTION_HTTP_LISTEN: not a config key; did you mean YTCAPTION_HTTP__LISTEN? \
             (levels are joined by `__`)"
        );
        assert!(message("YTCAPTION_HTTP__LISTN").contains("unknown config key `http.listn`"));
        assert!(message("YTCAPTION_HTTP__LISTN").contains("keys of `http`: "));
        assert!(message("YTCAPTION_BOGUS__X").contains("top-level keys: "));
        assert!(message("YTCAPTION_STORAGE__S3").contains("is a section"));
        assert!(message("YTCAPTION_AUTH__KEYS").contains("list of tables"));
        assert!(message("YTCAPTION_AUTH__KEYS__ID").contains("list of tables"));
        assert!(message("YTCAPTION_NODE_NAME__X").contains("`node_name` has no keys"));
        assert!(message("YTCAPTION_HTTP____LISTEN").contains("malformed"));
    }

    #[test]
    fn merge_is_deep_for_tables_and_replaces_lists() {
        let mut base: Table = toml::from_str("a = [1, 2]\n[t]\nx = 1\ny = 2").unwrap();
        let over: Table = toml::from_str("a = [3]\n[t]\ny = 5\nz = 6").unwrap();
        merge(&mut base, over);
        let want: Table = toml::from_str("a = [3]\n[t]\nx = 1\ny = 5\nz = 6").unwrap();
        assert_eq!(base, want);
    }

    #[test]
    fn key_paths_cover_optional_and_list_fields() {
        let paths = Config::key_paths().unwrap();
        for key in [
            "node_name",
            "data_dir",
            "http.public_url",
            "auth.keys.hash",
            "jobs.retry.jitter",
            "notify.smtp.password",
            "storage.s3.secret_key",
            "downloader.cookies_file",
        ] {
            assert!(paths.contains(&key.to_string()), "{key}");
        }
        assert!(!paths.iter().any(|p| p == "http" || p == "auth.keys"));
    }
}
