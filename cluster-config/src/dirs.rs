//! Data and models directories, resolved as `deploy/model/install.sh` does, most specific
//! first: models dir = `--models-dir` / `YTCAPTION_MODELS_DIR`, else `<data dir>/models`;
//! data dir = `--data-dir` / `YTCAPTION_DATA_DIR`, else `$XDG_DATA_HOME/ytcaption`,
//! else `$HOME/.local/share/ytcaption`.

use std::path::{Path, PathBuf};

/// Environment variable naming the data directory.
pub const DATA_DIR_ENV: &str = "YTCAPTION_DATA_DIR";
/// Environment variable naming the models directory.
pub const MODELS_DIR_ENV: &str = "YTCAPTION_MODELS_DIR";
/// The model used when none is named.
pub const DEFAULT_MODEL: &str = "base";

/// A directory could not be determined.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot find a data directory: set {DATA_DIR_ENV} or HOME")]
    NoDataDir,
}

impl ConfigError {
    /// Stable machine-readable reason code.
    pub fn code(&self) -> &'static str {
        match self {
            ConfigError::NoDataDir => "config.no_data_dir",
        }
    }

    /// Always false: the environment has to be fixed.
    pub fn retryable(&self) -> bool {
        false
    }
}

/// The data directory: explicit choice, then the environment, then the XDG default.
pub fn data_dir(explicit: Option<&Path>) -> Result<PathBuf, ConfigError> {
    data_dir_from(explicit, |name| {
        std::env::var_os(name).filter(|v| !v.is_empty())
    })
}

/// The models directory: explicit choice, then the environment, then `<data dir>/models`.
pub fn models_dir(explicit: Option<&Path>, data_dir: &Path) -> PathBuf {
    models_dir_from(explicit, data_dir, |name| {
        std::env::var_os(name).filter(|v| !v.is_empty())
    })
}

fn data_dir_from(
    explicit: Option<&Path>,
    env: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> Result<PathBuf, ConfigError> {
    if let Some(dir) = explicit {
        return Ok(dir.to_path_buf());
    }
    if let Some(dir) = env(DATA_DIR_ENV) {
        return Ok(PathBuf::from(dir));
    }
    if let Some(xdg) = env("XDG_DATA_HOME") {
        return Ok(PathBuf::from(xdg).join("ytcaption"));
    }
    env("HOME")
        .map(|home| PathBuf::from(home).join(".local/share/ytcaption"))
        .ok_or(ConfigError::NoDataDir)
}

fn models_dir_from(
    explicit: Option<&Path>,
    data_dir: &Path,
    env: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> PathBuf {
    explicit
        .map(Path::to_path_buf)
        .or_else(|| env(MODELS_DIR_ENV).map(PathBuf::from))
        .unwrap_or_else(|| data_dir.join("models"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::ffi::OsString;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn data_dir_prefers_explicit_then_env_then_xdg_then_home() {
        let all = env_of(&[
            (DATA_DIR_ENV, "/env"),
            ("XDG_DATA_HOME", "/xdg"),
            ("HOME", "/h"),
        ]);
        assert_eq!(
            data_dir_from(Some(Path::new("/x")), &all).unwrap(),
            Path::new("/x")
        );
        assert_eq!(data_dir_from(None, &all).unwrap(), Path::new("/env"));
        let xdg = env_of(&[("XDG_DATA_HOME", "/xdg"), ("HOME", "/h")]);
        assert_eq!(
            data_dir_from(None, &xdg).unwrap(),
            Path::new("/xdg/ytcaption")
        );
        let home = env_of(&[("HOME", "/h")]);
        assert_eq!(
            data_dir_from(None, &home).unwrap(),
            Path::new("/h/.local/share/ytcaption")
        );
        assert!(matches!(
            data_dir_from(None, env_of(&[])),
            Err(ConfigError::NoDataDir)
        ));
    }

    #[test]
    fn models_dir_prefers_explicit_then_env_then_data_dir() {
        let env = env_of(&[(MODELS_DIR_ENV, "/m")]);
        let data = Path::new("/d");
        assert_eq!(
            models_dir_from(Some(Path::new("/x")), data, &env),
            Path::new("/x")
        );
        assert_eq!(models_dir_from(None, data, &env), Path::new("/m"));
        assert_eq!(
            models_dir_from(None, data, env_of(&[])),
            Path::new("/d/models")
        );
    }
}
