//! Configuration errors. Loading collects every problem it can find, so an operator fixes a
//! config in one round instead of one error per restart; [`ConfigErrors`] holds them all and
//! prints one per line, each starting with where it is (file:line, variable, or key path).

use std::fmt;

/// One problem in the configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigIssue {
    /// The config file could not be read.
    #[error("{file}: cannot read the config file: {reason}")]
    Read { file: String, reason: String },
    /// The file is not valid TOML, or does not fit the schema (unknown field, wrong type).
    #[error("{origin}{}: {message}", location(*line, *column))]
    Parse {
        origin: String,
        line: Option<usize>,
        column: Option<usize>,
        message: String,
    },
    /// An environment override has a value that does not fit its key.
    #[error("{var} ({key}): {message}")]
    EnvValue {
        var: String,
        key: String,
        message: String,
    },
    /// An environment variable names a key that is not in the schema, or cannot be set.
    #[error("{var}: {message}")]
    EnvKey { var: String, message: String },
    /// A value is well-formed but not acceptable (found by [`crate::Config::validate`]).
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    /// A bug: the built-in defaults could not be turned into a TOML tree.
    #[error("internal: {0}")]
    Internal(String),
}

fn location(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(line), Some(column)) => format!(":{line}:{column}"),
        (Some(line), None) => format!(":{line}"),
        _ => String::new(),
    }
}

impl ConfigIssue {
    /// Stable machine-readable reason code.
    pub fn code(&self) -> &'static str {
        match self {
            ConfigIssue::Read { .. } => "config.read",
            ConfigIssue::Parse { .. } => "config.parse",
            ConfigIssue::EnvValue { .. } => "config.env_value",
            ConfigIssue::EnvKey { .. } => "config.env_key",
            ConfigIssue::Invalid { .. } => "config.invalid",
            ConfigIssue::Internal(_) => "config.internal",
        }
    }

    /// Always false: the configuration has to be fixed, starting again will not help.
    pub fn retryable(&self) -> bool {
        false
    }

    /// The key path (`storage.s3.endpoint`) of an [`ConfigIssue::Invalid`] or
    /// [`ConfigIssue::EnvValue`] problem.
    pub fn path(&self) -> Option<&str> {
        match self {
            ConfigIssue::Invalid { path, .. } => Some(path),
            ConfigIssue::EnvValue { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// Every problem found in a configuration; never empty when returned as an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    issues: Vec<ConfigIssue>,
}

impl ConfigErrors {
    /// Wraps the problems found; `None` when there are none.
    pub fn from_issues(issues: Vec<ConfigIssue>) -> Option<ConfigErrors> {
        (!issues.is_empty()).then_some(ConfigErrors { issues })
    }

    /// Exactly one problem.
    pub(crate) fn one(issue: ConfigIssue) -> ConfigErrors {
        ConfigErrors {
            issues: vec![issue],
        }
    }

    /// `Ok(())` when there are no problems, else all of them.
    pub(crate) fn check(issues: Vec<ConfigIssue>) -> Result<(), ConfigErrors> {
        ConfigErrors::from_issues(issues).map_or(Ok(()), Err)
    }

    /// The problems, in the order found.
    pub fn issues(&self) -> &[ConfigIssue] {
        &self.issues
    }

    /// Stable machine-readable reason code: `config.invalid` for the whole set
    /// (each [`ConfigIssue::code`] is more specific).
    pub fn code(&self) -> &'static str {
        "config.invalid"
    }

    /// Always false: see [`ConfigIssue::retryable`].
    pub fn retryable(&self) -> bool {
        false
    }
}

impl fmt::Display for ConfigErrors {
    /// One problem per line; embedded newlines are flattened so each line stands alone.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.issues.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            let text = issue.to_string();
            let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
            if let Some(first) = lines.next() {
                f.write_str(first)?;
            }
            for line in lines {
                write!(f, "; {line}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_lists_one_issue_per_line_with_its_location() {
        let errors = ConfigErrors::from_issues(vec![
            ConfigIssue::Parse {
                origin: "a.toml".into(),
                line: Some(3),
                column: Some(1),
                message: "unknown field `x`\nexpected one of `y`".into(),
            },
            ConfigIssue::Invalid {
                path: "http.max_body".into(),
                message: "must be greater than zero".into(),
            },
        ])
        .unwrap();
        assert_eq!(
            errors.to_string(),
            "a.toml:3:1: unknown field `x`; expected one of `y`\n\
             http.max_body: must be greater than zero"
        );
        assert_eq!(errors.issues()[0].code(), "config.parse");
        assert_eq!(errors.issues()[1].path(), Some("http.max_body"));
        assert!(!errors.retryable());
        assert!(ConfigErrors::from_issues(Vec::new()).is_none());
    }
}
