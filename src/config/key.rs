//! Where the API key comes from and how it is read: the systemd credential
//! [`CREDENTIAL_NAME`] when present, else the configured file or
//! environment variable. The key never lives in the config file.

use std::path::{Path, PathBuf};

use super::{CREDENTIAL_NAME, PatchkitSettings};
use crate::patchkit::ApiKey;

/// Where the API key comes from. A systemd credential named
/// [`CREDENTIAL_NAME`] takes precedence over both when present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// An environment variable, by name.
    Env(String),
    /// A file holding the key (surrounding white space is ignored).
    File(PathBuf),
}

/// Where a loaded key came from, for logs and `check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOrigin {
    Credential(PathBuf),
    Env(String),
    File(PathBuf),
}

impl std::fmt::Display for KeyOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyOrigin::Credential(p) => write!(f, "systemd credential {}", p.display()),
            KeyOrigin::Env(name) => write!(f, "environment variable {name}"),
            KeyOrigin::File(p) => write!(f, "file {}", p.display()),
        }
    }
}

/// Why the API key could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "the API key environment variable {name} is not set or is empty; set it, or name a key \
         file with api_key_file in [patchkit], or provide the systemd credential {CREDENTIAL_NAME}"
    )]
    EnvMissing { name: String },
    // The cause is part of the message (logs show it), so it is not also
    // a `source`: printed as a chain, it would appear twice.
    #[error(
        "cannot read the API key from {}: {cause}; check that the file exists and is readable \
         by the daemon's user",
        path.display()
    )]
    Unreadable {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("the API key file {} is empty; write the key from your PatchKit account page into it", path.display())]
    Empty { path: PathBuf },
}

impl PatchkitSettings {
    /// Reads the API key from the process environment.
    pub fn load_key(&self) -> Result<(ApiKey, KeyOrigin), KeyError> {
        self.load_key_with(|name| std::env::var(name).ok())
    }

    /// Reads the API key, looking variables up through `env` (tests pass
    /// their own). Order: the systemd credential in `$CREDENTIALS_DIRECTORY`
    /// when present, then the configured source.
    pub fn load_key_with(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(ApiKey, KeyOrigin), KeyError> {
        if let Some(dir) = env("CREDENTIALS_DIRECTORY").filter(|d| !d.is_empty()) {
            let path = Path::new(&dir).join(CREDENTIAL_NAME);
            if path.exists() {
                let key = read_key_file(&path)?;
                return Ok((key, KeyOrigin::Credential(path)));
            }
        }
        match &self.key_source {
            KeySource::Env(name) => env(name)
                .and_then(ApiKey::new)
                .map(|key| (key, KeyOrigin::Env(name.clone())))
                .ok_or_else(|| KeyError::EnvMissing { name: name.clone() }),
            KeySource::File(path) => {
                let key = read_key_file(path)?;
                Ok((key, KeyOrigin::File(path.clone())))
            }
        }
    }
}

/// Reads the API key from a systemd credential's source file: the bytes
/// systemd copies into `$CREDENTIALS_DIRECTORY`, read the same way the
/// daemon reads them there. For `check --as-service`.
pub fn load_credential(path: &Path) -> Result<(ApiKey, KeyOrigin), KeyError> {
    let key = read_key_file(path)?;
    Ok((key, KeyOrigin::Credential(path.to_owned())))
}

fn read_key_file(path: &Path) -> Result<ApiKey, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|cause| KeyError::Unreadable {
        path: path.to_owned(),
        cause,
    })?;
    ApiKey::new(text).ok_or_else(|| KeyError::Empty {
        path: path.to_owned(),
    })
}
