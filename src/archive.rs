//! ZIP validation before any API call.
//!
//! PatchKit takes one ZIP whose entries are stored (method 0) or deflated
//! (method 8); anything else fails on the server after a full upload, or
//! worse, publishes a broken build. This module reads only the central
//! directory (no decompression, so a 20 GiB build is checked in
//! milliseconds) and names the file, the entry and the method of every
//! refusal, with what to do about it.
//!
//! Entry names are checked by this module's own rules ([`check_entry_name`]),
//! not by the zip crate's `enclosed_name`, which quietly strips a leading
//! `/` or `C:\` instead of refusing it: an entry that an extractor could
//! write outside the install folder, or that names a different file on
//! Windows than on Linux, is refused by name.
//!
//! It knows ZIP and files; nothing about rules, the store or the API.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use zip::CompressionMethod;
use zip::result::ZipError;

/// What a valid archive holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveSummary {
    /// Number of entries (files and folders).
    pub entries: usize,
    /// Sum of the entries' uncompressed sizes.
    pub uncompressed_size: u64,
    /// Things that do not stop the build but may trouble PatchKit, one
    /// sentence each, naming the entry (e.g. names outside printable ASCII).
    pub warnings: Vec<String>,
}

/// Why an entry name is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameProblem {
    /// The name is empty.
    Empty,
    /// The name starts with `/` or `\`: an absolute (or UNC) path.
    Absolute,
    /// The name starts with a drive letter (`C:\`, `C:/`, `C:evil`).
    DriveLetter,
    /// The name uses `\` as a separator, which Linux and macOS extractors
    /// keep as part of a file name.
    Backslash,
    /// A component of the name is `..`.
    ParentComponent,
    /// The name holds a control character (below 0x20, or 0x7F).
    ControlCharacter,
}

impl std::fmt::Display for NameProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NameProblem::Empty => "has an empty name",
            NameProblem::Absolute => {
                "has an absolute path that would land outside the install folder"
            }
            NameProblem::DriveLetter => {
                "starts with a drive letter that would land outside the install folder"
            }
            NameProblem::Backslash => {
                "uses backslashes as folder separators, which are part of the file name on \
                 Linux and macOS (ZIP paths use forward slashes)"
            }
            NameProblem::ParentComponent => {
                "has a parent-relative (..) path that would land outside the install folder"
            }
            NameProblem::ControlCharacter => "has a control character in its name",
        })
    }
}

/// Why a file is not a build PatchKit can take.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is empty (0 bytes); drop a complete ZIP of the build", path.display())]
    EmptyFile { path: PathBuf },
    #[error(
        "{} is not a ZIP archive ({detail}); PatchKit needs the build as one ZIP file",
        path.display()
    )]
    NotZip { path: PathBuf, detail: String },
    #[error(
        "{} looks truncated: it starts like a ZIP but its central directory is missing or \
         damaged ({detail}); the copy was probably cut short, drop the complete file again",
        path.display()
    )]
    Truncated { path: PathBuf, detail: String },
    #[error("{} is a ZIP with no entries; the build is empty", path.display())]
    NoEntries { path: PathBuf },
    #[error(
        "{}: entry {entry:?} is encrypted; PatchKit cannot process encrypted archives, re-zip \
         the build without a password",
        path.display()
    )]
    Encrypted { path: PathBuf, entry: String },
    #[error(
        "{}: entry {entry:?} is compressed with {} (method {method}); PatchKit accepts only STORE \
         and DEFLATE, re-zip with DEFLATE (e.g. `zip -r -Z deflate`, or 7-Zip with -mm=Deflate)",
        path.display(),
        method_name(*method)
    )]
    UnsupportedMethod {
        path: PathBuf,
        entry: String,
        method: u16,
    },
    #[error(
        "{}: entry {entry:?} {problem}; re-zip the build from its root folder with a tool \
         that writes relative paths with forward slashes (e.g. `zip -r`, 7-Zip, or \
         PowerShell 7's Compress-Archive)",
        path.display()
    )]
    UnsafeEntryName {
        path: PathBuf,
        entry: String,
        problem: NameProblem,
    },
}

/// A readable name for a ZIP compression method number.
pub fn method_name(method: u16) -> &'static str {
    match method {
        0 => "STORE",
        1 => "SHRINK",
        6 => "IMPLODE",
        8 => "DEFLATE",
        9 => "DEFLATE64",
        12 => "BZIP2",
        14 => "LZMA",
        93 => "ZSTD",
        95 => "XZ",
        96 => "JPEG",
        97 => "WAVPACK",
        98 => "PPMD",
        99 => "AES encryption",
        _ => "an unknown method",
    }
}

/// The method number of a compression method as the zip crate reports it.
fn method_number(method: CompressionMethod) -> u16 {
    // `to_u16` is deprecated in favour of comparing against constants, but
    // the error message needs the number of *any* method, known or not.
    #[allow(deprecated)]
    method.to_u16()
}

/// Checks an entry name, as its raw bytes from the central directory, by
/// rules that hold on every platform an installer may extract to. Names are
/// judged as written, never after stripping a prefix.
pub fn check_entry_name(raw: &[u8]) -> Result<(), NameProblem> {
    if raw.is_empty() {
        return Err(NameProblem::Empty);
    }
    if raw.iter().any(|b| *b < 0x20 || *b == 0x7f) {
        return Err(NameProblem::ControlCharacter);
    }
    if raw[0] == b'/' || raw[0] == b'\\' {
        return Err(NameProblem::Absolute);
    }
    if raw.len() >= 2 && raw[0].is_ascii_alphabetic() && raw[1] == b':' {
        return Err(NameProblem::DriveLetter);
    }
    if raw.contains(&b'\\') {
        return Err(NameProblem::Backslash);
    }
    if raw.split(|b| *b == b'/').any(|part| part == b"..") {
        return Err(NameProblem::ParentComponent);
    }
    Ok(())
}

/// Whether an entry name is printable ASCII only. PatchKit's upload widget
/// refuses other names; what the server does with them is not documented,
/// so they are a warning, not a refusal.
fn is_printable_ascii(name: &str) -> bool {
    name.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// Checks that `path` is a ZIP PatchKit can take: readable, not truncated,
/// at least one entry, no encryption, only STORE and DEFLATE, no entry
/// escaping the install folder. ZIP64 archives (over 4 GiB or 65,535
/// entries) are fine. Blocking: run it off the async threads.
pub fn validate(path: &Path) -> Result<ArchiveSummary, ArchiveError> {
    let io = |source| ArchiveError::Io {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    if len == 0 {
        return Err(ArchiveError::EmptyFile {
            path: path.to_owned(),
        });
    }
    let mut head = [0u8; 4];
    let starts_like_zip = {
        let mut f = &file;
        f.read_exact(&mut head).is_ok() && head == *b"PK\x03\x04"
    };
    let file = File::open(path).map_err(io)?;
    let archive = match zip::ZipArchive::new(BufReader::new(file)) {
        Ok(a) => a,
        Err(ZipError::Io(source)) if source.kind() != std::io::ErrorKind::UnexpectedEof => {
            return Err(io(source));
        }
        Err(err) => {
            let detail = err.to_string();
            return Err(if starts_like_zip {
                ArchiveError::Truncated {
                    path: path.to_owned(),
                    detail,
                }
            } else {
                ArchiveError::NotZip {
                    path: path.to_owned(),
                    detail,
                }
            });
        }
    };
    if archive.is_empty() {
        return Err(ArchiveError::NoEntries {
            path: path.to_owned(),
        });
    }
    let mut uncompressed_size = 0u64;
    let mut warnings = Vec::new();
    for index in 0..archive.len() {
        let entry = archive
            .by_index_data(index)
            .map_err(|err| ArchiveError::Truncated {
                path: path.to_owned(),
                detail: err.to_string(),
            })?;
        let name = String::from_utf8_lossy(entry.name_raw()).into_owned();
        if entry.encrypted() {
            return Err(ArchiveError::Encrypted {
                path: path.to_owned(),
                entry: name,
            });
        }
        let method = method_number(entry.compression());
        if method != 0 && method != 8 {
            return Err(ArchiveError::UnsupportedMethod {
                path: path.to_owned(),
                entry: name,
                method,
            });
        }
        // The raw bytes are what an extractor sees; the decoded name (UTF-8
        // when the entry's flag says so, CP437 otherwise) is checked too, as
        // a decoder may turn bytes into characters the rules refuse.
        let decoded = entry
            .name()
            .map(|n| n.into_owned())
            .unwrap_or_else(|_| String::from_utf8_lossy(entry.name_raw()).into_owned());
        if let Err(problem) =
            check_entry_name(entry.name_raw()).and_then(|()| check_entry_name(decoded.as_bytes()))
        {
            return Err(ArchiveError::UnsafeEntryName {
                path: path.to_owned(),
                entry: name,
                problem,
            });
        }
        if !is_printable_ascii(&decoded) || !entry.name_raw().is_ascii() {
            warnings.push(format!(
                "{}: entry {decoded:?} has characters outside printable ASCII; PatchKit's \
                 upload widget refuses such names and its processing may too: if the version \
                 fails or installs wrongly, rename the file in the build",
                path.display()
            ));
        }
        uncompressed_size = uncompressed_size.saturating_add(entry.size());
    }
    Ok(ArchiveSummary {
        entries: archive.len(),
        uncompressed_size,
        warnings,
    })
}
