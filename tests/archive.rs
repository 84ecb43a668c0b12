//! ZIP validation: every kind of bad build is refused with a message naming
//! the file, the entry and the method; good ones, ZIP64 included, pass.

use std::io::Write;
use std::path::{Path, PathBuf};

use patchkit_autopublish::archive::{ArchiveError, NameProblem, validate};
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
        matches!(
            err,
            ArchiveError::UnsafeEntryName {
                problem: NameProblem::ParentComponent,
                ..
            }
        ),
        "{err:?}"
    );
}

/// One entry of a ZIP written byte by byte, the way a tool other than the
/// zip crate writes it: its name bytes as they are, its flags (bit 11: the
/// name is UTF-8) and its "version made by" (high byte: 0 MS-DOS/FAT,
/// 3 Unix, 10 NTFS).
struct RawEntry<'a> {
    name: &'a [u8],
    flags: u16,
    made_by: u16,
    data: &'a [u8],
}

/// CRC-32 (IEEE), as ZIP headers carry it.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A STORE-only ZIP: a local header and data per entry, then the central
/// directory and its end record, with every name exactly as given.
fn raw_zip(dir: &Path, file: &str, entries: &[RawEntry]) -> PathBuf {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for e in entries {
        let offset = out.len() as u32;
        let crc = crc32(e.data);
        let size = e.data.len() as u32;
        // Local file header.
        out.extend_from_slice(b"PK\x03\x04");
        out.extend_from_slice(&20u16.to_le_bytes()); // version needed
        out.extend_from_slice(&e.flags.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes()); // STORE
        out.extend_from_slice(&0x6000u16.to_le_bytes()); // time 12:00
        out.extend_from_slice(&0x5921u16.to_le_bytes()); // date 2024-09-01
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes()); // extra length
        out.extend_from_slice(e.name);
        out.extend_from_slice(e.data);
        // Central directory header.
        central.extend_from_slice(b"PK\x01\x02");
        central.extend_from_slice(&e.made_by.to_le_bytes());
        central.extend_from_slice(&20u16.to_le_bytes());
        central.extend_from_slice(&e.flags.to_le_bytes());
        central.extend_from_slice(&0u16.to_le_bytes());
        central.extend_from_slice(&0x6000u16.to_le_bytes());
        central.extend_from_slice(&0x5921u16.to_le_bytes());
        central.extend_from_slice(&crc.to_le_bytes());
        central.extend_from_slice(&size.to_le_bytes());
        central.extend_from_slice(&size.to_le_bytes());
        central.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
        central.extend_from_slice(&0u16.to_le_bytes()); // extra
        central.extend_from_slice(&0u16.to_le_bytes()); // comment
        central.extend_from_slice(&0u16.to_le_bytes()); // disk
        central.extend_from_slice(&0u16.to_le_bytes()); // internal attributes
        central.extend_from_slice(&0u32.to_le_bytes()); // external attributes
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(e.name);
    }
    let cd_offset = out.len() as u32;
    out.extend_from_slice(&central);
    // End of central directory.
    out.extend_from_slice(b"PK\x05\x06");
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    let path = dir.join(file);
    std::fs::write(&path, out).unwrap();
    path
}

/// "Version made by" values of the tools the cases come from.
const MADE_BY_UNIX: u16 = 0x031E;
const MADE_BY_FAT: u16 = 0x0014;
const MADE_BY_NTFS: u16 = 0x0A3F;
/// General purpose flag bit 11: the name is UTF-8.
const UTF8_NAME: u16 = 0x0800;

/// A build with one good entry, then `name`: the refusal must name the bad
/// entry, not just the first one.
fn build_with(dir: &Path, file: &str, name: &[u8], flags: u16, made_by: u16) -> PathBuf {
    raw_zip(
        dir,
        file,
        &[
            RawEntry {
                name: b"Game/Game.exe",
                flags: 0,
                made_by,
                data: b"MZ",
            },
            RawEntry {
                name,
                flags,
                made_by,
                data: b"payload",
            },
        ],
    )
}

fn refused(path: &Path) -> (NameProblem, String, String) {
    match validate(path) {
        Err(err @ ArchiveError::UnsafeEntryName { .. }) => {
            let msg = err.to_string();
            let ArchiveError::UnsafeEntryName { entry, problem, .. } = err else {
                unreachable!()
            };
            (problem, entry, msg)
        }
        other => panic!(
            "{} was not refused for its entry name: {other:?}",
            path.display()
        ),
    }
}

#[test]
fn an_absolute_path_is_refused_not_stripped() {
    // `bsdtar -P --format zip` keeps the leading slash of absolute paths.
    let dir = tempfile::tempdir().unwrap();
    let path = build_with(dir.path(), "abs.zip", b"/etc/evil.txt", 0, MADE_BY_UNIX);
    let (problem, entry, msg) = refused(&path);
    assert_eq!(problem, NameProblem::Absolute);
    assert_eq!(entry, "/etc/evil.txt");
    assert!(
        msg.contains("abs.zip") && msg.contains("\"/etc/evil.txt\""),
        "{msg}"
    );
    assert!(msg.contains("absolute path"), "{msg}");
    assert!(msg.contains("re-zip"), "{msg}");

    // A UNC path as a Windows script writes it.
    let path = build_with(
        dir.path(),
        "unc.zip",
        br"\\server\share\evil.dll",
        0,
        MADE_BY_FAT,
    );
    assert_eq!(refused(&path).0, NameProblem::Absolute);
}

#[test]
fn drive_letters_are_refused_whatever_the_separator() {
    let dir = tempfile::tempdir().unwrap();
    // .NET Framework's ZipFile before 4.6.1 writes backslashes; a script
    // that passes full paths as entry names keeps the drive.
    for (file, name) in [
        ("backslash.zip", &br"C:\Windows\evil.dll"[..]),
        // Python's ZipInfo("C:/Windows/evil.dll") keeps the name as given.
        ("slash.zip", b"C:/Windows/evil.dll"),
        // Drive-relative: lands in the current folder of drive C.
        ("relative.zip", b"C:evil"),
        ("lower.zip", b"d:/evil"),
    ] {
        let path = build_with(dir.path(), file, name, 0, MADE_BY_FAT);
        let (problem, entry, msg) = refused(&path);
        assert_eq!(problem, NameProblem::DriveLetter, "{file}");
        assert_eq!(entry.as_bytes(), name, "{file}");
        assert!(msg.contains("drive letter") && msg.contains(file), "{msg}");
    }
}

#[test]
fn backslash_separators_are_refused() {
    // PowerShell 5.1's Compress-Archive writes `Data\level1.pak`: on Linux
    // that is one file named with a backslash, not a folder.
    let dir = tempfile::tempdir().unwrap();
    let path = build_with(
        dir.path(),
        "ps.zip",
        br"Game\Data\level1.pak",
        0,
        MADE_BY_NTFS,
    );
    let (problem, entry, msg) = refused(&path);
    assert_eq!(problem, NameProblem::Backslash);
    assert_eq!(entry, r"Game\Data\level1.pak");
    assert!(
        msg.contains("backslashes") && msg.contains("forward slashes"),
        "{msg}"
    );
}

#[test]
fn parent_components_are_refused_anywhere_in_the_name() {
    let dir = tempfile::tempdir().unwrap();
    for name in [
        &b"../evil.txt"[..],
        b"Game/../../../home/user/.bashrc",
        b"Game/..",
    ] {
        let path = build_with(dir.path(), "dots.zip", name, 0, MADE_BY_UNIX);
        let (problem, entry, msg) = refused(&path);
        assert_eq!(problem, NameProblem::ParentComponent);
        assert_eq!(entry.as_bytes(), name);
        assert!(msg.contains("parent-relative"), "{msg}");
    }
    // A dot run inside a name is just a name.
    let ok = build_with(dir.path(), "fine.zip", b"Game/..data/a..b", 0, MADE_BY_UNIX);
    assert!(validate(&ok).unwrap().warnings.is_empty());
}

#[test]
fn control_characters_are_refused() {
    // Info-ZIP stores a file name as its bytes: a newline or an escape
    // sequence in a name made by a script goes in as it is.
    let dir = tempfile::tempdir().unwrap();
    for name in [
        &b"Game/read\nme.txt"[..],
        b"Game/\x1b[31mred.txt",
        b"Game/tab\there",
        b"Game/del\x7f",
    ] {
        let path = build_with(dir.path(), "ctl.zip", name, 0, MADE_BY_UNIX);
        let (problem, _, msg) = refused(&path);
        assert_eq!(problem, NameProblem::ControlCharacter, "{name:?}");
        assert!(msg.contains("control character"), "{msg}");
    }
}

#[test]
fn names_outside_printable_ascii_pass_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    // 7-Zip marks UTF-8 names with flag bit 11.
    let utf8 = build_with(
        dir.path(),
        "utf8.zip",
        "Game/Données/é.txt".as_bytes(),
        UTF8_NAME,
        MADE_BY_NTFS,
    );
    let summary = validate(&utf8).unwrap();
    assert_eq!(summary.entries, 2);
    assert_eq!(summary.warnings.len(), 1, "{:?}", summary.warnings);
    let warning = &summary.warnings[0];
    assert!(warning.contains("utf8.zip"), "{warning}");
    assert!(warning.contains("Game/Données/é.txt"), "{warning}");
    assert!(warning.contains("printable ASCII"), "{warning}");

    // Windows Explorer writes the OEM code page without the flag: byte 0x82
    // is "é" in CP437.
    let cp437 = build_with(dir.path(), "oem.zip", b"Game/caf\x82.txt", 0, MADE_BY_FAT);
    let summary = validate(&cp437).unwrap();
    assert_eq!(summary.warnings.len(), 1, "{:?}", summary.warnings);
    assert!(
        summary.warnings[0].contains("Game/café.txt"),
        "{:?}",
        summary.warnings
    );

    // Plain names give no warning.
    let plain = build_with(
        dir.path(),
        "plain.zip",
        b"Game/Data/a b.txt",
        0,
        MADE_BY_UNIX,
    );
    assert!(validate(&plain).unwrap().warnings.is_empty());
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
