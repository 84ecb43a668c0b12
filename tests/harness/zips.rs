//! The one writer of test ZIPs. A [`Zip`] says what the archive holds (its
//! entries, their content, how they are stored); it is then built in
//! memory, written in place, or written under a temporary name and renamed
//! in, the way a careful build machine delivers it. [`write_exact`] streams
//! a ZIP of an exact size, for chunk arithmetic and the gigabyte benchmark.
//!
//! Content is pseudo-random from a seed (xorshift64: incompressible enough,
//! fast in a debug build, and every chunk of a file gets its own MD5), or
//! one repeated byte where a test needs content that can never look like a
//! ZIP header.
//!
//! Owns no knowledge of the daemon, the sandbox or a scenario.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::path::Path;

use sha2::{Digest, Sha256};
use zip::CompressionMethod;
use zip::write::{SimpleFileOptions, ZipWriter};

/// The entry name of a seeded ZIP, as a game build would have it.
pub const GAME_ENTRY: &str = "game/data.bin";

/// What one entry holds.
#[derive(Debug, Clone)]
enum Content {
    /// `len` pseudo-random bytes from `seed`.
    Seeded { seed: u64, len: u64 },
    /// `len` copies of `byte`.
    Filled { byte: u8, len: u64 },
    /// These bytes.
    Bytes(Vec<u8>),
}

/// A ZIP to write: its entries in order and the compression of all of them.
#[derive(Debug, Clone)]
pub struct Zip {
    entries: Vec<(String, Content)>,
    method: CompressionMethod,
}

impl Zip {
    /// One STORE entry ([`GAME_ENTRY`]) of `payload` pseudo-random bytes
    /// derived from `seed` (a label or a number, see [`Seed`]).
    pub fn seeded(seed: impl Seed, payload: u64) -> Self {
        Self::one(
            GAME_ENTRY,
            Content::Seeded {
                seed: seed.value(),
                len: payload,
            },
        )
    }

    /// One STORE entry (`game.exe`) of `payload` copies of `byte`: content
    /// that cannot be mistaken for a ZIP header.
    pub fn filled(byte: u8, payload: u64) -> Self {
        Self::one("game.exe", Content::Filled { byte, len: payload })
    }

    /// These entries with these contents, STORE.
    pub fn entries(entries: &[(&str, &[u8])]) -> Self {
        Self {
            entries: entries
                .iter()
                .map(|(name, data)| ((*name).to_owned(), Content::Bytes(data.to_vec())))
                .collect(),
            method: CompressionMethod::Stored,
        }
    }

    /// A valid ZIP with no entries at all.
    pub fn empty() -> Self {
        Self::entries(&[])
    }

    fn one(name: &str, content: Content) -> Self {
        Self {
            entries: vec![(name.to_owned(), content)],
            method: CompressionMethod::Stored,
        }
    }

    /// Stores every entry with `method` instead of STORE.
    pub fn method(mut self, method: CompressionMethod) -> Self {
        self.method = method;
        self
    }

    /// Renames the entries to `name` (the only entry) or `name-N`.
    pub fn entry_name(mut self, name: &str) -> Self {
        let many = self.entries.len() > 1;
        for (i, (entry, _)) in self.entries.iter_mut().enumerate() {
            *entry = if many {
                format!("{name}-{i}")
            } else {
                name.to_owned()
            };
        }
        self
    }

    /// The archive's bytes.
    pub fn bytes(&self) -> Vec<u8> {
        self.write_into(io::Cursor::new(Vec::new()))
            .expect("a ZIP in memory")
            .into_inner()
    }

    /// Writes the archive at `path` directly (a file that grows in place,
    /// events and all) and returns the SHA-256 of the file.
    pub fn write_in_place(&self, path: &Path) -> String {
        self.write_into(File::create(path).unwrap())
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        sha256_file(path).unwrap()
    }

    /// Writes the archive under a temporary name beside `path` (the same
    /// name with the extension `part`) and renames it in, so a watcher
    /// never sees it half written. Returns the SHA-256 of the file.
    pub fn write(&self, path: &Path) -> String {
        let tmp = path.with_extension("part");
        let sha256 = self.write_in_place(&tmp);
        std::fs::rename(&tmp, path).unwrap();
        sha256
    }

    /// Streams the archive into `out`, a block of content at a time.
    fn write_into<W: Write + Seek>(&self, out: W) -> io::Result<W> {
        let mut zip = ZipWriter::new(out);
        let options = options(self.method);
        for (name, content) in &self.entries {
            zip.start_file(name.as_str(), options)
                .map_err(io::Error::other)?;
            match content {
                Content::Bytes(data) => zip.write_all(data)?,
                Content::Seeded { seed, len } => {
                    let mut rng = XorShift::new(*seed);
                    stream(&mut zip, *len, |block| rng.fill(block))?
                }
                Content::Filled { byte, len } => stream(&mut zip, *len, |block| block.fill(*byte))?,
            }
        }
        zip.finish().map_err(io::Error::other)
    }
}

/// The options of every entry: the same for all, so the overhead of an
/// entry is known; never ZIP64 (no test file is near 4 GiB).
fn options(method: CompressionMethod) -> SimpleFileOptions {
    SimpleFileOptions::default()
        .compression_method(method)
        .large_file(false)
}

/// Writes `len` bytes made by `fill` into `out`, 1 MiB at a time.
fn stream(out: &mut impl Write, len: u64, mut fill: impl FnMut(&mut [u8])) -> io::Result<()> {
    let mut block = vec![0u8; len.min(1 << 20) as usize];
    let mut left = len;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        fill(&mut block[..n]);
        out.write_all(&block[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// Writes a ZIP of exactly `size` bytes at `path`: one STORE entry
/// (`payload.bin`) of pseudo-random bytes from `seed`. Streams, so a
/// gigabyte takes as long as the disk does.
pub fn write_exact(path: &Path, size: u64, seed: u64) -> io::Result<()> {
    const ENTRY: &str = "payload.bin";
    let overhead = Zip::entries(&[(ENTRY, &[])]).bytes().len() as u64;
    let payload = size.checked_sub(overhead).ok_or_else(|| {
        io::Error::other(format!(
            "a ZIP holds at least {overhead} bytes, {size} asked"
        ))
    })?;
    Zip::seeded(seed, payload)
        .entry_name(ENTRY)
        .write_into(File::create(path)?)?;
    let written = std::fs::metadata(path)?.len();
    if written != size {
        return Err(io::Error::other(format!(
            "wrote a {written}-byte ZIP, {size} asked"
        )));
    }
    Ok(())
}

/// What seeds a ZIP's content: a number, or a label (hashed, so each label
/// has its own content).
pub trait Seed {
    fn value(&self) -> u64;
}

impl Seed for u64 {
    fn value(&self) -> u64 {
        *self
    }
}

impl Seed for &str {
    /// FNV-1a of the label.
    fn value(&self) -> u64 {
        self.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    }
}

/// xorshift64.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        // Zero is xorshift's one fixed point.
        Self(seed | 1)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for word in buf.chunks_mut(8) {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            word.copy_from_slice(&x.to_le_bytes()[..word.len()]);
        }
    }
}

/// Lowercase hex SHA-256 of some bytes.
pub fn sha256(bytes: &[u8]) -> String {
    patchkit_autopublish::patchkit::lower_hex(&Sha256::digest(bytes))
}

/// Lowercase hex SHA-256 of a file, read a block at a time.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(patchkit_autopublish::patchkit::lower_hex(
                &hasher.finalize(),
            ));
        }
        hasher.update(&buf[..n]);
    }
}
