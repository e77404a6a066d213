//! Before any data is touched: which gradients take part, where each one lives, and whether the
//! call can go ahead.
//!
//! Every check runs here, each gradient's lock taken briefly and alone, so a refused call has
//! modified nothing and holds no lock: the device (CPU only), the dtype (f32, f16, bf16), the
//! layout (a non-contiguous gradient is copied to a contiguous tensor), and, for the calls that
//! write, that no two gradients share a byte of memory. Gradients are then grouped by storage:
//! views of one storage at disjoint offsets are served by one lock of that storage, because
//! locking it twice from one thread would deadlock.

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, Storage, Tensor, Var};
use gradclip::overlap::{first_overlap, Span};

use crate::error::{ClipError, Who};

/// The element types the library handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Elem {
    F32,
    F16,
    BF16,
}

impl Elem {
    fn of(dtype: candle_core::DType) -> Option<Elem> {
        match dtype {
            candle_core::DType::F32 => Some(Elem::F32),
            candle_core::DType::F16 => Some(Elem::F16),
            candle_core::DType::BF16 => Some(Elem::BF16),
            _ => None,
        }
    }

    fn size_of(self) -> usize {
        match self {
            Elem::F32 => 4,
            Elem::F16 | Elem::BF16 => 2,
        }
    }
}

/// Whether the call writes through the gradients (then they must not share memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    Read,
    Write,
}

/// One gradient taking part in the call, in the order of `vars` (vars without a gradient left
/// out).
pub(crate) struct Entry {
    /// Index of its variable in `vars`.
    pub var: usize,
    /// The gradient as stored, or its contiguous copy when the stored one is not contiguous.
    pub tensor: Tensor,
    /// True when `tensor` is a copy that must go back into the `GradStore` after a write.
    pub copied: bool,
    pub elem: Elem,
    /// Element range inside the storage (`Layout::contiguous_offsets`, start offset included).
    pub start: usize,
    pub end: usize,
    /// Index into [`Plan::groups`]; `None` for an empty gradient, which needs no storage.
    pub group: Option<usize>,
}

/// The gradients that live in one storage.
pub(crate) struct Group {
    /// Address of the storage (stable while a tensor holds it): the lock order.
    pub key: usize,
    /// Indices into [`Plan::entries`], by increasing start offset.
    pub members: Vec<usize>,
}

impl Group {
    /// The tensor whose lock this group takes (any member: they share the storage).
    pub fn tensor<'p>(&self, plan: &'p Plan) -> &'p Tensor {
        &plan.entries[self.members[0]].tensor
    }
}

/// The checked set of gradients of one call.
pub(crate) struct Plan {
    pub entries: Vec<Entry>,
    /// Groups by increasing storage address (the order in which locks are taken; candle's own
    /// in-place ops also lock in address order).
    pub groups: Vec<Group>,
}

/// What one brief read lock tells about a non-empty contiguous gradient.
struct Placement {
    key: usize,
    base: usize,
    len: usize,
    elem: Option<Elem>,
}

fn placement(tensor: &Tensor) -> Option<Placement> {
    let (guard, _) = tensor.storage_and_layout();
    let key = std::ptr::from_ref::<Storage>(&guard).addr();
    let (base, len, elem) = match &*guard {
        Storage::Cpu(CpuStorage::F32(v)) => (v.as_ptr().addr(), v.len(), Some(Elem::F32)),
        Storage::Cpu(CpuStorage::F16(v)) => (v.as_ptr().addr(), v.len(), Some(Elem::F16)),
        Storage::Cpu(CpuStorage::BF16(v)) => (v.as_ptr().addr(), v.len(), Some(Elem::BF16)),
        Storage::Cpu(_) => (0, 0, None),
        _ => return None,
    };
    Some(Placement {
        key,
        base,
        len,
        elem,
    })
}

impl Plan {
    /// Checks the gradients of `vars` found in `grads` and places them. Nothing is written and no
    /// lock is held when this returns.
    pub fn new(vars: &[Var], grads: &GradStore, access: Access) -> candle_core::Result<Plan> {
        let mut entries = Vec::new();
        let mut spans = Vec::new();
        let mut keys = Vec::new(); // (storage key, start, entry index)
        for (var, v) in vars.iter().enumerate() {
            let Some(grad) = grads.get(v) else { continue };
            let who = || Who::of(var, grad);
            if !grad.device().is_cpu() {
                return Err(ClipError::NotCpu {
                    who: who(),
                    device: format!("{:?}", grad.device().location()),
                }
                .into());
            }
            let Some(elem) = Elem::of(grad.dtype()) else {
                return Err(ClipError::UnsupportedDtype { who: who() }.into());
            };
            let (tensor, copied) = if grad.is_contiguous() {
                (grad.clone(), false)
            } else {
                let copy = grad.contiguous().map_err(|e| {
                    e.context(format!(
                        "gradclip: copying the non-contiguous gradient of {}",
                        who()
                    ))
                })?;
                (copy, true)
            };
            let Some((start, end)) = tensor.layout().contiguous_offsets() else {
                // `contiguous()` always returns a contiguous tensor.
                return Err(ClipError::BadLayout {
                    who: who(),
                    end: 0,
                    len: 0,
                }
                .into());
            };
            if end > start {
                let Some(p) = placement(&tensor) else {
                    return Err(ClipError::NotCpu {
                        who: who(),
                        device: "a non-CPU storage".into(),
                    }
                    .into());
                };
                if p.elem != Some(elem) || end > p.len {
                    return Err(ClipError::BadLayout {
                        who: who(),
                        end,
                        len: p.len,
                    }
                    .into());
                }
                let size = elem.size_of();
                spans.push((
                    entries.len(),
                    Span {
                        addr: p.base + start * size,
                        len: (end - start) * size,
                    },
                ));
                keys.push((p.key, start, entries.len()));
            }
            entries.push(Entry {
                var,
                tensor,
                copied,
                elem,
                start,
                end,
                group: None,
            });
        }
        if access == Access::Write {
            let only: Vec<Span> = spans.iter().map(|&(_, s)| s).collect();
            if let Some((i, j)) = first_overlap(&only) {
                let (a, b) = (&entries[spans[i].0], &entries[spans[j].0]);
                return Err(ClipError::Aliased {
                    first: Who::of(a.var, &a.tensor),
                    second: Who::of(b.var, &b.tensor),
                    first_range: (a.start, a.end),
                    second_range: (b.start, b.end),
                }
                .into());
            }
        }
        keys.sort_unstable();
        let mut groups: Vec<Group> = Vec::new();
        for (key, _, e) in keys {
            match groups.last_mut() {
                Some(g) if g.key == key => g.members.push(e),
                _ => groups.push(Group {
                    key,
                    members: vec![e],
                }),
            }
            entries[e].group = Some(groups.len() - 1);
        }
        Ok(Plan { entries, groups })
    }
}
