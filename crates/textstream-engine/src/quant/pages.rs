//! Where a quantized matrix's bytes live: in a vector of their own while
//! the matrix is built, then (once a model has loaded) in one buffer that
//! holds all of the model's matrices in the order a step reads them, in
//! 2 MiB pages where the operating system gives them.
//!
//! A decode step reads every weight once (98 MB for SmolLM2). In 4 KiB
//! pages that is 24,000 pages a token: more than the CPU's TLB holds, each
//! miss a page walk (two-level under a hypervisor), and the CPU's
//! prefetchers stop at every page's end. Linux backs a region with 2 MiB
//! pages when it is advised to (`MADV_HUGEPAGE`, which the
//! `transparent_hugepage` setting `madvise` asks for; `always` would back
//! it so anyway, `never` not at all). Most matrices are smaller
//! than a page (SmolLM2's are 0.2-1.1 MB), so they share one buffer.
//! Measured on the README's VM (two copies of a model in one process,
//! packed and not, stepping by turns): one SmolLM2 sequence's step 5.18 ->
//! 4.19 and 5.39 -> 4.53 ms (medians), 8 sequences 13.1 -> 12.3 and 12.1
//! -> 11.4 ms; Gemma 3 270M 11.9 -> 11.5 and 25.0 -> 24.0 ms.

#![allow(unsafe_code)]

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::fmt;
use std::ops::{Deref, Range};
use std::ptr::NonNull;
use std::sync::Arc;

use rayon::prelude::*;

/// The page size asked for, and the buffer's alignment.
const HUGE_PAGE: usize = 2 << 20;
/// Weights below this stay in ordinary pages.
const MIN_HUGE: usize = 8 << 20;
/// Each matrix starts on a cache line (the kernels' loads of 64 bytes).
const ALIGN: usize = 64;

/// A quantized matrix's bytes.
#[derive(Clone)]
pub(crate) enum Bytes {
    /// Its own (while built, and for matrices outside a model).
    Own(Vec<u8>),
    /// `range` of a model's shared buffer.
    Packed {
        pages: Arc<Pages>,
        range: Range<usize>,
    },
}

impl Bytes {
    /// The bytes to change (a packed matrix gets its own copy first).
    pub(crate) fn to_mut(&mut self) -> &mut Vec<u8> {
        if let Bytes::Packed { .. } = self {
            *self = Bytes::Own(self.to_vec());
        }
        match self {
            Bytes::Own(bytes) => bytes,
            Bytes::Packed { .. } => unreachable!("made its own above"),
        }
    }
}

impl Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Own(bytes) => bytes,
            Bytes::Packed { pages, range } => pages.get(range.clone()),
        }
    }
}

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let place = match self {
            Bytes::Own(_) => "own",
            Bytes::Packed { .. } => "packed",
        };
        write!(f, "Bytes({} bytes, {place})", self.len())
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(bytes: Vec<u8>) -> Self {
        Bytes::Own(bytes)
    }
}

/// Whether to ask for 2 MiB pages: yes unless `TEXTSTREAM_HUGE_PAGES` is
/// `off` (or `0`, `false`, `no`). Where the host of a VM backs memory only
/// when it is first touched, clearing 2 MiB pages is slow (on the README's
/// VM, Qwen2.5-Coder's 375 MiB of weights loaded in 3.8 s instead of 1.9),
/// a cost that a short run may not win back.
fn huge_pages_wanted() -> bool {
    wants_huge_pages(std::env::var(HUGE_PAGES_ENV).ok().as_deref())
}

/// [`huge_pages_wanted`] for a value of the variable.
fn wants_huge_pages(value: Option<&str>) -> bool {
    let value = value.unwrap_or_default().trim().to_ascii_lowercase();
    !matches!(value.as_str(), "off" | "0" | "false" | "no")
}

/// The variable that turns 2 MiB pages off.
pub(crate) const HUGE_PAGES_ENV: &str = "TEXTSTREAM_HUGE_PAGES";

/// One allocation aligned to [`HUGE_PAGE`], written once per range by
/// [`pack`] and then only read.
pub(crate) struct Pages {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: `Pages` owns its allocation like a `Box<[u8]>`; after `pack` has
// written a range, it is only ever read.
unsafe impl Send for Pages {}
// SAFETY: as above: shared references only read.
unsafe impl Sync for Pages {}

impl Pages {
    /// An uninitialized buffer of `len` bytes (rounded up to whole pages),
    /// advised to the OS as one to back with huge pages.
    fn new(len: usize) -> Self {
        // A small model (the tests' tiny ones) gains nothing from a 2 MiB
        // page, and would take a whole one.
        let huge = len >= MIN_HUGE && huge_pages_wanted();
        let (size, align) = match huge {
            true => (len.next_multiple_of(HUGE_PAGE), HUGE_PAGE),
            false => (len.max(1), ALIGN),
        };
        let layout = Layout::from_size_align(size, align).expect("a valid layout");
        // SAFETY: the layout's size is not zero.
        let ptr = unsafe { alloc(layout) };
        let Some(ptr) = NonNull::new(ptr) else {
            handle_alloc_error(layout)
        };
        #[cfg(target_os = "linux")]
        if huge {
            // SAFETY: the range is this allocation, page-aligned; the advice
            // changes which pages back it, never its contents (none yet). A
            // refusal (another kernel, THP off) leaves ordinary pages.
            unsafe {
                libc::madvise(ptr.as_ptr().cast(), size, libc::MADV_HUGEPAGE);
            }
        }
        Self { ptr, layout }
    }

    /// The bytes of `range`.
    fn get(&self, range: Range<usize>) -> &[u8] {
        assert!(range.start <= range.end && range.end <= self.layout.size());
        // SAFETY: in bounds (above); `pack` wrote every range it hands out
        // before handing it out, and nothing writes it after.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(range.start), range.len()) }
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// Moves each of `all` into one shared buffer, in the order given (the
/// order a step reads them), each on a cache line of its own; each one's
/// own vector is freed as soon as it has been copied, so that loading
/// never holds much more than the weights themselves.
pub(crate) fn pack(mut all: Vec<&mut Bytes>) {
    let mut ranges = Vec::with_capacity(all.len());
    let mut end = 0usize;
    for bytes in &all {
        let start = end.next_multiple_of(ALIGN);
        end = start + bytes.len();
        ranges.push(start..end);
    }
    let pages = Arc::new(Pages::new(end));
    for (bytes, range) in all.iter_mut().zip(ranges) {
        let own = std::mem::replace(
            *bytes,
            Bytes::Packed {
                pages: Arc::clone(&pages),
                range: range.clone(),
            },
        );
        let source: &[u8] = &own;
        // A chunk at a time, on all of the pool's threads (the first touch
        // of each page makes the OS clear it: a VM whose host backs memory
        // on first touch spent 0.5 s on SmolLM2's weights on one thread),
        // each chunk's whole pages handed back as soon as it is copied: an
        // allocator keeps a freed block of its heap for later (glibc does
        // below its `mmap` threshold), and a large matrix would otherwise
        // be held twice at once (Gemma 3's 170 MB embedding: peak 585 ->
        // 728 MiB).
        let chunks = source.len().div_ceil(COPY_CHUNK);
        (0..chunks).into_par_iter().for_each(|k| {
            let part = k * COPY_CHUNK..source.len().min((k + 1) * COPY_CHUNK);
            // SAFETY: the chunk's place lies in the buffer (whose size is at
            // least `end`); the ranges, and the chunks of one, do not
            // overlap, so no reference handed out so far (each to its own
            // range) sees this write; nothing writes it afterwards, and it
            // is read only through the `Packed` just made, once `pack`
            // returns.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    source[part.clone()].as_ptr(),
                    pages.ptr.as_ptr().add(range.start + part.start),
                    part.len(),
                );
            }
            if let Bytes::Own(vec) = &own {
                give_back(vec, part);
            }
        });
    }
}

/// Bytes copied between two hand-backs of the source's pages.
const COPY_CHUNK: usize = 4 << 20;

/// Hands the whole pages of `vec` inside its bytes `range` back to the OS
/// (they read as zeros if touched again): `vec` is about to be freed, and
/// those bytes were copied.
fn give_back(vec: &[u8], range: Range<usize>) {
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 4096;
        let base = vec.as_ptr() as usize;
        let start = (base + range.start).next_multiple_of(PAGE);
        let end = (base + range.end) / PAGE * PAGE;
        if start < end {
            // SAFETY: whole pages inside the vector's own allocation, which
            // the caller holds and frees next, after its last read of them
            // (these bytes are copied; no other chunk shares these pages);
            // the allocator keeps nothing in the interior of a block it
            // handed out.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (vec, range);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_pages_are_wanted_unless_turned_off() {
        for on in [None, Some(""), Some("on"), Some("1"), Some("yes")] {
            assert!(wants_huge_pages(on), "{on:?}");
        }
        for off in ["off", "OFF", " 0 ", "false", "no"] {
            assert!(!wants_huge_pages(Some(off)), "{off:?}");
        }
    }

    #[test]
    fn packed_bytes_are_the_same_bytes_and_change_on_their_own() {
        // Small ones share ordinary pages; with the two of several
        // megabytes (more than `MIN_HUGE` in all, several `COPY_CHUNK`s
        // each, their pages handed back chunk by chunk) they take 2 MiB ones.
        let originals: Vec<Vec<u8>> = [0usize, 1, 63, 64, 65, 3000, 100_000, 9 << 20, 5 << 20]
            .iter()
            .enumerate()
            .map(|(k, &len)| (0..len).map(|i| (i * 31 + k * 7) as u8).collect())
            .collect();
        let mut all: Vec<Bytes> = originals.iter().cloned().map(Bytes::from).collect();
        pack(all.iter_mut().collect());
        for (bytes, original) in all.iter().zip(&originals) {
            assert!(matches!(bytes, Bytes::Packed { .. }));
            assert_eq!(&bytes[..], &original[..]);
            assert_eq!(bytes.as_ptr() as usize % ALIGN, 0, "each starts on a line");
        }
        // A change makes a copy of its own; the others keep theirs.
        let mut changed = all[5].clone();
        changed.to_mut()[0] ^= 0xFF;
        assert_eq!(changed[0], originals[5][0] ^ 0xFF);
        assert_eq!(all[5][0], originals[5][0]);
        drop(all);
        assert_eq!(changed.len(), originals[5].len());
    }
}
