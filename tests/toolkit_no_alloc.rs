//! The per-step methods of the toolkit allocate nothing after construction:
//! [`GradientMonitor::observe`], [`ZClip::observe`] / [`ZClip::clip_`] and [`AutoClip::observe`]
//! (within the capacity reserved by [`AutoClip::with_capacity`]), under a counting global
//! allocator. The counter is process-wide, so every test holds one lock for its whole body, and
//! only allocations made by a thread that switched counting on are counted (the harness's own
//! threads allocate while a test runs). Everything measured here runs on the calling thread:
//! the buffers are far below the crate's parallel threshold.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use gradclip::monitor::{
    AutoClip, GradientMonitor, MonitorConfig, Observation, ZClip, ZClipConfig,
};
use gradclip::GradMut;

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    // const-initialised, no destructor: safe to touch from inside the allocator.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    if COUNTING.with(Cell::get) {
        ALLOCS.fetch_add(1, Ordering::SeqCst);
    }
}

// SAFETY: forwards to the system allocator and only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

static SERIAL: Mutex<()> = Mutex::new(());

fn allocs() -> usize {
    ALLOCS.load(Ordering::SeqCst)
}

/// Runs `f` with counting switched on for this thread and returns the allocations it made.
fn counted(f: impl FnOnce()) -> usize {
    let before = allocs();
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    allocs() - before
}

/// Deterministic, allocation-free pseudo-noise in [0, 1).
fn noise(i: u64) -> f64 {
    let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
    x as f64 / (1u64 << 53) as f64
}

#[test]
fn monitor_observe_allocates_nothing() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut m = GradientMonitor::new(MonitorConfig::default()).unwrap();
    let mut alerts = 0u64;
    let n = counted(|| {
        for i in 0..5000u64 {
            // Every branch: noise, explosions, zeros, NaN, negative, losses, parameter norms.
            let g = match i % 97 {
                0 => 1e4,
                1 => 0.0,
                2 => f64::NAN,
                3 => -1.0,
                _ => 1.0 + noise(i),
            };
            let loss = if i % 50 == 49 {
                40.0
            } else {
                1.0 + 0.5 * noise(i + 7)
            };
            let v = m.observe(
                Observation::norm(g)
                    .with_loss(loss)
                    .with_param_norm(10.0 + i as f64)
                    .with_max_buffer_norm(g),
            );
            alerts += u64::from(!v.is_healthy());
        }
    });
    let n_reset = counted(|| {
        m.reset();
        m.observe(Observation::norm(1.0));
    });
    assert_eq!((n, n_reset), (0, 0), "GradientMonitor allocated per step");
    assert!(alerts > 0);
}

#[test]
fn zclip_and_autoclip_steps_allocate_nothing() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut z = ZClip::new(ZClipConfig::default()).unwrap();
    let mut ac = AutoClip::with_capacity(AutoClip::DEFAULT_PERCENTILE, 4000).unwrap();
    let mut grads = vec![0.5f32; 1000];
    let n = counted(|| {
        for i in 0..4000u64 {
            let g = if i % 61 == 60 { 50.0 } else { 1.0 + noise(i) };
            z.observe(g);
            ac.observe(g);
            if i % 100 == 0 {
                z.clip_(&mut [GradMut::F32(&mut grads)]).unwrap();
            }
        }
    });
    assert_eq!(n, 0, "ZClip/AutoClip allocated per step");
    // The counter does see allocations: a growing AutoClip history without a reservation.
    let grown = counted(|| {
        let mut a = AutoClip::new(10.0).unwrap();
        for i in 0..100 {
            a.observe(i as f64);
        }
    });
    assert!(grown > 0);
    assert_eq!(ac.len(), 4000);
    assert!(z.stats().is_some());
}
