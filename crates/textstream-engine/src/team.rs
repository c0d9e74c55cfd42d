//! Fork-join for one forward step: the model's pool threads stay with the
//! step from its first parallel region to its last and meet each region
//! through one atomic word, instead of through rayon's queues and sleeps.
//!
//! A decode step is about 150 parallel regions (about 300 for a batch of 8
//! sequences), each a few to a few tens of microseconds of work per thread.
//! Rayon's fork-join costs about 1.5 µs a region beyond the work (measured
//! in isolation on the 2-vCPU machine the README names), and a worker that
//! fell asleep between two regions wakes through the kernel. [`run`] holds
//! every thread of the pool for the whole step (`ThreadPool::broadcast`):
//! one thread runs the step (the *leader*); the others (*followers*) spin
//! until the leader opens a region, take its items through a shared counter
//! as the leader does, and spin again until the step ends.
//!
//! [`for_each`], [`for_each_init`] and [`map_init`] are the regions. Called
//! by the leader of a step they open one; called from inside a region (an
//! item that itself asks for parallel work) they run serially; called
//! anywhere else (a product outside a step, a test) they use rayon as
//! before. Items are claimed `min_len` at a time, so the work is shared
//! dynamically, as with rayon's `with_min_len`: a follower that the
//! operating system did not schedule costs nothing but its share, which the
//! leader then takes.
//!
//! The leader never waits for a follower to arrive, only for the followers
//! inside a region to leave it, so a step never depends on another thread
//! being scheduled, and two steps broadcast on one pool at once cannot
//! deadlock (a follower spinning in the wrong step leaves when it ends).

// The regions hand borrowed closures and items to other threads: each
// `unsafe` says why the borrow outlives every use.
#![allow(unsafe_code)]

use std::any::Any;
use std::cell::{Cell, UnsafeCell};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use rayon::prelude::*;

/// The region word's low 31 bits: followers inside the open region.
const ACTIVE: u64 = (1 << 31) - 1;
/// The region word's bit 31: a region is open to followers.
const OPEN: u64 = 1 << 31;
/// The region word's high 32 bits count regions: one more each time.
const GENERATION: u64 = 1 << 32;
/// Empty polls before a waiting follower yields its core to the operating
/// system between polls: about 0.1 ms of spinning (a `pause` took 24 ns on
/// the machine the README names), longer than the serial gap between two
/// regions of a decode step (a norm, a residual add: a few microseconds).
const SPINS_BEFORE_YIELD: u32 = 4_000;

/// What each thread of a region runs (the claiming loop over its items).
type Body = dyn Fn() + Sync;

/// The meeting point of one step's threads.
struct Team {
    /// Generation, [`OPEN`] and the followers inside ([`ACTIVE`]).
    word: AtomicU64,
    /// The open region's body. Written by the leader only while no region
    /// is open and no follower is inside one; read by followers only while
    /// they are counted inside an open region.
    body: UnsafeCell<Option<&'static Body>>,
    /// Set when the step is over (or unwinding): followers return.
    done: AtomicBool,
    /// The first panic of a follower in the current region, for the leader
    /// to resume.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

// SAFETY: `body` is the only field that is not `Sync`; the protocol on
// `word` (documented on the field) orders its one writer against its readers.
unsafe impl Sync for Team {}

thread_local! {
    /// The team whose step this thread leads, when it leads one.
    static LEADING: Cell<*const Team> = const { Cell::new(ptr::null()) };
    /// Whether this thread is running a region's items.
    static IN_REGION: Cell<bool> = const { Cell::new(false) };
}

/// Sets a flag when dropped: the followers leave even if the step panics.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Restores the thread's previous [`LEADING`] when dropped.
struct Lead(*const Team);

impl Drop for Lead {
    fn drop(&mut self) {
        LEADING.with(|l| l.set(self.0));
    }
}

/// Marks the thread as inside a region until dropped.
struct InRegion(bool);

impl InRegion {
    fn enter() -> Self {
        Self(IN_REGION.with(|r| r.replace(true)))
    }
}

impl Drop for InRegion {
    fn drop(&mut self) {
        IN_REGION.with(|r| r.set(self.0));
    }
}

impl Team {
    fn new() -> Self {
        Self {
            word: AtomicU64::new(0),
            body: UnsafeCell::new(None),
            done: AtomicBool::new(false),
            panic: Mutex::new(None),
        }
    }

    /// Runs `body` on this thread and on every follower that joins before
    /// it returns; returns when all of them are out of it.
    fn region<'a>(&self, body: &'a (dyn Fn() + Sync + 'a)) {
        // SAFETY: the lifetime is erased only while the region is open:
        // followers read `body` only while counted inside, and this function
        // does not return before they are all out (below), even unwinding
        // (every panic is caught first).
        let erased: &'static Body =
            unsafe { std::mem::transmute::<&'a (dyn Fn() + Sync + 'a), &'static Body>(body) };
        // SAFETY: no region is open and no follower is inside (the last
        // region waited for them), so nobody reads `body` now.
        unsafe { *self.body.get() = Some(erased) };
        // Only the leader changes the generation and the open bit, and no
        // follower is inside: the word is `generation` alone.
        let generation = self.word.load(Ordering::Relaxed) & !(OPEN | ACTIVE);
        self.word
            .store(generation + GENERATION + OPEN, Ordering::Release);
        let mine = {
            let _inside = InRegion::enter();
            catch_unwind(AssertUnwindSafe(body))
        };
        // Close the door, then wait for those inside.
        self.word.fetch_and(!OPEN, Ordering::AcqRel);
        while self.word.load(Ordering::Acquire) & ACTIVE != 0 {
            std::hint::spin_loop();
        }
        // SAFETY: closed and empty: as above.
        unsafe { *self.body.get() = None };
        let theirs = self
            .panic
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Err(payload) = mine {
            resume_unwind(payload);
        }
        if let Some(payload) = theirs {
            resume_unwind(payload);
        }
    }

    /// A follower's life: join each region once, until the step is done.
    fn follow(&self) {
        let mut last_generation = None;
        let mut idle = 0u32;
        loop {
            let word = self.word.load(Ordering::Acquire);
            let generation = word >> 32;
            if word & OPEN != 0 && last_generation != Some(generation) {
                if self
                    .word
                    .compare_exchange_weak(word, word + 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    last_generation = Some(generation);
                    // SAFETY: we are counted inside the open region, so the
                    // leader keeps its body alive and in place until we leave.
                    let body = unsafe { *self.body.get() };
                    if let Some(body) = body {
                        let _inside = InRegion::enter();
                        if let Err(payload) = catch_unwind(AssertUnwindSafe(body)) {
                            self.panic
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .get_or_insert(payload);
                        }
                    }
                    self.word.fetch_sub(1, Ordering::Release);
                    idle = 0;
                }
                continue;
            }
            if self.done.load(Ordering::Acquire) {
                return;
            }
            idle = idle.saturating_add(1);
            if idle < SPINS_BEFORE_YIELD {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
}

/// Runs `step` on `pool` with every thread of the pool held for it: the
/// regions it opens (through this module's functions) are shared without
/// rayon's fork-join. Returns what `step` returns; a panic in `step` or in
/// any of its regions' items is resumed here.
pub(crate) fn run<R: Send>(pool: &rayon::ThreadPool, step: impl FnOnce() -> R + Send) -> R {
    let team = Team::new();
    let step = Mutex::new(Some(step));
    let result = Mutex::new(None);
    pool.broadcast(|context| {
        if context.index() != 0 {
            team.follow();
            return;
        }
        let _done = SetOnDrop(&team.done);
        let _lead = Lead(LEADING.with(|l| l.replace(&team)));
        let step = step.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(step) = step {
            let out = step();
            *result.lock().unwrap_or_else(PoisonError::into_inner) = Some(out);
        }
    });
    result
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner)
        .expect("the pool's first thread runs the step")
}

/// How this thread runs a region.
enum Mode<'a> {
    /// It leads a step: open a region of the team.
    Team(&'a Team),
    /// It is inside a region already: one thread, in order.
    Serial,
    /// Anywhere else: rayon.
    Rayon,
}

fn mode<'a>() -> Mode<'a> {
    if IN_REGION.with(Cell::get) {
        return Mode::Serial;
    }
    let team = LEADING.with(Cell::get);
    if team.is_null() {
        Mode::Rayon
    } else {
        // SAFETY: `LEADING` points at the team of the step this thread is
        // running (set and restored by `run` around it), which lives on the
        // stack of `run` below this call.
        Mode::Team(unsafe { &*team })
    }
}

/// A slot written or taken by the one thread that claimed its index.
struct Slot<T>(UnsafeCell<Option<T>>);

// SAFETY: each slot is touched by one thread at a time: the one that
// claimed its index (each index is claimed once), or the owner of the
// vector after the region.
unsafe impl<T: Send> Sync for Slot<T> {}

/// Hands out ranges of `0..len`, each index once, largest first: each claim
/// takes a share of what is left (a `1 / (2 * threads)` share, at least
/// `min_len` items), as OpenMP's guided schedule does. Items are often
/// tiny (a product of one token is tasks of 64 rows: 768 of them for
/// SmolLM2's output matrix), and a claim is an atomic operation on a line
/// that the threads pass between them: taking items one at a time cost more
/// than rayon's halving (measured: one SmolLM2 sequence's step 5.8 -> 6.2 ms).
struct Claims {
    next: AtomicUsize,
    len: usize,
    min_len: usize,
    parts: usize,
}

impl Claims {
    fn new(len: usize, min_len: usize) -> Self {
        Self {
            next: AtomicUsize::new(0),
            len,
            min_len: min_len.max(1),
            parts: 2 * rayon::current_num_threads(),
        }
    }

    fn next(&self) -> Option<std::ops::Range<usize>> {
        let mut first = self.next.load(Ordering::Relaxed);
        loop {
            if first >= self.len {
                return None;
            }
            let take = ((self.len - first) / self.parts).max(self.min_len);
            let end = (first + take).min(self.len);
            match self
                .next
                .compare_exchange_weak(first, end, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Some(first..end),
                Err(now) => first = now,
            }
        }
    }
}

/// `f(item)` for every item, in parallel (at least `min_len` items per
/// thread's turn).
pub(crate) fn for_each<T: Send>(items: Vec<T>, min_len: usize, f: impl Fn(T) + Sync + Send) {
    for_each_init(items, min_len, || (), |(), item| f(item));
}

/// `f(state, item)` for every item, in parallel; each thread makes its
/// `state` with `init` once per region (scratch space), as rayon's
/// `for_each_init` does.
pub(crate) fn for_each_init<T: Send, S>(
    items: Vec<T>,
    min_len: usize,
    init: impl Fn() -> S + Sync + Send,
    f: impl Fn(&mut S, T) + Sync + Send,
) {
    let team = match mode() {
        Mode::Team(team) if items.len() > min_len.max(1) => team,
        Mode::Rayon => {
            items
                .into_par_iter()
                .with_min_len(min_len.max(1))
                .for_each_init(init, f);
            return;
        }
        _ => {
            let mut state = init();
            items.into_iter().for_each(|item| f(&mut state, item));
            return;
        }
    };
    let slots: Vec<Slot<T>> = items
        .into_iter()
        .map(|item| Slot(UnsafeCell::new(Some(item))))
        .collect();
    let claims = Claims::new(slots.len(), min_len);
    team.region(&|| {
        let mut state = None;
        while let Some(range) = claims.next() {
            let state = state.get_or_insert_with(&init);
            for slot in &slots[range] {
                // SAFETY: this thread claimed the slot's index (`Claims`
                // hands each out once); nobody else touches it.
                if let Some(item) = unsafe { (*slot.0.get()).take() } {
                    f(state, item);
                }
            }
        }
    });
}

/// `f(state, item)` for every item, in parallel, collected in order; each
/// thread makes its `state` with `init` once per region.
pub(crate) fn map_init<T: Sync, S, R: Send>(
    items: &[T],
    min_len: usize,
    init: impl Fn() -> S + Sync + Send,
    f: impl Fn(&mut S, &T) -> R + Sync + Send,
) -> Vec<R> {
    let team = match mode() {
        Mode::Team(team) if items.len() > min_len.max(1) => team,
        Mode::Rayon => {
            return items
                .par_iter()
                .with_min_len(min_len.max(1))
                .map_init(init, f)
                .collect();
        }
        _ => {
            let mut state = init();
            return items.iter().map(|item| f(&mut state, item)).collect();
        }
    };
    let results: Vec<Slot<R>> = items.iter().map(|_| Slot(UnsafeCell::new(None))).collect();
    let claims = Claims::new(items.len(), min_len);
    team.region(&|| {
        let mut state = None;
        while let Some(range) = claims.next() {
            let state = state.get_or_insert_with(&init);
            for (item, slot) in items[range.clone()].iter().zip(&results[range.clone()]) {
                let out = f(state, item);
                // SAFETY: this thread claimed the slot's index.
                unsafe { *slot.0.get() = Some(out) };
            }
        }
    });
    // `region` returned without a panic: every index was claimed and run.
    results
        .into_iter()
        .map(|slot| {
            slot.0
                .into_inner()
                .expect("a region runs every item it hands out")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::atomic::AtomicUsize;

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("pool")
    }

    /// Runs `regions` regions of `len` items in one step and returns, per
    /// region, how many times each item ran and the mapped values.
    fn step_counts(threads: usize, regions: usize, len: usize, min_len: usize) -> Vec<Vec<usize>> {
        run(&pool(threads), || {
            (0..regions)
                .map(|r| {
                    let hits: Vec<AtomicUsize> = (0..len).map(|_| AtomicUsize::new(0)).collect();
                    for_each((0..len).collect(), min_len, |i| {
                        hits[i].fetch_add(1, Ordering::Relaxed);
                    });
                    let mapped = map_init(
                        &(0..len).collect::<Vec<_>>(),
                        min_len,
                        || r,
                        |r, &i| i * 7 + *r,
                    );
                    assert_eq!(mapped, (0..len).map(|i| i * 7 + r).collect::<Vec<_>>());
                    hits.into_iter().map(AtomicUsize::into_inner).collect()
                })
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// Every item of every region runs exactly once, and maps collect
        /// in order, whatever the threads, lengths and chunks.
        #[test]
        fn every_item_runs_once(threads in 1usize..4, regions in 1usize..40, len in 0usize..100, min_len in 0usize..9) {
            for counts in step_counts(threads, regions, len, min_len) {
                prop_assert!(counts.iter().all(|&c| c == 1), "{counts:?}");
            }
        }
    }

    #[test]
    fn items_own_their_data_and_write_in_place() {
        let mut out = vec![0u32; 1000];
        run(&pool(2), || {
            let chunks: Vec<&mut [u32]> = out.chunks_mut(7).collect();
            for_each_init(chunks, 2, Vec::<u32>::new, |scratch, chunk| {
                scratch.push(1);
                chunk.iter_mut().for_each(|v| *v += 3);
            });
        });
        assert!(out.iter().all(|&v| v == 3));
    }

    #[test]
    fn work_is_shared_with_the_followers() {
        // With two threads and items that wait for each other's company,
        // both threads must take part: item 0 waits until another item has
        // started on another thread.
        let started = AtomicUsize::new(0);
        let threads: Mutex<std::collections::HashSet<std::thread::ThreadId>> = Mutex::default();
        run(&pool(2), || {
            for_each((0..64).collect::<Vec<usize>>(), 1, |_| {
                started.fetch_add(1, Ordering::SeqCst);
                threads
                    .lock()
                    .expect("lock")
                    .insert(std::thread::current().id());
                std::thread::sleep(std::time::Duration::from_millis(1));
            });
        });
        assert_eq!(started.load(Ordering::SeqCst), 64);
        assert_eq!(threads.into_inner().expect("lock").len(), 2);
    }

    #[test]
    fn nested_regions_run_serially_and_outside_a_step_use_rayon() {
        let total = AtomicUsize::new(0);
        run(&pool(2), || {
            for_each((0..8).collect::<Vec<usize>>(), 1, |i| {
                for_each((0..10).collect::<Vec<usize>>(), 1, |j| {
                    total.fetch_add(i * 10 + j, Ordering::Relaxed);
                });
            });
        });
        assert_eq!(total.load(Ordering::Relaxed), (0..80).sum::<usize>());
        // No step: rayon's pool of the caller.
        let sum: usize = map_init(&[1usize, 2, 3], 1, || (), |(), &v| v)
            .into_iter()
            .sum();
        assert_eq!(sum, 6);
    }

    #[test]
    fn a_panic_in_an_item_reaches_the_caller_and_the_pool_goes_on() {
        let pool = pool(2);
        for victim in [0usize, 37, 63] {
            let caught = catch_unwind(AssertUnwindSafe(|| {
                run(&pool, || {
                    for_each((0..64).collect::<Vec<usize>>(), 1, |i| {
                        if i == victim {
                            panic!("item {i} failed");
                        }
                    });
                })
            }));
            let payload = caught.expect_err("the panic is resumed");
            let message = payload
                .downcast_ref::<String>()
                .expect("a formatted panic message");
            assert_eq!(message, &format!("item {victim} failed"));
        }
        // The same pool still runs steps.
        assert_eq!(
            run(&pool, || map_init(&[5usize; 10], 1, || (), |(), &v| v)).len(),
            10
        );
    }

    #[test]
    fn steps_from_two_threads_on_one_pool_both_finish() {
        let pool = pool(2);
        std::thread::scope(|scope| {
            let runs: Vec<_> = (0..2)
                .map(|k| {
                    let pool = &pool;
                    scope.spawn(move || {
                        (0..50)
                            .map(|_| run(pool, || map_init(&[k; 33], 2, || (), |(), &v| v).len()))
                            .sum::<usize>()
                    })
                })
                .collect();
            for handle in runs {
                assert_eq!(handle.join().expect("no panic"), 50 * 33);
            }
        });
    }
}
