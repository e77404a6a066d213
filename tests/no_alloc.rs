//! The hot path allocates nothing: norms and clips over many multi-chunk buffers, under a
//! counting global allocator.
//!
//! On one thread the count must be exactly zero. With two threads, rayon's work-stealing deque
//! (crossbeam) may allocate now and then when it steals; that must not grow with the number of
//! calls, so a long loop is held to a small constant.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use gradclip::{
    bf16, clip_grad_norm_, exact_partial, f16, get_total_norm, get_total_norm_exact,
    per_buffer_partials, ClipOptions, GradMut, NormPartial, NormType, Summation,
};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator and only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::SeqCst);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::SeqCst);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The counter is process-wide and the test harness runs tests on parallel threads: each test
/// holds this lock for its whole body so it counts only its own allocations.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

struct Data {
    a: Vec<f32>,
    b: Vec<f16>,
    c: Vec<bf16>,
    small: Vec<Vec<f32>>,
}

fn data() -> Data {
    let n = if cfg!(miri) { 70_000 } else { 3_000_000 };
    Data {
        a: (0..n).map(|i| (i % 17) as f32 - 8.0).collect(),
        b: (0..n / 2).map(|i| f16::from_f32((i % 5) as f32)).collect(),
        c: (0..999).map(|i| bf16::from_f32(i as f32)).collect(),
        small: (0..300).map(|i| vec![0.5; 100 + i]).collect(),
    }
}

/// Allocations made by `rounds` rounds of every norm type and clip, after one warm-up round.
fn allocations(d: &mut Data, rounds: usize) -> usize {
    let mut grads: Vec<GradMut<'_>> = Vec::with_capacity(303);
    grads.push(GradMut::from(&mut d.a));
    grads.push(GradMut::from(&mut d.b));
    grads.push(GradMut::from(&mut d.c));
    for s in d.small.iter_mut() {
        grads.push(GradMut::from(s));
    }
    let mut out = vec![NormPartial::EMPTY; grads.len()];
    // Warm-up: ISA detection, rayon worker registration.
    let _ = get_total_norm(&grads, NormType::L2);
    let before = ALLOCS.load(Ordering::SeqCst);
    for _ in 0..rounds {
        for nt in [NormType::L2, NormType::L1, NormType::Inf, NormType::P(3.0)] {
            let norm = get_total_norm(&grads, nt).unwrap();
            let opts = ClipOptions {
                norm_type: nt,
                ..ClipOptions::default()
            };
            let r = clip_grad_norm_(&mut grads, norm / 2.0, opts).unwrap();
            assert!(r.clipped);
            // Bring the values back up so many rounds stay in range.
            gradclip::scale_(&mut grads, 2.0).unwrap();
        }
        per_buffer_partials(&grads, NormType::L2, &mut out).unwrap();
        // Exact mode: norms, partials and clips.
        for nt in [NormType::L2, NormType::L1, NormType::Inf] {
            let norm = get_total_norm_exact(&grads, nt).unwrap();
            assert_eq!(exact_partial(&grads, nt).unwrap().finish(), norm);
            let opts = ClipOptions {
                norm_type: nt,
                summation: Summation::Exact,
                ..ClipOptions::default()
            };
            let r = clip_grad_norm_(&mut grads, norm / 2.0, opts).unwrap();
            assert!(r.clipped);
            gradclip::scale_(&mut grads, 2.0).unwrap();
        }
    }
    ALLOCS.load(Ordering::SeqCst) - before
}

#[test]
fn one_thread_allocates_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut d = data();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    assert_eq!(pool.install(|| allocations(&mut d, 3)), 0);
}

#[test]
fn two_threads_do_not_allocate_per_call() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut d = data();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let rounds = if cfg!(miri) { 1 } else { 40 };
    // 40 rounds are 440 calls; each forks dozens of times.
    let n = pool.install(|| allocations(&mut d, rounds));
    assert!(n <= 16, "{n} allocations in {rounds} rounds");
}
