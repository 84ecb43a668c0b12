//! The systemd unit as `check --as-service` sees it: which files make up
//! `patchkit-autopublish.service` (the unit and its drop-ins), where its
//! `LoadCredential=` takes the API key from, and which config its
//! `ExecStart=` names.
//!
//! It reads the unit files as text, the way systemd merges them, and does
//! not ask systemd: `check` must work before the unit is enabled, and on a
//! machine (a container, an image being built) where systemd does not run.
//! It knows only the few directives it reads; `systemd-analyze verify`
//! checks the rest.

use std::path::{Path, PathBuf};

use crate::config::CREDENTIAL_NAME;

/// The unit's file name.
pub const UNIT_NAME: &str = "patchkit-autopublish.service";

/// Where systemd looks for system units, the one that wins first
/// (systemd.unit(5), "System Unit Search Path").
const UNIT_DIRS: &[&str] = &[
    "/etc/systemd/system",
    "/run/systemd/system",
    "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
];

/// Where a `LoadCredential=` without an absolute path is looked up
/// (systemd.exec(5), "Credentials"), in order.
const CREDSTORE_DIRS: &[&str] = &["/etc/credstore", "/run/credstore", "/usr/lib/credstore"];

/// What the unit says about the key and the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceUnit {
    /// The files read, in the order systemd applies them: the unit, then
    /// its drop-ins by file name.
    pub files: Vec<PathBuf>,
    /// The `LoadCredential=` source of the credential
    /// [`CREDENTIAL_NAME`] as written (an empty string when only the id is
    /// given), and the file that set it last.
    pub credential: Option<(String, PathBuf)>,
    /// The `--config` (or `-c`) argument of `ExecStart=`, when it has one.
    pub config: Option<PathBuf>,
}

/// Why the unit could not be read.
#[derive(Debug, thiserror::Error)]
pub enum UnitError {
    #[error(
        "{UNIT_NAME} is not installed (looked in {}); install the package or copy the unit \
         first, or name a unit file with --unit",
        UNIT_DIRS.join(", ")
    )]
    NotInstalled,
    #[error("{} masks the unit (a link to /dev/null); `systemctl unmask {UNIT_NAME}` first", path.display())]
    Masked { path: PathBuf },
    #[error("cannot read the unit file {}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ServiceUnit {
    /// The installed unit: the first `patchkit-autopublish.service` on
    /// systemd's search path, with every drop-in
    /// (`patchkit-autopublish.service.d/*.conf` and `service.d/*.conf`).
    pub fn installed() -> Result<Self, UnitError> {
        let main = UNIT_DIRS
            .iter()
            .map(|dir| Path::new(dir).join(UNIT_NAME))
            .find(|path| path.symlink_metadata().is_ok())
            .ok_or(UnitError::NotInstalled)?;
        if std::fs::canonicalize(&main).is_ok_and(|p| p == Path::new("/dev/null")) {
            return Err(UnitError::Masked { path: main });
        }
        let dropin_dirs: Vec<PathBuf> = UNIT_DIRS
            .iter()
            .flat_map(|dir| {
                [
                    Path::new(dir).join(format!("{UNIT_NAME}.d")),
                    Path::new(dir).join("service.d"),
                ]
            })
            .collect();
        let mut files = vec![main];
        files.extend(dropins(&dropin_dirs));
        Self::read(files)
    }

    /// A unit file given by path, with the drop-ins in `FILE.d/` beside it.
    pub fn from_file(path: &Path) -> Result<Self, UnitError> {
        let mut dir = path.as_os_str().to_owned();
        dir.push(".d");
        let mut files = vec![path.to_owned()];
        files.extend(dropins(&[PathBuf::from(dir)]));
        Self::read(files)
    }

    fn read(files: Vec<PathBuf>) -> Result<Self, UnitError> {
        let mut unit = ServiceUnit {
            files: Vec::new(),
            credential: None,
            config: None,
        };
        for path in files {
            let text = std::fs::read_to_string(&path).map_err(|source| UnitError::Unreadable {
                path: path.clone(),
                source,
            })?;
            unit.apply(&path, &text);
            unit.files.push(path);
        }
        Ok(unit)
    }

    /// Applies one file's `[Service]` settings over what came before.
    fn apply(&mut self, path: &Path, text: &str) {
        for (key, value) in service_settings(text) {
            match key.as_str() {
                // An empty assignment resets the list (systemd.exec(5)).
                "LoadCredential" if value.is_empty() => self.credential = None,
                "LoadCredential" => {
                    let (id, source) = value.split_once(':').unwrap_or((value.as_str(), ""));
                    if id == CREDENTIAL_NAME {
                        self.credential = Some((source.to_owned(), path.to_owned()));
                    }
                }
                "ExecStart" if value.is_empty() => self.config = None,
                "ExecStart" => self.config = config_argument(&value),
                _ => {}
            }
        }
    }

    /// The file systemd will load the key from, with the specifiers this
    /// unit may use resolved, or why it cannot be told.
    pub fn credential_path(&self) -> Option<Result<PathBuf, String>> {
        let (source, _) = self.credential.as_ref()?;
        let source = match resolve_specifiers(source) {
            Ok(source) => source,
            Err(err) => return Some(Err(err)),
        };
        if source.starts_with('/') {
            return Some(Ok(PathBuf::from(source)));
        }
        // A relative source (or none) names a file in the credential store.
        let name = if source.is_empty() {
            CREDENTIAL_NAME
        } else {
            &source
        };
        let found = CREDSTORE_DIRS
            .iter()
            .map(|dir| Path::new(dir).join(name))
            .find(|path| path.exists());
        Some(found.ok_or_else(|| {
            format!(
                "LoadCredential= names {name:?} in the credential store, and none of {} holds \
                 it",
                CREDSTORE_DIRS.join(", ")
            )
        }))
    }
}

/// The `.conf` files of `dirs`, sorted by file name; of two with one name,
/// the one in the earlier directory wins (systemd.unit(5)).
fn dropins(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut by_name = std::collections::BTreeMap::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if Path::new(&name).extension().is_some_and(|e| e == "conf") {
                by_name.entry(name).or_insert_with(|| entry.path());
            }
        }
    }
    by_name
        .into_values()
        .filter(|path| !std::fs::canonicalize(path).is_ok_and(|p| p == Path::new("/dev/null")))
        .collect()
}

/// The `key=value` lines of the `[Service]` sections, in order, with
/// continuation lines joined and comments dropped.
fn service_settings(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut in_service = false;
    let mut pending = String::new();
    for raw in text.lines() {
        let line = raw.trim();
        if pending.is_empty() && (line.starts_with('#') || line.starts_with(';')) {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        let line = std::mem::take(&mut pending);
        if line.starts_with('[') {
            in_service = line == "[Service]";
            continue;
        }
        if !in_service {
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            out.push((key.trim().to_owned(), value.trim().to_owned()));
        }
    }
    out
}

/// The `--config FILE`, `--config=FILE` or `-c FILE` of an `ExecStart=`.
fn config_argument(exec: &str) -> Option<PathBuf> {
    let words: Vec<&str> = exec
        .split_whitespace()
        .map(|w| w.trim_matches('"'))
        .collect();
    words.iter().enumerate().find_map(|(i, word)| {
        if let Some(path) = word.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
        match *word {
            "--config" | "-c" => words.get(i + 1).map(PathBuf::from),
            _ => None,
        }
    })
}

/// Resolves the specifiers a credential path of a system unit may use
/// (systemd.unit(5), "Specifiers"); any other is reported, not guessed.
fn resolve_specifiers(value: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some('E') => out.push_str("/etc"),
            Some('S') => out.push_str("/var/lib"),
            Some('L') => out.push_str("/var/log"),
            Some('t') => out.push_str("/run"),
            Some('C') => out.push_str("/var/cache"),
            other => {
                return Err(format!(
                    "LoadCredential={CREDENTIAL_NAME}:{value} uses the specifier %{}, which \
                     check cannot resolve; give the file with --credential",
                    other.map(String::from).unwrap_or_default()
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(texts: &[&str]) -> ServiceUnit {
        let mut unit = ServiceUnit {
            files: Vec::new(),
            credential: None,
            config: None,
        };
        for (i, text) in texts.iter().enumerate() {
            unit.apply(Path::new(&format!("file-{i}")), text);
        }
        unit
    }

    #[test]
    fn reads_the_credential_and_the_config_of_the_service_section() {
        let u = unit(&["[Unit]\nLoadCredential=patchkit-api-key:/wrong\n\
             [Service]\n# LoadCredential=patchkit-api-key:/commented\n\
             ExecStart=/usr/bin/patchkit-autopublish run \\\n  --config /etc/p/config.toml\n\
             LoadCredential=other:/x\nLoadCredential=patchkit-api-key:%E/p/api-key\n"]);
        assert_eq!(u.config, Some(PathBuf::from("/etc/p/config.toml")));
        assert_eq!(
            u.credential_path(),
            Some(Ok(PathBuf::from("/etc/p/api-key")))
        );
    }

    #[test]
    fn a_dropin_overrides_and_an_empty_assignment_resets() {
        let u = unit(&[
            "[Service]\nLoadCredential=patchkit-api-key:/a\nExecStart=/bin/x run -c /c1\n",
            "[Service]\nLoadCredential=patchkit-api-key:/b\nExecStart=\nExecStart=/bin/x run --config=/c2\n",
        ]);
        assert_eq!(u.credential, Some(("/b".into(), PathBuf::from("file-1"))));
        assert_eq!(u.config, Some(PathBuf::from("/c2")));
        let u = unit(&[
            "[Service]\nLoadCredential=patchkit-api-key:/a\n",
            "[Service]\nLoadCredential=\n",
        ]);
        assert_eq!(u.credential, None);
        assert_eq!(u.credential_path(), None);
    }

    #[test]
    fn an_unknown_specifier_is_reported_not_guessed() {
        let u = unit(&["[Service]\nLoadCredential=patchkit-api-key:%h/key\n"]);
        let err = u.credential_path().unwrap().unwrap_err();
        assert!(err.contains("%h"), "{err}");
    }
}
