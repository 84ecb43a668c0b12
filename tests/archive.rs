//! ZIP validation: every kind of bad build is refused with a message naming
//! the file, the entry and the method; good ones, ZIP64 included, pass.

use std::io::Write;
use std::path::{Path, PathBuf};

use patchkit_autopublish::archive::{ArchiveError, validate};
use zip::CompressionMethod;
use zip::write::{SimpleFileOptions, ZipWriter};

fn write_zip(
    dir: &Path,
    name: &str,
    entries: &[(&str, &[u8])],
    method: CompressionMethod,
) -> PathBuf {
    let path = dir.join(name);
    let mut zip = ZipWriter::new(std::fs::File::create(&path).unwrap());
    let options = SimpleFileOptions::default().compression_method(method);
    for (entry, data) in entries {
        zip.start_file(*entry, options).unwrap();
        zip.write_all(data).unwrap();
    }
    zip.finish().unwrap();
    path
}

/// Rewrites a field of every local and central header, the way a ZIP made by
/// another tool would carry it.
fn patch_headers(path: &Path, local_offset: usize, central_offset: usize, value: u16) {
    let mut bytes = std::fs::read(path).unwrap();
    let mut i = 0;
    while i + 4 <= bytes.len() {
        let at = match &bytes[i..i + 4] {
            b"PK\x03\x04" => Some(i + local_offset),
            b"PK\x01\x02" => Some(i + central_offset),
            _ => None,
        };
        if let Some(at) = at {
            bytes[at..at + 2].copy_from_slice(&value.to_le_bytes());
        }
        i += 1;
    }
    std::fs::write(path, bytes).unwrap();
}

fn set_method(path: &Path, method: u16) {
    patch_headers(path, 8, 10, method);
}

#[test]
fn stored_and_deflated_archives_pass() {
    let dir = tempfile::tempdir().unwrap();
    let stored = write_zip(
        dir.path(),
        "s.zip",
        &[("a.txt", b"hello"), ("dir/b.bin", &[7; 100])],
        CompressionMethod::Stored,
    );
    let summary = validate(&stored).unwrap();
    assert_eq!(summary.entries, 2);
    assert_eq!(summary.uncompressed_size, 105);
    let deflated = write_zip(
        dir.path(),
        "d.zip",
        &[("a.txt", &[b'x'; 5000])],
        CompressionMethod::Deflated,
    );
    assert_eq!(validate(&deflated).unwrap().entries, 1);
}

#[test]
fn deflate64_is_named_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_zip(
        dir.path(),
        "game.zip",
        &[("data/level1.pak", b"payload")],
        CompressionMethod::Stored,
    );
    set_method(&path, 9);
    let err = validate(&path).unwrap_err();
    assert!(
        matches!(err, ArchiveError::UnsupportedMethod { method: 9, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("game.zip"), "{msg}");
    assert!(msg.contains("data/level1.pak"), "{msg}");
    assert!(msg.contains("DEFLATE64"), "{msg}");
    assert!(msg.contains("method 9"), "{msg}");
    assert!(msg.contains("re-zip with DEFLATE"), "{msg}");
}

#[test]
fn other_methods_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    for (method, name) in [
        (12u16, "BZIP2"),
        (14, "LZMA"),
        (93, "ZSTD"),
        (95, "XZ"),
        (98, "PPMD"),
    ] {
        let path = write_zip(
            dir.path(),
            &format!("m{method}.zip"),
            &[("f", b"x")],
            CompressionMethod::Stored,
        );
        set_method(&path, method);
        let msg = validate(&path).unwrap_err().to_string();
        assert!(
            msg.contains(name) && msg.contains(&format!("method {method}")),
            "{msg}"
        );
    }
}

#[test]
fn encrypted_entries_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_zip(
        dir.path(),
        "enc.zip",
        &[("secret.dat", b"x")],
        CompressionMethod::Stored,
    );
    // General purpose flag bit 0: the entry is encrypted.
    patch_headers(&path, 6, 8, 1);
    let err = validate(&path).unwrap_err();
    assert!(matches!(err, ArchiveError::Encrypted { .. }), "{err:?}");
    assert!(err.to_string().contains("secret.dat"));
}

#[test]
fn not_a_zip_truncated_and_empty_files_are_told_apart() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.zip");
    std::fs::write(&text, "this is a text file, not an archive").unwrap();
    assert!(matches!(
        validate(&text).unwrap_err(),
        ArchiveError::NotZip { .. }
    ));

    let good = write_zip(
        dir.path(),
        "t.zip",
        &[("a", &[1; 4096]), ("b", &[2; 4096])],
        CompressionMethod::Stored,
    );
    let bytes = std::fs::read(&good).unwrap();
    let cut = dir.path().join("cut.zip");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = validate(&cut).unwrap_err();
    assert!(matches!(err, ArchiveError::Truncated { .. }), "{err:?}");
    assert!(err.to_string().contains("cut short"));

    let empty_file = dir.path().join("zero.zip");
    std::fs::write(&empty_file, b"").unwrap();
    assert!(matches!(
        validate(&empty_file).unwrap_err(),
        ArchiveError::EmptyFile { .. }
    ));

    let no_entries = write_zip(dir.path(), "none.zip", &[], CompressionMethod::Stored);
    assert!(matches!(
        validate(&no_entries).unwrap_err(),
        ArchiveError::NoEntries { .. }
    ));

    let missing = validate(&dir.path().join("gone.zip")).unwrap_err();
    assert!(matches!(missing, ArchiveError::Io { .. }));
}

#[test]
fn entries_escaping_the_install_folder_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_zip(
        dir.path(),
        "evil.zip",
        &[("../../etc/passwd", b"x")],
        CompressionMethod::Stored,
    );
    let err = validate(&path).unwrap_err();
    assert!(
        matches!(err, ArchiveError::UnsafeEntryName { .. }),
        "{err:?}"
    );
}

#[test]
fn zip64_archives_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    // More than 65,535 entries forces the ZIP64 end of central directory.
    let path = dir.path().join("many.zip");
    let mut zip = ZipWriter::new(std::io::BufWriter::new(
        std::fs::File::create(&path).unwrap(),
    ));
    let options = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
    for i in 0..65_600u32 {
        zip.start_file(format!("f/{i}"), options).unwrap();
    }
    zip.finish().unwrap();
    assert_eq!(validate(&path).unwrap().entries, 65_600);

    // Per-entry ZIP64 extra fields, as written for files over 4 GiB.
    let path = dir.path().join("large.zip");
    let mut zip = ZipWriter::new(std::fs::File::create(&path).unwrap());
    let options = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        .large_file(true);
    zip.start_file("big.bin", options).unwrap();
    zip.write_all(&[0; 10_000]).unwrap();
    zip.finish().unwrap();
    assert_eq!(validate(&path).unwrap().entries, 1);
}
