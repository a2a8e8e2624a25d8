//! Keeps `deploy/config/ytcaption.example.toml` in step with the schema: it must load to exactly
//! the defaults, mention every key, and its commented-out optional settings must be valid.

use std::collections::BTreeSet;
use std::path::PathBuf;

use ytcaption_config::{Config, SmtpSecurity};

fn example_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/ytcaption.example.toml")
}

fn example_text() -> String {
    std::fs::read_to_string(example_path()).expect("example config is readable")
}

/// `#key = …`, `#[section]`: an optional setting; `# text`: an explanation.
fn uncomment_settings(text: &str) -> String {
    text.lines()
        .map(|line| match line.strip_prefix('#') {
            Some(rest) if rest.starts_with(|c: char| c.is_ascii_lowercase() || c == '[') => rest,
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `section.key` written in the example, commented-out settings included.
fn documented_keys(text: &str) -> BTreeSet<String> {
    let mut section = String::new();
    let mut keys = BTreeSet::new();
    for line in uncomment_settings(text).lines() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('[') {
            section = header.trim_matches(|c| c == '[' || c == ']').to_string();
        } else if let Some((key, _)) = line.split_once(" = ") {
            if key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                let path = if section.is_empty() {
                    key.to_string()
                } else {
                    format!("{section}.{key}")
                };
                keys.insert(path);
            }
        }
    }
    keys
}

#[test]
fn example_loads_to_exactly_the_defaults() {
    let loaded = Config::load(Some(&example_path()), Vec::new()).expect("example loads");
    assert_eq!(loaded, Config::default());
}

#[test]
fn example_mentions_every_key_of_the_schema() {
    let documented = documented_keys(&example_text());
    let missing: Vec<String> = Config::key_paths()
        .unwrap()
        .into_iter()
        .filter(|path| !documented.contains(path))
        .collect();
    assert!(
        missing.is_empty(),
        "keys missing from the example: {missing:?}"
    );
    // The scan itself must see the optional ones, or the check above proves nothing.
    for optional in [
        "data_dir",
        "auth.keys.hash",
        "notify.smtp.from",
        "storage.s3.secret_key",
    ] {
        assert!(documented.contains(optional), "{optional}");
    }
}

#[test]
fn example_documents_no_key_outside_the_schema() {
    let known: BTreeSet<String> = Config::key_paths().unwrap().into_iter().collect();
    let extra: Vec<String> = documented_keys(&example_text())
        .difference(&known)
        .cloned()
        .collect();
    assert!(
        extra.is_empty(),
        "keys in the example but not the schema: {extra:?}"
    );
}

#[test]
fn commented_out_settings_are_valid_when_enabled() {
    let enabled = uncomment_settings(&example_text());
    let config = Config::load_str("example (uncommented)", &enabled, Vec::new())
        .unwrap_or_else(|e| panic!("{e}\n---\n{enabled}"));
    assert_eq!(config.data_dir, Some("/var/lib/ytcaption".into()));
    assert_eq!(config.auth.keys.len(), 1);
    assert_eq!(config.auth.keys[0].id, "ops");
    assert_eq!(config.auth.keys[0].rate_per_minute, 600);
    let smtp = config.notify.smtp.expect("smtp enabled");
    assert_eq!(smtp.security, SmtpSecurity::Starttls);
    assert_eq!(smtp.from, "ytcaption <ytcaption@example.com>");
    assert_eq!(
        config.http.public_url.as_deref(),
        Some("https://captions.example.com")
    );
}
