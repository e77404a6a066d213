//! From Python objects to validated buffer descriptions, and from those to gradclip's views.
//!
//! Everything a kernel will touch is checked here, with the GIL held and before any memory is
//! read: the object is a plain CPU `torch.Tensor` (or `Parameter`) or a `numpy.ndarray`; its dtype
//! is f32, f16 or bf16; its elements fill one dense block of memory (contiguous, or dense in
//! another dimension order such as `channels_last`); the address is aligned; and, for calls that
//! write, the array is writable and no two buffers share a byte ([`gradclip::overlap`]). Only
//! then are slices built, from the addresses recorded here, while the owners are kept alive.

use gradclip::overlap::{first_overlap, Span};
use gradclip::{bf16, f16, DType, Grad, GradMut};
use pyo3::exceptions::PyTypeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};

use crate::errors;

/// Whether the items are the buffers (`get_total_norm`) or parameters whose `.grad` is the buffer
/// (`clip_grad_norm_` and the others; NumPy arrays are their own gradients).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Tensors,
    Grads,
}

/// Whether the call only reads, or also writes (then buffers must be writable and disjoint).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    Read,
    Write,
}

/// Where the buffers come from: the result type follows (a 0-dim tensor, or a float).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    Torch,
    NumPy,
}

/// One validated buffer: where it is and how to name it.
#[derive(Debug, Clone)]
pub(crate) struct Buffer {
    /// Position of the item in the caller's list.
    pub pos: usize,
    pub dtype: DType,
    /// Address of the first element (any value when `len == 0`).
    pub addr: usize,
    /// Number of elements.
    pub len: usize,
    /// For a dense buffer stored in another order than row-major: `(size, stride)` of each
    /// dimension of size > 1 in logical order, strides in elements. Maps a memory index back to
    /// the logical flat index in error messages.
    pub dims: Option<Vec<(usize, usize)>>,
}

impl Buffer {
    /// The logical (row-major) flat index of the element at memory index `m`.
    pub fn logical_index(&self, m: usize) -> usize {
        match &self.dims {
            None => m,
            Some(dims) => dims
                .iter()
                .fold(0, |acc, &(size, stride)| acc * size + (m / stride) % size),
        }
    }

    pub fn bytes(&self) -> usize {
        self.len * self.dtype.size_of()
    }
}

/// The validated buffers of one call.
pub(crate) struct Buffers<'py> {
    /// `None` when there was no buffer at all (empty list, or no parameter had a gradient).
    pub kind: Option<Kind>,
    pub bufs: Vec<Buffer>,
    /// The objects the buffers belong to, in the same order: held until the call returns.
    pub owners: Vec<Bound<'py, PyAny>>,
    pub role: Role,
}

impl Buffers<'_> {
    pub fn total_bytes(&self) -> usize {
        self.bufs.iter().map(Buffer::bytes).sum()
    }

    /// The dtype of the result: the buffers' dtype, f32 when they mix dtypes (as `torch.stack`
    /// promotes f16 with bf16, or either with f32).
    pub fn result_dtype(&self) -> Option<DType> {
        let first = self.bufs.first()?.dtype;
        Some(if self.bufs.iter().all(|b| b.dtype == first) {
            first
        } else {
            DType::F32
        })
    }

    /// How to name buffer `i` in a message: `tensors[3]`, `parameters[3].grad`, `arrays[3]`.
    pub fn name(&self, i: usize) -> String {
        name_of(self.kind, self.role, self.bufs[i].pos)
    }
}

pub(crate) fn name_of(kind: Option<Kind>, role: Role, pos: usize) -> String {
    match (kind, role) {
        (Some(Kind::NumPy), _) => format!("arrays[{pos}]"),
        (_, Role::Tensors) => format!("tensors[{pos}]"),
        (_, Role::Grads) => format!("parameters[{pos}].grad"),
    }
}

/// What the binding needs from torch, looked up once torch has been imported.
struct TorchApi {
    tensor: Py<PyAny>,
    parameter: Py<PyAny>,
    f32: Py<PyAny>,
    f16: Py<PyAny>,
    bf16: Py<PyAny>,
    strided: Py<PyAny>,
    increment_version: Py<PyAny>,
    get_num_threads: Py<PyAny>,
}

/// What the binding needs from NumPy (and ml_dtypes, when imported).
struct NumpyApi {
    ndarray: Py<PyAny>,
    f32: Py<PyAny>,
    f16: Py<PyAny>,
}

static TORCH: PyOnceLock<TorchApi> = PyOnceLock::new();
static NUMPY: PyOnceLock<NumpyApi> = PyOnceLock::new();
static BF16_NP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// A module if it has been imported already (gradclip never imports torch or NumPy itself).
fn imported<'py>(py: Python<'py>, name: &str) -> PyResult<Option<Bound<'py, PyAny>>> {
    static MODULES: PyOnceLock<Py<PyDict>> = PyOnceLock::new();
    let modules = MODULES.get_or_try_init(py, || -> PyResult<Py<PyDict>> {
        Ok(py
            .import("sys")?
            .getattr("modules")?
            .cast_into::<PyDict>()?
            .unbind())
    })?;
    modules.bind(py).get_item(name)
}

fn torch_api(py: Python<'_>) -> PyResult<Option<&TorchApi>> {
    if let Some(api) = TORCH.get(py) {
        return Ok(Some(api));
    }
    let Some(torch) = imported(py, "torch")? else {
        return Ok(None);
    };
    let api = TorchApi {
        tensor: torch.getattr("Tensor")?.unbind(),
        parameter: torch.getattr("nn")?.getattr("Parameter")?.unbind(),
        f32: torch.getattr("float32")?.unbind(),
        f16: torch.getattr("float16")?.unbind(),
        bf16: torch.getattr("bfloat16")?.unbind(),
        strided: torch.getattr("strided")?.unbind(),
        increment_version: torch.getattr("_C")?.getattr("_increment_version")?.unbind(),
        get_num_threads: torch.getattr("get_num_threads")?.unbind(),
    };
    let _ = TORCH.set(py, api);
    Ok(TORCH.get(py))
}

fn numpy_api(py: Python<'_>) -> PyResult<Option<&NumpyApi>> {
    if let Some(api) = NUMPY.get(py) {
        return Ok(Some(api));
    }
    let Some(np) = imported(py, "numpy")? else {
        return Ok(None);
    };
    let dtype = np.getattr("dtype")?;
    let api = NumpyApi {
        ndarray: np.getattr("ndarray")?.unbind(),
        f32: dtype.call1(("float32",))?.unbind(),
        f16: dtype.call1(("float16",))?.unbind(),
    };
    let _ = NUMPY.set(py, api);
    Ok(NUMPY.get(py))
}

/// `numpy.dtype(ml_dtypes.bfloat16)`, once ml_dtypes has been imported.
fn numpy_bf16(py: Python<'_>) -> PyResult<Option<&Py<PyAny>>> {
    if let Some(d) = BF16_NP.get(py) {
        return Ok(Some(d));
    }
    let (Some(np), Some(ml)) = (imported(py, "numpy")?, imported(py, "ml_dtypes")?) else {
        return Ok(None);
    };
    let d = np
        .getattr("dtype")?
        .call1((ml.getattr("bfloat16")?,))?
        .unbind();
    let _ = BF16_NP.set(py, d);
    Ok(BF16_NP.get(py))
}

/// `torch.get_num_threads` when torch has been imported.
pub(crate) fn torch_num_threads(py: Python<'_>) -> PyResult<Option<usize>> {
    match torch_api(py)? {
        None => Ok(None),
        Some(api) => Ok(Some(api.get_num_threads.bind(py).call0()?.extract()?)),
    }
}

/// Bumps the autograd version counter of the tensors a call wrote, as an in-place torch op
/// would (`torch.autograd.graph.increment_version`): autograd then notices if a tensor it saved
/// for backward was modified.
pub(crate) fn mark_written(py: Python<'_>, b: &Buffers<'_>) -> PyResult<()> {
    if b.kind != Some(Kind::Torch) || b.owners.is_empty() {
        return Ok(());
    }
    let api = torch_api(py)?.expect("torch buffers imply torch");
    let list = PyTuple::new(py, &b.owners)?;
    api.increment_version.bind(py).call1((list,))?;
    Ok(())
}

/// Validates every item; nothing is read from the buffers here.
pub(crate) fn collect<'py>(
    items: &Bound<'py, PyAny>,
    role: Role,
    access: Access,
) -> PyResult<Buffers<'py>> {
    let py = items.py();
    let seq: Vec<Bound<'py, PyAny>> = if let Ok(list) = items.cast::<PyList>() {
        list.iter().collect()
    } else if let Ok(tuple) = items.cast::<PyTuple>() {
        tuple.iter().collect()
    } else {
        return Err(PyTypeError::new_err("expected a list or tuple of tensors"));
    };
    let mut out = Buffers {
        kind: None,
        bufs: Vec::with_capacity(seq.len()),
        owners: Vec::with_capacity(seq.len()),
        role,
    };
    let torch = torch_api(py)?;
    let numpy = numpy_api(py)?;
    for (pos, item) in seq.into_iter().enumerate() {
        let is_tensor = |o: &Bound<'py, PyAny>| -> PyResult<bool> {
            match torch {
                Some(api) => o.is_instance(api.tensor.bind(py)),
                None => Ok(false),
            }
        };
        let (kind, obj) = if is_tensor(&item)? {
            if role == Role::Grads {
                let g = item.getattr(intern!(py, "grad"))?;
                if g.is_none() {
                    continue;
                }
                (Kind::Torch, g)
            } else {
                (Kind::Torch, item)
            }
        } else if match numpy {
            Some(np) => item.is_instance(np.ndarray.bind(py))?,
            None => false,
        } {
            (Kind::NumPy, item)
        } else {
            return Err(PyTypeError::new_err(format!(
                "{}: expected a torch.Tensor or a numpy.ndarray, got {}",
                name_of(out.kind, role, pos),
                item.get_type().name()?
            )));
        };
        match out.kind {
            None => out.kind = Some(kind),
            Some(k) if k != kind => {
                return Err(PyTypeError::new_err(format!(
                    "{}: cannot mix torch tensors and NumPy arrays in one call",
                    name_of(Some(kind), role, pos)
                )))
            }
            _ => {}
        }
        let buf = match kind {
            Kind::Torch => torch_buffer(torch.expect("checked above"), &obj, pos, role)?,
            Kind::NumPy => numpy_buffer(numpy.expect("checked above"), &obj, pos, access)?,
        };
        out.bufs.push(buf);
        out.owners.push(obj);
    }
    if access == Access::Write {
        let spans: Vec<Span> = out
            .bufs
            .iter()
            .map(|b| Span {
                addr: b.addr,
                len: b.bytes(),
            })
            .collect();
        if let Some((i, j)) = first_overlap(&spans) {
            return Err(errors::overlap(
                py,
                &out.name(i),
                &out.name(j),
                out.bufs[i].pos,
                out.bufs[j].pos,
            ));
        }
    }
    Ok(out)
}

fn unsupported(py: Python<'_>, kind: Kind, role: Role, pos: usize, what: String) -> PyErr {
    errors::unsupported(py, &name_of(Some(kind), role, pos), pos, &what)
}

fn torch_buffer(api: &TorchApi, t: &Bound<'_, PyAny>, pos: usize, role: Role) -> PyResult<Buffer> {
    let py = t.py();
    let fail = |what: String| unsupported(py, Kind::Torch, role, pos, what);
    if !(t.is_exact_instance(api.tensor.bind(py)) || t.is_exact_instance(api.parameter.bind(py))) {
        return Err(fail(format!(
            "tensor subclass {} is not supported (for a DTensor, pass .to_local() and group=)",
            t.get_type().name()?
        )));
    }
    let dt = t.getattr(intern!(py, "dtype"))?;
    let dtype = if dt.is(api.f32.bind(py)) {
        DType::F32
    } else if dt.is(api.bf16.bind(py)) {
        DType::BF16
    } else if dt.is(api.f16.bind(py)) {
        DType::F16
    } else {
        return Err(fail(format!(
            "dtype {dt} is not supported (float32, float16 and bfloat16 are)"
        )));
    };
    if !t.getattr(intern!(py, "is_cpu"))?.is_truthy()? {
        return Err(fail(format!(
            "is on device {}; gradclip works on CPU tensors only",
            t.getattr(intern!(py, "device"))?
        )));
    }
    // No separate layout check (each torch attribute costs ~0.1 us): a sparse, MKL-DNN or other
    // non-strided tensor fails one of the calls below (`is_contiguous`, `stride`, `data_ptr`),
    // and that failure is reported as unsupported, with the layout named.
    let not_strided = |e: PyErr| {
        let layout = t
            .getattr(intern!(py, "layout"))
            .map_or_else(|_| "?".to_string(), |l| l.to_string());
        fail(format!(
            "layout {layout} is not supported (strided tensors only): {e}"
        ))
    };
    let contiguous = t
        .call_method0(intern!(py, "is_contiguous"))
        .and_then(|c| c.is_truthy())
        .map_err(not_strided)?;
    let len: usize = t.call_method0(intern!(py, "numel"))?.extract()?;
    let dims = if contiguous || len <= 1 {
        None
    } else {
        // The slow path only: a sparse COO tensor says "not contiguous" and has strides.
        let layout = t.getattr(intern!(py, "layout"))?;
        if !layout.is(api.strided.bind(py)) {
            return Err(fail(format!(
                "layout {layout} is not supported (strided tensors only)"
            )));
        }
        let shape: Vec<usize> = t.getattr(intern!(py, "shape"))?.extract()?;
        let strides: Vec<isize> = t
            .call_method0(intern!(py, "stride"))
            .and_then(|s| s.extract())
            .map_err(not_strided)?;
        match dense_dims(&shape, &strides) {
            Some(d) => Some(d),
            None => {
                return Err(fail(format!(
                    "is not contiguous (shape {shape:?}, strides {strides:?}); pass a \
                     contiguous tensor (gradients from autograd are)"
                )))
            }
        }
    };
    let addr: usize = t
        .call_method0(intern!(py, "data_ptr"))
        .and_then(|a| a.extract())
        .map_err(not_strided)?;
    check_place(addr, len, dtype).map_err(fail)?;
    Ok(Buffer {
        pos,
        dtype,
        addr,
        len,
        dims,
    })
}

fn numpy_buffer(
    api: &NumpyApi,
    a: &Bound<'_, PyAny>,
    pos: usize,
    access: Access,
) -> PyResult<Buffer> {
    let py = a.py();
    let fail = |what: String| unsupported(py, Kind::NumPy, Role::Tensors, pos, what);
    let dt = a.getattr(intern!(py, "dtype"))?;
    let dtype = if dt.is(api.f32.bind(py)) || dt.eq(api.f32.bind(py))? {
        DType::F32
    } else if dt.is(api.f16.bind(py)) || dt.eq(api.f16.bind(py))? {
        DType::F16
    } else if match numpy_bf16(py)? {
        Some(b) => dt.is(b.bind(py)) || dt.eq(b.bind(py))?,
        None => false,
    } {
        DType::BF16
    } else {
        return Err(fail(format!(
            "dtype {dt} is not supported (native-endian float32, float16 and \
             ml_dtypes.bfloat16 are)"
        )));
    };
    let iface = a.getattr(intern!(py, "__array_interface__"))?;
    let iface = iface.cast::<PyDict>()?;
    let (addr, readonly): (usize, bool) = entry(iface, intern!(py, "data"))?.extract()?;
    let shape: Vec<usize> = entry(iface, intern!(py, "shape"))?.extract()?;
    let strides = entry(iface, intern!(py, "strides"))?;
    let len = shape.iter().try_fold(1usize, |n, &s| n.checked_mul(s));
    let Some(len) = len else {
        return Err(fail(format!("shape {shape:?} is too large")));
    };
    if access == Access::Write && readonly {
        return Err(fail("is read-only (flags.writeable is False)".into()));
    }
    let dims = if strides.is_none() || len <= 1 {
        None
    } else {
        let bytes: Vec<isize> = strides.extract()?;
        let size = dtype.size_of() as isize;
        let elems: Option<Vec<isize>> = bytes
            .iter()
            .map(|&b| (b % size == 0).then_some(b / size))
            .collect();
        match elems.and_then(|e| dense_dims(&shape, &e)) {
            Some(d) if is_row_major(&d) => None,
            Some(d) => Some(d),
            None => {
                return Err(fail(format!(
                    "is not contiguous (shape {shape:?}, strides {bytes:?} bytes); pass \
                     numpy.ascontiguousarray(...)"
                )))
            }
        }
    };
    check_place(addr, len, dtype).map_err(fail)?;
    Ok(Buffer {
        pos,
        dtype,
        addr,
        len,
        dims,
    })
}

fn entry<'py>(d: &Bound<'py, PyDict>, k: &Bound<'py, PyString>) -> PyResult<Bound<'py, PyAny>> {
    d.get_item(k)?
        .ok_or_else(|| PyTypeError::new_err("malformed __array_interface__"))
}

/// Alignment and address-space checks; a zero-length buffer may sit anywhere (even at 0).
fn check_place(addr: usize, len: usize, dtype: DType) -> Result<(), String> {
    if len == 0 {
        return Ok(());
    }
    if addr == 0 {
        return Err("has no data (null pointer)".into());
    }
    if !addr.is_multiple_of(dtype.size_of()) {
        return Err(format!(
            "data at {addr:#x} is not aligned to its {}-byte elements",
            dtype.size_of()
        ));
    }
    let bytes = len.checked_mul(dtype.size_of());
    match bytes.and_then(|b| addr.checked_add(b)) {
        Some(end) if end <= isize::MAX as usize => Ok(()),
        _ => Err(format!(
            "{len} elements at {addr:#x} pass the end of the address space"
        )),
    }
}

/// The dimensions of size > 1 as `(size, stride)` in logical order when the elements fill one
/// dense block exactly once (in some dimension order); `None` otherwise.
fn dense_dims(shape: &[usize], strides: &[isize]) -> Option<Vec<(usize, usize)>> {
    if shape.len() != strides.len() {
        return None;
    }
    let mut dims = Vec::new();
    for (&size, &stride) in shape.iter().zip(strides) {
        if size > 1 {
            if stride <= 0 {
                return None;
            }
            dims.push((size, stride as usize));
        }
    }
    let mut by_stride = dims.clone();
    by_stride.sort_by_key(|&(_, stride)| stride);
    let mut expect = 1usize;
    for (size, stride) in by_stride {
        if stride != expect {
            return None;
        }
        expect = expect.checked_mul(size)?;
    }
    Some(dims)
}

fn is_row_major(dims: &[(usize, usize)]) -> bool {
    dims.windows(2).all(|w| w[0].1 > w[1].1)
}

/// Read-only views of validated buffers.
///
/// # Safety
/// Every buffer must have come from [`collect`] in this call, and its owner must be alive and
/// not resized or freed until the views are dropped.
pub(crate) unsafe fn views(bufs: &[Buffer]) -> Vec<Grad<'_>> {
    bufs.iter()
        .map(|b| {
            if b.len == 0 {
                return match b.dtype {
                    DType::F32 => Grad::F32(&[]),
                    DType::F16 => Grad::F16(&[]),
                    DType::BF16 => Grad::BF16(&[]),
                };
            }
            // SAFETY: `collect` checked that `addr` is non-null and aligned and that `len`
            // elements fit in the address space; the owner (a live CPU tensor or array, held
            // by the caller) holds that many initialised elements of this dtype at `addr`.
            unsafe {
                match b.dtype {
                    DType::F32 => {
                        Grad::F32(std::slice::from_raw_parts(b.addr as *const f32, b.len))
                    }
                    DType::F16 => {
                        Grad::F16(std::slice::from_raw_parts(b.addr as *const f16, b.len))
                    }
                    DType::BF16 => {
                        Grad::BF16(std::slice::from_raw_parts(b.addr as *const bf16, b.len))
                    }
                }
            }
        })
        .collect()
}

/// Mutable views of validated buffers.
///
/// # Safety
/// As for [`views`], and the buffers must have been collected with [`Access::Write`] (so they
/// are writable and pairwise disjoint), with no other view of them alive.
pub(crate) unsafe fn views_mut(bufs: &[Buffer]) -> Vec<GradMut<'_>> {
    bufs.iter()
        .map(|b| {
            if b.len == 0 {
                return match b.dtype {
                    DType::F32 => GradMut::F32(&mut []),
                    DType::F16 => GradMut::F16(&mut []),
                    DType::BF16 => GradMut::BF16(&mut []),
                };
            }
            // SAFETY: as in `views`; in addition `collect` proved with `first_overlap` that no
            // two buffers share a byte and that each is writable, so each `&mut` is unique.
            unsafe {
                match b.dtype {
                    DType::F32 => {
                        GradMut::F32(std::slice::from_raw_parts_mut(b.addr as *mut f32, b.len))
                    }
                    DType::F16 => {
                        GradMut::F16(std::slice::from_raw_parts_mut(b.addr as *mut f16, b.len))
                    }
                    DType::BF16 => {
                        GradMut::BF16(std::slice::from_raw_parts_mut(b.addr as *mut bf16, b.len))
                    }
                }
            }
        })
        .collect()
}

/// A Python value for a dtype: `"float32"`, `"float16"`, `"bfloat16"`.
pub(crate) fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "float32",
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_dims_accepts_permutations_and_refuses_gaps() {
        assert_eq!(dense_dims(&[2, 3], &[3, 1]), Some(vec![(2, 3), (3, 1)]));
        // channels_last NCHW (1, 3, 2, 2): strides (12, 1, 6, 3)
        let d = dense_dims(&[1, 3, 2, 2], &[12, 1, 6, 3]).unwrap();
        assert_eq!(d, vec![(3, 1), (2, 6), (2, 3)]);
        let b = Buffer {
            pos: 0,
            dtype: DType::F32,
            addr: 0,
            len: 12,
            dims: Some(d),
        };
        // memory index 1 is channel 1 at (0, 0): logical index 4
        assert_eq!(b.logical_index(1), 4);
        assert_eq!(b.logical_index(3), 1);
        assert_eq!(dense_dims(&[2, 3], &[4, 1]), None); // a gap
        assert_eq!(dense_dims(&[2, 3], &[0, 1]), None); // broadcast
        assert_eq!(dense_dims(&[2, 3], &[-3, 1]), None); // reversed
        assert_eq!(dense_dims(&[3, 1], &[1, 7]), Some(vec![(3, 1)])); // size-1 strides ignored
    }
}
