//! Values derived from the configuration: resolved directories, the public URL and the
//! automatic worker and thread counts. Kept apart from the schema so the structs stay plain data.

use std::path::PathBuf;

use crate::dirs::ConfigError;
use crate::schema::Config;

impl Config {
    /// The data directory: `data_dir`, else `YTCAPTION_DATA_DIR`, XDG data home, `~/.local/share`.
    pub fn data_dir(&self) -> Result<PathBuf, ConfigError> {
        crate::dirs::data_dir(self.data_dir.as_deref())
    }

    /// The models directory: `models_dir`, else `YTCAPTION_MODELS_DIR`, else `<data dir>/models`.
    pub fn models_dir(&self) -> Result<PathBuf, ConfigError> {
        Ok(crate::dirs::models_dir(
            self.models_dir.as_deref(),
            &self.data_dir()?,
        ))
    }

    /// The local blob directory: `storage.local.path`, else `<data dir>/blobs`.
    pub fn blob_dir(&self) -> Result<PathBuf, ConfigError> {
        match &self.storage.local.path {
            Some(path) => Ok(path.clone()),
            None => Ok(self.data_dir()?.join("blobs")),
        }
    }

    /// Base URL for links handed to clients, without a trailing slash: `http.public_url`, else
    /// `http://<http.listen>`.
    pub fn public_url(&self) -> String {
        match &self.http.public_url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => format!("http://{}", self.http.listen),
        }
    }

    /// Parallel transcriptions on a machine with `cores` cores (see [`crate::Transcriber`]).
    pub fn transcriber_workers(&self, cores: usize) -> usize {
        self.transcriber.workers_for(cores)
    }

    /// Inference threads per transcription worker on a machine with `cores` cores.
    pub fn transcriber_threads(&self, cores: usize) -> usize {
        self.transcriber.threads_for(cores)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn directories_follow_the_config_first() {
        let mut config = Config {
            data_dir: Some("/srv/yt".into()),
            ..Config::default()
        };
        assert_eq!(config.data_dir().unwrap(), Path::new("/srv/yt"));
        assert_eq!(config.blob_dir().unwrap(), Path::new("/srv/yt/blobs"));
        config.models_dir = Some("/models".into());
        assert_eq!(config.models_dir().unwrap(), Path::new("/models"));
        config.storage.local.path = Some("/blobs".into());
        assert_eq!(config.blob_dir().unwrap(), Path::new("/blobs"));
    }

    #[test]
    fn public_url_defaults_to_the_listen_address() {
        let mut config = Config::default();
        assert_eq!(config.public_url(), "http://127.0.0.1:8080");
        config.http.listen = "[::1]:9000".parse().unwrap();
        assert_eq!(config.public_url(), "http://[::1]:9000");
        config.http.public_url = Some("https://captions.example.com/".into());
        assert_eq!(config.public_url(), "https://captions.example.com");
    }

    #[test]
    fn worker_and_thread_helpers_delegate() {
        let mut config = Config::default();
        config.transcriber.threads = 4;
        assert_eq!(config.transcriber_threads(16), 4);
        assert_eq!(config.transcriber_workers(16), 4);
    }
}
