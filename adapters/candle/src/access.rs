//! Borrowing candle's storages as gradclip buffers, without copying.
//!
//! Reading: one read guard per storage (`Tensor::storage_and_layout`), taken in address order
//! and held together, and a [`Grad`] per gradient sliced at its contiguous offsets.
//!
//! Writing: candle hands out a storage mutably only inside an in-place op
//! (`Tensor::inplace_op1`, whose `cpu_fwd` receives `&mut CpuStorage` under the storage's write
//! lock), one storage per call. To give the library every buffer at once — one global norm, one
//! scaling pass over all buffers, exactly the Rust API's call — each level's `cpu_fwd` slices its
//! storage and starts the next level's in-place op from inside, so the write locks nest, one per
//! storage, in address order; the innermost level runs the library on all the views. The plan
//! guarantees that no storage is locked twice (that would deadlock) and that no two views share
//! a byte. Deep nests (many storages) run on a helper thread with a stack sized for them.

use std::cell::RefCell;

use candle_core::{CpuStorage, InplaceOp1, Layout, Storage};
use gradclip::{Grad, GradMut};

use crate::error::{ClipError, Who};
use crate::plan::{Elem, Entry, Plan};

/// Runs `f` on read-only views of every gradient of `plan`, in entry order.
pub(crate) fn with_grads<R>(
    plan: &Plan,
    f: impl FnOnce(&[Grad<'_>]) -> R,
) -> candle_core::Result<R> {
    let guards: Vec<_> = plan
        .groups
        .iter()
        .map(|g| g.tensor(plan).storage_and_layout().0)
        .collect();
    let mut views = Vec::with_capacity(plan.entries.len());
    for e in &plan.entries {
        let view = match e.group {
            None => empty(e.elem),
            Some(g) => match &*guards[g] {
                Storage::Cpu(s) => slice(s, e)?,
                _ => return Err(bad_layout(e, 0).into()),
            },
        };
        views.push(view);
    }
    Ok(f(&views))
}

fn empty(elem: Elem) -> Grad<'static> {
    match elem {
        Elem::F32 => Grad::F32(&[]),
        Elem::F16 => Grad::F16(&[]),
        Elem::BF16 => Grad::BF16(&[]),
    }
}

fn bad_layout(e: &Entry, len: usize) -> ClipError {
    ClipError::BadLayout {
        who: Who::of(e.var, &e.tensor),
        end: e.end,
        len,
    }
}

fn slice<'s>(s: &'s CpuStorage, e: &Entry) -> Result<Grad<'s>, ClipError> {
    let r = e.start..e.end;
    let view = match (s, e.elem) {
        (CpuStorage::F32(v), Elem::F32) => v.get(r).map(Grad::F32),
        (CpuStorage::F16(v), Elem::F16) => v.get(r).map(Grad::F16),
        (CpuStorage::BF16(v), Elem::BF16) => v.get(r).map(Grad::BF16),
        _ => None,
    };
    view.ok_or_else(|| bad_layout(e, 0))
}

/// The body of the innermost level: all views, in entry order.
type Body<'f, R> = dyn FnMut(&mut [GradMut<'_>]) -> R + Send + 'f;

/// Stack depth up to which the write locks nest on the calling thread.
const INLINE_LEVELS: usize = 64;
/// Stack reserved per nesting level on the helper thread (generous: unoptimised builds have large
/// frames; untouched stack pages cost no memory).
const STACK_PER_LEVEL: usize = 16 << 10;
/// Stack of the helper thread besides the levels (the library's own calls, rayon's join).
const STACK_BASE: usize = 4 << 20;

/// Runs `f` on mutable views of every gradient of `plan`, in entry order, holding the write lock
/// of every storage involved. `plan` must come from an [`crate::plan::Access::Write`] check.
///
/// A call made on a rayon worker thread (inside `ThreadPool::install`, say) always nests on
/// that thread: on a helper thread the library's parallel work would leave the caller's pool
/// for the global one. Elsewhere the library runs on the global pool anyway.
pub(crate) fn with_grads_mut<R: Send>(plan: &Plan, f: &mut Body<'_, R>) -> candle_core::Result<R> {
    if plan.groups.len() <= INLINE_LEVELS || rayon::current_thread_index().is_some() {
        return nest(plan, f);
    }
    let stack = STACK_BASE + plan.groups.len() * STACK_PER_LEVEL;
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("gradclip-candle".into())
            .stack_size(stack)
            .spawn_scoped(scope, || nest(plan, f))
            .map_err(candle_core::Error::wrap)?;
        match worker.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

fn nest<R>(plan: &Plan, f: &mut Body<'_, R>) -> candle_core::Result<R> {
    // Empty gradients need no storage: their views exist from the start.
    let views: Vec<Option<GradMut<'static>>> = plan
        .entries
        .iter()
        .map(|e| match (e.group, e.elem) {
            (Some(_), _) => None,
            (None, Elem::F32) => Some(GradMut::F32(&mut [])),
            (None, Elem::F16) => Some(GradMut::F16(&mut [])),
            (None, Elem::BF16) => Some(GradMut::BF16(&mut [])),
        })
        .collect();
    let out = RefCell::new(None);
    let level = Level {
        plan,
        depth: 0,
        views: RefCell::new(Some(views)),
        body: RefCell::new(Some(f)),
        out: &out,
    };
    match plan.groups.first() {
        None => level.innermost(level.take_views()?)?,
        Some(g) => g.tensor(plan).inplace_op1(&level)?,
    }
    out.into_inner()
        .ok_or_else(|| candle_core::Error::msg("gradclip: the in-place op did not run"))
}

/// One level of the nest: locks `plan.groups[depth]` (through `inplace_op1`) and slices it.
struct Level<'p, 'v, 'f, R> {
    plan: &'p Plan,
    depth: usize,
    /// Views gathered by the outer levels, indexed like `plan.entries`.
    views: RefCell<Option<Vec<Option<GradMut<'v>>>>>,
    body: RefCell<Option<&'f mut Body<'f, R>>>,
    out: &'p RefCell<Option<R>>,
}

impl<'v, R> Level<'_, 'v, '_, R> {
    fn take_views(&self) -> candle_core::Result<Vec<Option<GradMut<'v>>>> {
        self.views
            .borrow_mut()
            .take()
            .ok_or_else(|| candle_core::Error::msg("gradclip: in-place op run twice"))
    }

    fn innermost(&self, views: Vec<Option<GradMut<'_>>>) -> candle_core::Result<()> {
        let mut all: Vec<GradMut<'_>> = views.into_iter().flatten().collect();
        let body = self.body.borrow_mut().take();
        match body {
            Some(body) if all.len() == self.plan.entries.len() => {
                *self.out.borrow_mut() = Some(body(&mut all));
                Ok(())
            }
            _ => Err(candle_core::Error::msg(
                "gradclip: a gradient view is missing",
            )),
        }
    }
}

impl<R> InplaceOp1 for Level<'_, '_, '_, R> {
    fn name(&self) -> &'static str {
        "gradclip"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, _layout: &Layout) -> candle_core::Result<()> {
        let mut views: Vec<Option<GradMut<'_>>> = self.take_views()?;
        let group = &self.plan.groups[self.depth];
        carve(storage, self.plan, &group.members, &mut views)?;
        match self.plan.groups.get(self.depth + 1) {
            None => self.innermost(views),
            Some(next) => {
                let body = self.body.borrow_mut().take();
                let level = Level {
                    plan: self.plan,
                    depth: self.depth + 1,
                    views: RefCell::new(Some(views)),
                    body: RefCell::new(body),
                    out: self.out,
                };
                next.tensor(self.plan).inplace_op1(&level)
            }
        }
    }
}

/// Splits one storage into the mutable views of its members (by increasing, disjoint offsets).
fn carve<'s>(
    storage: &'s mut CpuStorage,
    plan: &Plan,
    members: &[usize],
    views: &mut [Option<GradMut<'s>>],
) -> Result<(), ClipError> {
    match storage {
        CpuStorage::F32(v) => carve_typed(v, plan, members, views, Elem::F32, GradMut::F32),
        CpuStorage::F16(v) => carve_typed(v, plan, members, views, Elem::F16, GradMut::F16),
        CpuStorage::BF16(v) => carve_typed(v, plan, members, views, Elem::BF16, GradMut::BF16),
        _ => Err(bad_layout(&plan.entries[members[0]], 0)),
    }
}

fn carve_typed<'s, T>(
    data: &'s mut [T],
    plan: &Plan,
    members: &[usize],
    views: &mut [Option<GradMut<'s>>],
    elem: Elem,
    wrap: fn(&'s mut [T]) -> GradMut<'s>,
) -> Result<(), ClipError> {
    let len = data.len();
    let mut rest = data;
    let mut at = 0; // storage index of rest[0]
    for &m in members {
        let e = &plan.entries[m];
        if e.elem != elem || e.start < at || e.end > len {
            return Err(bad_layout(e, len));
        }
        let (_, tail) = std::mem::take(&mut rest).split_at_mut(e.start - at);
        let (view, tail) = tail.split_at_mut(e.end - e.start);
        views[m] = Some(wrap(view));
        rest = tail;
        at = e.end;
    }
    Ok(())
}
