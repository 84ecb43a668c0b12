//! Chunk range arithmetic: which byte ranges an upload sends, in order.
//!
//! Owns the pure split of `[offset, total)` into consecutive ranges of
//! `chunk_size` bytes (the last one shorter) and the `Content-Range` header
//! text for each. Knows nothing about files, HTTP or retries, so it can be
//! checked exhaustively with property tests.

use std::num::NonZeroU64;

/// PatchKit's guide recommends 10 MiB chunks: small enough that a lost chunk
/// costs little to resend, large enough that per-request overhead is noise.
pub const DEFAULT_CHUNK_SIZE: NonZeroU64 = NonZeroU64::new(10 * 1024 * 1024).unwrap();

/// One chunk: bytes `start..=end` of the upload (both ends inclusive, like
/// the `Content-Range` header that carries it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkRange {
    /// Offset of the first byte.
    pub start: u64,
    /// Offset of the last byte (inclusive).
    pub end: u64,
}

impl ChunkRange {
    /// Number of bytes in the chunk (never 0).
    pub fn size(&self) -> u64 {
        self.end - self.start + 1
    }

    /// Offset just past the last byte: the acknowledged offset once this chunk
    /// has been accepted.
    pub fn end_exclusive(&self) -> u64 {
        self.end + 1
    }

    /// The `Content-Range` header value, `bytes START-END/TOTAL`.
    pub fn content_range(&self, total: u64) -> String {
        format!("bytes {}-{}/{}", self.start, self.end, total)
    }
}

/// The chunks that cover `[offset, total)` exactly once, in order. Every chunk
/// holds `chunk_size` bytes except the last, which may be shorter. An `offset`
/// at or past `total` (and so a `total` of 0) yields nothing.
///
/// `offset` need not be a multiple of `chunk_size`: a resumed upload starts
/// where the last acknowledged chunk ended, even if the chunk size changed.
pub fn chunk_ranges(total: u64, chunk_size: NonZeroU64, offset: u64) -> ChunkRanges {
    ChunkRanges {
        next: offset,
        total,
        chunk_size: chunk_size.get(),
    }
}

/// Iterator returned by [`chunk_ranges`].
#[derive(Debug, Clone)]
pub struct ChunkRanges {
    /// Start of the next chunk.
    next: u64,
    /// Size of the whole upload.
    total: u64,
    /// Bytes per chunk.
    chunk_size: u64,
}

impl Iterator for ChunkRanges {
    type Item = ChunkRange;

    fn next(&mut self) -> Option<ChunkRange> {
        if self.next >= self.total {
            return None;
        }
        let start = self.next;
        let end_exclusive = start.saturating_add(self.chunk_size).min(self.total);
        self.next = end_exclusive;
        Some(ChunkRange {
            start,
            end: end_exclusive - 1,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self
            .total
            .saturating_sub(self.next)
            .div_ceil(self.chunk_size);
        let left = usize::try_from(left).unwrap_or(usize::MAX);
        (left, Some(left))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nz(n: u64) -> NonZeroU64 {
        NonZeroU64::new(n).unwrap()
    }

    #[test]
    fn zero_total_has_no_chunks() {
        assert_eq!(chunk_ranges(0, nz(10), 0).count(), 0);
    }

    #[test]
    fn one_byte_is_one_chunk() {
        let all: Vec<_> = chunk_ranges(1, nz(10), 0).collect();
        assert_eq!(all, vec![ChunkRange { start: 0, end: 0 }]);
        assert_eq!(all[0].content_range(1), "bytes 0-0/1");
    }

    #[test]
    fn exact_multiple_has_no_short_tail() {
        let all: Vec<_> = chunk_ranges(30, nz(10), 0).collect();
        assert_eq!(
            all,
            vec![
                ChunkRange { start: 0, end: 9 },
                ChunkRange { start: 10, end: 19 },
                ChunkRange { start: 20, end: 29 },
            ]
        );
    }

    #[test]
    fn the_guide_example_header() {
        let first = chunk_ranges(20 * 1024 * 1024, DEFAULT_CHUNK_SIZE, 0)
            .next()
            .unwrap();
        assert_eq!(
            first.content_range(20 * 1024 * 1024),
            "bytes 0-10485759/20971520"
        );
    }

    #[test]
    fn offset_past_the_end_yields_nothing() {
        assert_eq!(chunk_ranges(10, nz(4), 10).count(), 0);
        assert_eq!(chunk_ranges(10, nz(4), 11).count(), 0);
    }

    #[test]
    fn huge_values_do_not_overflow() {
        let all: Vec<_> = chunk_ranges(u64::MAX, nz(u64::MAX - 1), 0).collect();
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].end, u64::MAX - 1);
    }

    /// Checks that `ranges` tile `[offset, total)` in order, every chunk full
    /// except the last.
    fn assert_tiles(ranges: &[ChunkRange], total: u64, chunk: u64, offset: u64) {
        let mut expected_start = offset;
        for (i, r) in ranges.iter().enumerate() {
            assert_eq!(
                r.start, expected_start,
                "chunk {i} starts where the last ended"
            );
            assert!(r.end >= r.start);
            if i + 1 < ranges.len() {
                assert_eq!(r.size(), chunk, "chunk {i} is full");
            } else {
                assert!(r.size() <= chunk, "the last chunk is not oversized");
            }
            expected_start = r.end_exclusive();
        }
        assert_eq!(
            expected_start,
            total.max(offset),
            "the chunks reach the end"
        );
    }

    proptest! {
        #[test]
        fn chunks_cover_everything_once_from_zero(total in 0u64..100_000, chunk in 1u64..5_000) {
            let ranges: Vec<_> = chunk_ranges(total, nz(chunk), 0).collect();
            assert_tiles(&ranges, total, chunk, 0);
            prop_assert_eq!(ranges.len() as u64, total.div_ceil(chunk));
            prop_assert_eq!(ranges.iter().map(ChunkRange::size).sum::<u64>(), total);
        }

        #[test]
        fn exact_multiples_have_only_full_chunks(n in 0u64..200, chunk in 1u64..5_000) {
            let ranges: Vec<_> = chunk_ranges(n * chunk, nz(chunk), 0).collect();
            prop_assert_eq!(ranges.len() as u64, n);
            prop_assert!(ranges.iter().all(|r| r.size() == chunk));
        }

        #[test]
        fn resuming_from_a_chunk_boundary_yields_the_tail(
            total in 0u64..100_000,
            chunk in 1u64..5_000,
            skip in 0usize..50,
        ) {
            let all: Vec<_> = chunk_ranges(total, nz(chunk), 0).collect();
            let skip = skip.min(all.len());
            let offset = skip as u64 * chunk;
            let resumed: Vec<_> = chunk_ranges(total, nz(chunk), offset).collect();
            prop_assert_eq!(&resumed[..], &all[skip..]);
            assert_tiles(&resumed, total, chunk, offset);
        }

        #[test]
        fn resuming_from_any_offset_tiles_the_rest(
            total in 0u64..100_000,
            chunk in 1u64..5_000,
            offset in 0u64..100_000,
        ) {
            let offset = offset.min(total);
            let ranges: Vec<_> = chunk_ranges(total, nz(chunk), offset).collect();
            assert_tiles(&ranges, total, chunk, offset);
            let (lo, hi) = chunk_ranges(total, nz(chunk), offset).size_hint();
            prop_assert_eq!(lo, ranges.len());
            prop_assert_eq!(hi, Some(ranges.len()));
        }
    }
}
