//! What processing finds in an assembled upload.
//!
//! Owns the content checks PatchKit performs: the SHA-256 and size of the
//! file, and whether it is a ZIP whose entries all use STORE or DEFLATE. It
//! reads only the central directory, as the service's first check does, and
//! knows nothing about versions, jobs or HTTP.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use sha2::{Digest, Sha256};
use zip::{CompressionMethod, ZipArchive};

/// The result of checking one assembled upload.
#[derive(Debug, Clone)]
pub(crate) struct Analysis {
    /// Lowercase hex SHA-256 of the whole file.
    pub sha256: String,
    /// Size of the file in bytes.
    pub size: u64,
    /// One processing error message per problem found; empty when the file
    /// is an acceptable ZIP.
    pub errors: Vec<String>,
}

/// Hashes the file and checks its ZIP structure.
pub(crate) fn analyze(path: &Path) -> io::Result<Analysis> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    // A 1 MiB buffer keeps hashing of large builds fast without holding the
    // file in memory.
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok(Analysis {
        sha256: crate::patchkit::lower_hex(&hasher.finalize()),
        size,
        errors: zip_errors(File::open(path)?),
    })
}

fn zip_errors(file: File) -> Vec<String> {
    let Ok(mut archive) = ZipArchive::new(file) else {
        return vec!["not a ZIP archive".to_owned()];
    };
    let mut errors = Vec::new();
    for i in 0..archive.len() {
        match archive.by_index_raw(i) {
            Ok(entry) => {
                let method = entry.compression();
                if method != CompressionMethod::STORE && method != CompressionMethod::DEFLATE {
                    errors.push(format!(
                        "entry {} uses compression method {}, which PatchKit does not support",
                        entry
                            .name()
                            .map_or_else(|_| format!("#{i}"), |n| n.into_owned()),
                        describe(method)
                    ));
                }
            }
            Err(e) => errors.push(format!("entry #{i} of the ZIP cannot be read: {e}")),
        }
    }
    errors
}

/// "9 (DEFLATE64)": the number a ZIP tool shows and the name a user knows.
fn describe(method: CompressionMethod) -> String {
    // `to_u16` is deprecated in favour of matching on constants, but the
    // message must name any method, including ones this build of `zip` has
    // no constant for.
    #[allow(deprecated)]
    let code = method.to_u16();
    match CompressionMethod::name_from_u16(code) {
        "Unknown" => code.to_string(),
        name => format!("{code} ({})", name.to_uppercase()),
    }
}
