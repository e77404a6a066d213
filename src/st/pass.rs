//! One pass over a file's tensor data: the data is cut into pieces in file order, a few threads
//! take the next piece, read it into their own buffer and take its partials; the partials are
//! merged in the order of the library's reduction tree whatever order the pieces finish in; and
//! when the pass writes (the second pass of `clip`), each piece is scaled while it is in cache
//! and written out in file order.
//!
//! Why this shape (measured, see `notes/clip-write.md`): the first version walked the reduction
//! tree with `rayon::join`, reading from several places of the file at once, and forked again
//! inside every piece; the write pass was one thread that read, reduced, scaled and wrote in turn.
//! Here every thread works on whole pieces, in file order (sequential reads for the disk's
//! read-ahead), nothing inside a piece is handed to another thread, and while one thread writes
//! its piece the others read and reduce the next ones: the write, which the kernel performs one
//! at a time per file anyway, is never waiting for a read.

use std::collections::HashMap;
use std::io::Write;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

use super::data::{file_offset, into_le_bytes, scratch_bytes, slot, Scratch};
use super::error::StError;
use super::header::Layout;
use super::source::Source;
use crate::clip::scale_;
use crate::grads::GradMut;
use crate::norm::total_norm_partial;
use crate::norm_type::NormType;
use crate::parallel::buffer_split;
use crate::partial::NormPartial;

/// Threads that a writing pass uses at most. The kernel copies buffered writes into one file one
/// at a time (the file's lock), so more threads than this would only hold full buffers waiting
/// for their turn; two already keep the writes going on a 2-core machine.
const WRITING_THREADS: usize = 4;

/// What a writing pass does with the data besides taking its partials.
pub(super) struct Output<'a> {
    /// The file's first bytes (length and header), written before the data.
    pub head: &'a [u8],
    /// `Some(coef)`: every element becomes `round_to_dtype(f32(x) * f32(coef))` before it is
    /// written; `None`: written as read.
    pub scale: Option<f64>,
    /// Each tensor's partial as the first pass measured it: one that differs now is
    /// [`StError::Changed`].
    pub expected: &'a [NormPartial],
    /// Where the head and the data go, in file order.
    pub w: &'a mut (dyn Write + Send),
}

/// One unit of work: what one buffer holds.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    /// Consecutive whole tensors that fit in one buffer side by side (each in its own slot).
    Together(Range<usize>),
    /// The `len` bytes at byte `at` of tensor `tensor`: a node of its reduction tree that fits
    /// in one buffer (the tensor itself when it fits).
    Part {
        tensor: usize,
        at: usize,
        len: usize,
    },
}

/// Where the next piece starts, and its number in file order.
struct Cursor {
    tensor: usize,
    at: usize,
    seq: u64,
}

/// The piece that starts at the cursor, moving the cursor past it; `None` at the end.
///
/// A tensor whose slot fits in a buffer (`cap` bytes) starts a run of consecutive such tensors
/// that fit together; a larger one is cut where the reduction tree cuts it (the chunk-aligned
/// midpoint, again and again) until each part fits, exactly as the library would cut it.
fn next_piece(layout: &Layout, cap: usize, c: &mut Cursor) -> Option<(u64, Piece)> {
    let ts = &layout.tensors;
    let t = ts.get(c.tensor)?;
    let len = t.end - t.start;
    let piece = if c.at == 0 && slot(len) <= cap {
        let (mut j, mut sum) = (c.tensor, 0);
        while j < ts.len() && sum + slot(ts[j].end - ts[j].start) <= cap {
            sum += slot(ts[j].end - ts[j].start);
            j += 1;
        }
        let p = Piece::Together(c.tensor..j);
        c.tensor = j;
        p
    } else {
        let (at, part) = node_path(len, t.dtype.size_of(), cap, c.at, &mut |_, _, _| {});
        debug_assert_eq!(at, c.at);
        let p = Piece::Part {
            tensor: c.tensor,
            at,
            len: part,
        };
        c.at += part;
        if c.at >= len {
            c.tensor += 1;
            c.at = 0;
        }
        p
    };
    let seq = c.seq;
    c.seq += 1;
    Some((seq, piece))
}

/// Walks a tensor's reduction tree (`len` bytes of `size`-byte elements) from the root down to
/// the piece (the node of at most `cap` bytes, or a single chunk) that holds byte `at`, calling
/// `step(start, len, cut)` for every node above it; returns the piece as `(start, len)`.
fn node_path(
    len: usize,
    size: usize,
    cap: usize,
    at: usize,
    step: &mut dyn FnMut(usize, usize, usize),
) -> (usize, usize) {
    let (mut start, mut n) = (0, len);
    while n > cap {
        let Some(mid) = buffer_split(n / size) else {
            break;
        };
        let cut = mid * size;
        step(start, n, cut);
        if at < start + cut {
            n = cut;
        } else {
            start += cut;
            n -= cut;
        }
    }
    (start, n)
}

/// Partials of nodes of the reduction trees whose sibling is not done yet, by (tensor, start,
/// len), and each tensor's partial once all of it is done.
struct Merged {
    nodes: HashMap<(usize, usize, usize), NormPartial>,
    tensors: Vec<Option<NormPartial>>,
}

/// The writer and the number of the next piece to write.
struct Turn<'a> {
    next: u64,
    w: &'a mut (dyn Write + Send),
}

/// The state the threads of a pass share.
struct Shared<'a> {
    cursor: Mutex<Cursor>,
    merged: Mutex<Merged>,
    /// Whose turn it is to write, with the condition the threads wait on for theirs.
    turn: Option<(Mutex<Turn<'a>>, Condvar)>,
    stop: AtomicBool,
    /// The failure of the earliest piece (in file order) that failed.
    failed: Mutex<Option<(u64, StError)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared<'_> {
    fn fail(&self, seq: u64, e: StError) {
        {
            let mut f = lock(&self.failed);
            if f.as_ref().is_none_or(|(s, _)| seq < *s) {
                *f = Some((seq, e));
            }
        }
        self.halt();
    }

    /// Stops the other threads: no new piece is taken, and a thread waiting for its turn to
    /// write gives up.
    fn halt(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some((m, cv)) = &self.turn {
            // Under the lock, so a thread between its check of `stop` and its wait cannot miss
            // the notification.
            let _g = lock(m);
            cv.notify_all();
        }
    }
}

/// Sets `stop` if the thread unwinds (a panic), so the others do not wait for it forever.
struct HaltOnUnwind<'a, 'b>(&'a Shared<'b>);

impl Drop for HaltOnUnwind<'_, '_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.halt();
        }
    }
}

/// The partial of `g` with the bits of the library's own reduction of `g`, computed on this
/// thread: the library's tree is followed down to single chunks (which the library never hands
/// to another thread), each chunk reduced and then, with `scale`, scaled in place right away,
/// while it is in the cache.
fn partial_and_scale(
    g: GradMut<'_>,
    norm_type: NormType,
    scale: Option<f64>,
) -> Result<NormPartial, StError> {
    if let Some(mid) = buffer_split(g.len()) {
        let (l, r) = split_at_mut(g, mid);
        let a = partial_and_scale(l, norm_type, scale)?;
        let b = partial_and_scale(r, norm_type, scale)?;
        return Ok(a.merge(b));
    }
    let mut g = g;
    let p = total_norm_partial(&[g.as_grad()], norm_type).map_err(StError::Invalid)?;
    if let Some(c) = scale {
        scale_(std::slice::from_mut(&mut g), c).map_err(StError::Invalid)?;
    }
    Ok(p)
}

fn split_at_mut(g: GradMut<'_>, mid: usize) -> (GradMut<'_>, GradMut<'_>) {
    match g {
        GradMut::F32(s) => {
            let (a, b) = s.split_at_mut(mid);
            (GradMut::F32(a), GradMut::F32(b))
        }
        GradMut::F16(s) => {
            let (a, b) = s.split_at_mut(mid);
            (GradMut::F16(a), GradMut::F16(b))
        }
        GradMut::BF16(s) => {
            let (a, b) = s.split_at_mut(mid);
            (GradMut::BF16(a), GradMut::BF16(b))
        }
    }
}

struct Pass<'p, S: ?Sized> {
    src: &'p S,
    layout: &'p Layout,
    norm_type: NormType,
    cap: usize,
    head: &'p [u8],
    scale: Option<f64>,
    expected: Option<&'p [NormPartial]>,
}

impl<S: Source + ?Sized> Pass<'_, S> {
    /// Takes pieces until there are none left or the pass stops.
    fn work(&self, sh: &Shared<'_>) {
        let _halt = HaltOnUnwind(sh);
        let mut scratch = Scratch::with_cap(self.cap);
        while !sh.stop.load(Ordering::SeqCst) {
            let Some((seq, piece)) = next_piece(self.layout, self.cap, &mut lock(&sh.cursor))
            else {
                break;
            };
            if let Err(e) = self.piece(sh, seq, piece, &mut scratch) {
                sh.fail(seq, e);
                break;
            }
        }
    }

    /// Reads one piece, takes its partials (scaling it when the pass does), writes it when its
    /// turn comes, and merges its partials.
    fn piece(
        &self,
        sh: &Shared<'_>,
        seq: u64,
        piece: Piece,
        scratch: &mut Scratch,
    ) -> Result<(), StError> {
        let (nt, scale) = (self.norm_type, self.scale);
        match piece {
            Piece::Together(range) => {
                let ts = &self.layout.tensors[range.clone()];
                let mut views = scratch.read_tensors(self.src, self.layout, ts)?;
                let mut parts = Vec::with_capacity(views.len());
                for g in &mut views {
                    parts.push(partial_and_scale(g.reborrow(), nt, scale)?);
                }
                self.write(sh, seq, &mut views)?;
                for (i, p) in range.zip(parts) {
                    self.tensor_done(sh, i, p)?;
                }
            }
            Piece::Part { tensor, at, len } => {
                let t = &self.layout.tensors[tensor];
                let offset = file_offset(self.layout, t) + at as u64;
                let mut g = scratch.read(self.src, offset, len, t.dtype)?;
                let p = partial_and_scale(g.reborrow(), nt, scale)?;
                self.write(sh, seq, std::slice::from_mut(&mut g))?;
                if let Some(whole) = self.merge_part(sh, tensor, at, len, p) {
                    self.tensor_done(sh, tensor, whole)?;
                }
            }
        }
        Ok(())
    }

    /// Writes piece `seq` once every piece before it is written (the head goes before piece 0).
    /// Returns without writing when the pass stops meanwhile.
    fn write(&self, sh: &Shared<'_>, seq: u64, views: &mut [GradMut<'_>]) -> Result<(), StError> {
        let Some((m, cv)) = &sh.turn else {
            return Ok(());
        };
        let mut turn = lock(m);
        while turn.next != seq {
            if sh.stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            turn = cv.wait(turn).unwrap_or_else(|e| e.into_inner());
        }
        let w = &mut *turn.w;
        let werr = |e: std::io::Error| StError::Write(e.to_string());
        if seq == 0 {
            w.write_all(self.head).map_err(werr)?;
        }
        for g in views {
            w.write_all(into_le_bytes(g.reborrow())).map_err(werr)?;
        }
        turn.next += 1;
        cv.notify_all();
        Ok(())
    }

    /// Records the partial of part `(at, len)` of `tensor` and merges it with its sibling in the
    /// tree, and upwards, as far as the siblings are done; the tensor's partial once every part
    /// of it is in.
    fn merge_part(
        &self,
        sh: &Shared<'_>,
        tensor: usize,
        at: usize,
        len: usize,
        p: NormPartial,
    ) -> Option<NormPartial> {
        let t = &self.layout.tensors[tensor];
        let mut above = Vec::new();
        node_path(
            t.end - t.start,
            t.dtype.size_of(),
            self.cap,
            at,
            &mut |s, n, cut| above.push((s, n, cut)),
        );
        let mut m = lock(&sh.merged);
        let (mut start, mut n, mut acc) = (at, len, p);
        for &(ps, pn, cut) in above.iter().rev() {
            let left = start == ps;
            let sibling = if left {
                (ps + cut, pn - cut)
            } else {
                (ps, cut)
            };
            match m.nodes.remove(&(tensor, sibling.0, sibling.1)) {
                Some(q) => {
                    acc = if left { acc.merge(q) } else { q.merge(acc) };
                    (start, n) = (ps, pn);
                }
                None => {
                    m.nodes.insert((tensor, start, n), acc);
                    return None;
                }
            }
        }
        Some(acc)
    }

    /// Records tensor `i`'s partial; when the pass checks, one that differs from the measured
    /// one means the file changed in between.
    fn tensor_done(&self, sh: &Shared<'_>, i: usize, p: NormPartial) -> Result<(), StError> {
        if let Some(expected) = self.expected {
            if bytemuck::bytes_of(&p) != bytemuck::bytes_of(&expected[i]) {
                return Err(StError::Changed {
                    name: self.layout.tensors[i].name.clone(),
                });
            }
        }
        lock(&sh.merged).tensors[i] = Some(p);
        Ok(())
    }
}

/// The number of threads for a pass of `layout`: `want`, at most `limit`, and no more than
/// there are pieces.
fn threads(layout: &Layout, cap: usize, want: usize, limit: usize) -> usize {
    let want = want.clamp(1, limit);
    let mut c = Cursor {
        tensor: 0,
        at: 0,
        seq: 0,
    };
    let mut pieces = 0;
    while pieces < want && next_piece(layout, cap, &mut c).is_some() {
        pieces += 1;
    }
    pieces.max(1)
}

/// Each tensor's partial, in file order, with the bits of the library's reduction of that
/// tensor (for any thread count and buffer size): one pass over the data of `src`, each thread
/// holding one buffer of at most [`SCRATCH_BYTES`](super::SCRATCH_BYTES). With `out`, the pass
/// also writes the file (head, then the data, scaled or not) to `out.w` in file order and fails
/// with [`StError::Changed`] when a tensor's partial differs from `out.expected`; on any error
/// part of the file may have been written.
///
/// The threads are rayon's thread count (`RAYON_NUM_THREADS`, or one per CPU; a writing pass
/// uses at most [`WRITING_THREADS`]), but the pass runs on threads of its own, started for it:
/// nothing in it waits on rayon's pool.
pub(super) fn pass<S: Source + ?Sized>(
    src: &S,
    layout: &Layout,
    norm_type: NormType,
    out: Option<Output<'_>>,
) -> Result<Vec<NormPartial>, StError> {
    run(
        src,
        layout,
        norm_type,
        out,
        scratch_bytes(),
        rayon::current_num_threads(),
    )
}

/// [`pass`] with buffers of `cap` bytes and `threads` threads (at most).
fn run<S: Source + ?Sized>(
    src: &S,
    layout: &Layout,
    norm_type: NormType,
    out: Option<Output<'_>>,
    cap: usize,
    threads: usize,
) -> Result<Vec<NormPartial>, StError> {
    let n = layout.tensors.len();
    let (head, scale, expected, w) = match out {
        Some(o) => {
            if o.expected.len() != n {
                return Err(StError::Format(
                    "the layout is not the one that was measured".into(),
                ));
            }
            (o.head, o.scale, Some(o.expected), Some(o.w))
        }
        None => (&[][..], None, None, None),
    };
    let limit = if w.is_some() {
        WRITING_THREADS
    } else {
        usize::MAX
    };
    let threads = self::threads(layout, cap, threads, limit);
    let sh = Shared {
        cursor: Mutex::new(Cursor {
            tensor: 0,
            at: 0,
            seq: 0,
        }),
        merged: Mutex::new(Merged {
            nodes: HashMap::new(),
            tensors: vec![None; n],
        }),
        turn: w.map(|w| (Mutex::new(Turn { next: 0, w }), Condvar::new())),
        stop: AtomicBool::new(false),
        failed: Mutex::new(None),
    };
    let p = Pass {
        src,
        layout,
        norm_type,
        cap,
        head,
        scale,
        expected,
    };
    std::thread::scope(|s| {
        for _ in 1..threads {
            // A thread that cannot be started leaves its share to the others.
            let _ = std::thread::Builder::new()
                .name("gradclip-read".into())
                .spawn_scoped(s, || p.work(&sh));
        }
        p.work(&sh);
    });
    if let Some((_, e)) = sh.failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    if let Some((m, _)) = sh.turn {
        let Turn { next, w } = m.into_inner().unwrap_or_else(|e| e.into_inner());
        // No tensor, so no piece: the head alone.
        if next == 0 {
            w.write_all(head)
                .map_err(|e| StError::Write(e.to_string()))?;
        }
    }
    let merged = sh.merged.into_inner().unwrap_or_else(|e| e.into_inner());
    debug_assert!(merged.nodes.is_empty());
    merged
        .tensors
        .into_iter()
        .map(|p| p.ok_or_else(|| StError::Format("a tensor was not read".into())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;
    use crate::grads::Grad;
    use half::{bf16, f16};

    const KIB: usize = 1024;

    #[test]
    fn pieces_cover_every_byte_in_order_and_cut_where_the_tree_cuts() {
        // Element size 4, chunk of 2^16 elements = 256 KiB; buffers of 256 KiB.
        let cap = 256 * KIB;
        let chunk = 4 << 16;
        for len in [4, chunk - 4, chunk, chunk + 4, 3 * chunk + 8, 7 * chunk] {
            let mut at = 0;
            let mut parts = Vec::new();
            while at < len {
                let (s, n) = node_path(len, 4, cap, at, &mut |_, _, _| {});
                assert_eq!(s, at, "len {len}");
                assert!(n > 0 && n <= cap, "len {len}: piece of {n}");
                parts.push(n);
                at += n;
            }
            assert_eq!(parts.iter().sum::<usize>(), len);
            // Every cut is at a chunk boundary.
            let mut pos = 0;
            for n in &parts[..parts.len() - 1] {
                pos += n;
                assert_eq!(pos % chunk, 0, "len {len}: cut at {pos}");
            }
        }
    }

    /// A safetensors file of tensors `(dtype, elements)` with pseudo-random values, the data
    /// starting `shift` bytes after an 8-byte boundary (so the tensors are misaligned when it is
    /// odd), and each tensor's elements as f32.
    fn file(tensors: &[(DType, usize)], shift: usize) -> (Vec<u8>, Vec<Vec<f32>>) {
        let mut header = String::from("{");
        let mut data = Vec::new();
        let mut values = Vec::new();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for (i, &(dtype, n)) in tensors.iter().enumerate() {
            let start = data.len();
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let f = ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 8.0;
                match dtype {
                    DType::F32 => data.extend_from_slice(&f.to_le_bytes()),
                    DType::F16 => data.extend_from_slice(&f16::from_f32(f).to_le_bytes()),
                    DType::BF16 => data.extend_from_slice(&bf16::from_f32(f).to_le_bytes()),
                }
                v.push(match dtype {
                    DType::F32 => f,
                    DType::F16 => f16::from_f32(f).to_f32(),
                    DType::BF16 => bf16::from_f32(f).to_f32(),
                });
            }
            values.push(v);
            let name = match dtype {
                DType::F32 => "F32",
                DType::F16 => "F16",
                DType::BF16 => "BF16",
            };
            if i > 0 {
                header.push(',');
            }
            header += &format!(
                "\"t{i}\":{{\"dtype\":\"{name}\",\"shape\":[{n}],\"data_offsets\":[{start},{}]}}",
                data.len()
            );
        }
        header.push('}');
        while (8 + header.len()) % 8 != shift % 8 {
            header.push(' ');
        }
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&data);
        (bytes, values)
    }

    /// The library's own partial of each tensor (one call over the whole tensor).
    fn reference(
        values: &[Vec<f32>],
        tensors: &[(DType, usize)],
        nt: NormType,
    ) -> Vec<NormPartial> {
        values
            .iter()
            .zip(tensors)
            .map(|(v, &(dtype, _))| {
                let p = match dtype {
                    DType::F32 => total_norm_partial(&[Grad::F32(v)], nt),
                    DType::F16 => {
                        let h: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
                        total_norm_partial(&[Grad::F16(&h)], nt)
                    }
                    DType::BF16 => {
                        let h: Vec<bf16> = v.iter().map(|&x| bf16::from_f32(x)).collect();
                        total_norm_partial(&[Grad::BF16(&h)], nt)
                    }
                };
                p.unwrap()
            })
            .collect()
    }

    fn bits(p: &[NormPartial]) -> Vec<u8> {
        p.iter()
            .flat_map(|p| bytemuck::bytes_of(p).to_vec())
            .collect()
    }

    /// Tensors small and large, of every dtype, with odd lengths and empty ones: runs of small
    /// tensors share a buffer, large ones are cut into many pieces.
    fn mixed() -> Vec<(DType, usize)> {
        let chunk = 1 << 16;
        vec![
            (DType::F32, 3),
            (DType::F16, 0),
            (DType::BF16, 5),
            (DType::F32, 5 * chunk + 17),
            (DType::F16, 1),
            (DType::F16, 9 * chunk + 3),
            (DType::F32, 0),
            (DType::BF16, 2 * chunk - 1),
            (DType::F32, chunk),
            (DType::F32, 7),
        ]
    }

    #[test]
    fn partials_have_the_library_bits_for_any_buffer_and_thread_count() {
        let tensors = mixed();
        for shift in [0, 1, 2] {
            let (bytes, values) = file(&tensors, shift);
            let layout = super::super::parse(&bytes).unwrap();
            for nt in [NormType::L2, NormType::L1, NormType::Inf, NormType::P(3.0)] {
                let want = bits(&reference(&values, &tensors, nt));
                for cap in [256 * KIB, 512 * KIB + 8, 1024 * KIB] {
                    for threads in [1, 2, 3, 7] {
                        let got = run(&bytes[..], &layout, nt, None, cap, threads).unwrap();
                        assert_eq!(bits(&got), want, "{nt:?} cap {cap} threads {threads}");
                    }
                }
            }
        }
    }

    #[test]
    fn written_file_is_the_head_then_the_scaled_data_in_order() {
        let tensors = mixed();
        let (bytes, values) = file(&tensors, 1);
        let layout = super::super::parse(&bytes).unwrap();
        let nt = NormType::L2;
        let expected = reference(&values, &tensors, nt);
        for scale in [None, Some(0.3), Some(f64::from(f32::MIN_POSITIVE))] {
            // What every element becomes, by the library's own scale_ on whole tensors.
            let mut want = layout.head().to_vec();
            for (v, &(dtype, _)) in values.iter().zip(&tensors) {
                let c = scale.unwrap_or(1.0);
                match dtype {
                    DType::F32 => {
                        let mut w = v.clone();
                        scale_(&mut [GradMut::F32(&mut w)], c).unwrap();
                        w.iter()
                            .for_each(|x| want.extend_from_slice(&x.to_le_bytes()));
                    }
                    DType::F16 => {
                        let mut w: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
                        scale_(&mut [GradMut::F16(&mut w)], c).unwrap();
                        w.iter()
                            .for_each(|x| want.extend_from_slice(&x.to_le_bytes()));
                    }
                    DType::BF16 => {
                        let mut w: Vec<bf16> = v.iter().map(|&x| bf16::from_f32(x)).collect();
                        scale_(&mut [GradMut::BF16(&mut w)], c).unwrap();
                        w.iter()
                            .for_each(|x| want.extend_from_slice(&x.to_le_bytes()));
                    }
                }
            }
            assert_eq!(want.len(), bytes.len());
            if scale.is_none() {
                assert_eq!(want, bytes);
            }
            for (cap, threads) in [(256 * KIB, 1), (256 * KIB, 4), (1024 * KIB, 2)] {
                let mut got = Vec::new();
                let out = Output {
                    head: layout.head(),
                    scale,
                    expected: &expected,
                    w: &mut got,
                };
                let parts = run(&bytes[..], &layout, nt, Some(out), cap, threads).unwrap();
                assert_eq!(bits(&parts), bits(&expected));
                assert!(got == want, "{scale:?} cap {cap} threads {threads}");
            }
        }
    }

    #[test]
    fn a_tensor_whose_partial_differs_is_named_and_a_short_source_is_a_read_error() {
        let tensors = mixed();
        let (bytes, values) = file(&tensors, 0);
        let layout = super::super::parse(&bytes).unwrap();
        let nt = NormType::L2;
        let mut expected = reference(&values, &tensors, nt);
        // The measured partial of t5 (cut into many pieces) is not what the data gives now.
        expected[5] = expected[4];
        for threads in [1, 3] {
            let mut got = Vec::new();
            let out = Output {
                head: layout.head(),
                scale: Some(0.5),
                expected: &expected,
                w: &mut got,
            };
            match run(&bytes[..], &layout, nt, Some(out), 256 * KIB, threads) {
                Err(StError::Changed { name }) => assert_eq!(name, "t5"),
                other => panic!("{other:?}"),
            }
        }
        let short = &bytes[..bytes.len() - 3];
        for threads in [1, 3] {
            match run(short, &layout, nt, None, 256 * KIB, threads) {
                Err(StError::Read { .. }) => {}
                other => panic!("{other:?}"),
            }
        }
    }

    /// A writer that fails after `left` bytes, and counts the calls made after it failed. It is
    /// slow, so the threads with the next pieces are waiting for their turn when it fails.
    struct Failing {
        left: usize,
        failed: bool,
        calls_after: usize,
    }

    impl Write for Failing {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            std::thread::sleep(std::time::Duration::from_micros(300));
            if self.failed {
                self.calls_after += 1;
            }
            if buf.len() > self.left {
                self.failed = true;
                return Err(std::io::Error::other("disk full"));
            }
            self.left -= buf.len();
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failing_writer_stops_the_pass_with_its_error() {
        let tensors = mixed();
        let (bytes, values) = file(&tensors, 0);
        let layout = super::super::parse(&bytes).unwrap();
        let expected = reference(&values, &tensors, NormType::L2);
        for left in [0, 100, bytes.len() / 2] {
            for threads in [1, 2, 4] {
                let mut w = Failing {
                    left,
                    failed: false,
                    calls_after: 0,
                };
                let out = Output {
                    head: layout.head(),
                    scale: Some(0.5),
                    expected: &expected,
                    w: &mut w,
                };
                match run(
                    &bytes[..],
                    &layout,
                    NormType::L2,
                    Some(out),
                    256 * KIB,
                    threads,
                ) {
                    Err(StError::Write(why)) => assert!(why.contains("disk full"), "{why}"),
                    other => panic!("{left} {threads}: {other:?}"),
                }
                // No thread writes a later piece after the failed one.
                assert!(w.failed);
                assert_eq!(w.calls_after, 0, "{left} {threads}");
            }
        }
    }

    /// A writer into a `Vec` that sleeps on every call, so the other threads read and reduce
    /// later pieces (and meet their failures) while earlier ones wait to be written.
    struct Slow(Vec<u8>);

    impl Write for Slow {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            std::thread::sleep(std::time::Duration::from_micros(300));
            self.0.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_slow_writer_still_gets_the_pieces_in_file_order() {
        let tensors = mixed();
        let (bytes, values) = file(&tensors, 2);
        let layout = super::super::parse(&bytes).unwrap();
        let expected = reference(&values, &tensors, NormType::L2);
        for threads in [2, 3, 4, 8] {
            let mut w = Slow(Vec::new());
            let out = Output {
                head: layout.head(),
                scale: None,
                expected: &expected,
                w: &mut w,
            };
            run(
                &bytes[..],
                &layout,
                NormType::L2,
                Some(out),
                256 * KIB,
                threads,
            )
            .unwrap();
            assert!(w.0 == bytes, "threads {threads}");
        }
    }

    /// `bytes` with the `index`th element of tensor `i` replaced by a NaN.
    fn with_nan(bytes: &[u8], layout: &Layout, i: usize, index: usize) -> Vec<u8> {
        let t = &layout.tensors[i];
        let at = file_offset(layout, t) as usize + index * t.dtype.size_of();
        let mut b = bytes.to_vec();
        match t.dtype {
            DType::F32 => b[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes()),
            DType::F16 => b[at..at + 2].copy_from_slice(&f16::NAN.to_le_bytes()),
            DType::BF16 => b[at..at + 2].copy_from_slice(&bf16::NAN.to_le_bytes()),
        }
        b
    }

    #[test]
    fn the_earliest_failure_in_file_order_is_reported_whatever_finishes_first() {
        let tensors = mixed();
        let (bytes, values) = file(&tensors, 0);
        let layout = super::super::parse(&bytes).unwrap();
        let nt = NormType::L2;
        let good = reference(&values, &tensors, nt);
        // t3 (many pieces) and t8 (one piece) no longer have their measured partials, and the
        // source ends inside t9 (the last piece): a single thread meets t3 first.
        let mut expected = good.clone();
        expected[3] = expected[0];
        expected[8] = expected[0];
        let short = &bytes[..bytes.len() - 3];
        // t5 (many pieces) differs and the source is short: the change comes first.
        let mut t5 = good.clone();
        t5[5] = t5[0];
        let cases: [(&[u8], &[NormPartial], &str); 4] = [
            (&bytes, &expected, "t3"),
            (short, &expected, "t3"),
            (short, &t5, "t5"),
            (short, &good, "read"),
        ];
        for (src, expected, want) in cases {
            for threads in [1, 2, 3, 4] {
                // Several runs: which thread finishes first varies.
                for _ in 0..5 {
                    let mut w = Slow(Vec::new());
                    let out = Output {
                        head: layout.head(),
                        scale: Some(0.5),
                        expected,
                        w: &mut w,
                    };
                    let got = run(src, &layout, nt, Some(out), 256 * KIB, threads);
                    match (&got, want) {
                        (Err(StError::Changed { name }), _) if name == want => {}
                        (Err(StError::Read { .. }), "read") => {}
                        _ => panic!("threads {threads}: want {want}, got {got:?}"),
                    }
                }
            }
        }
    }

    #[test]
    fn the_total_has_the_bits_of_get_total_norm_for_any_thread_count() {
        let tensors = mixed();
        let (bytes, values) = file(&tensors, 1);
        let layout = super::super::parse(&bytes).unwrap();
        let h16: Vec<Vec<f16>> = values
            .iter()
            .map(|v| v.iter().map(|&x| f16::from_f32(x)).collect())
            .collect();
        let hb16: Vec<Vec<bf16>> = values
            .iter()
            .map(|v| v.iter().map(|&x| bf16::from_f32(x)).collect())
            .collect();
        let grads: Vec<Grad<'_>> = tensors
            .iter()
            .enumerate()
            .map(|(i, &(dtype, _))| match dtype {
                DType::F32 => Grad::F32(&values[i]),
                DType::F16 => Grad::F16(&h16[i]),
                DType::BF16 => Grad::BF16(&hb16[i]),
            })
            .collect();
        for nt in [NormType::L2, NormType::L1, NormType::Inf, NormType::P(1.5)] {
            let want = crate::get_total_norm(&grads, nt).unwrap();
            for threads in [1, 2, 3, 8] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                // The library's own total does not depend on its thread count either.
                let lib = pool.install(|| crate::get_total_norm(&grads, nt).unwrap());
                assert_eq!(lib.to_bits(), want.to_bits(), "{nt:?} threads {threads}");
                // The file's, through the entry point `gradclip norm` uses.
                let got = pool.install(|| super::super::norms(&bytes[..], &layout, nt).unwrap());
                assert_eq!(
                    got.total_norm.to_bits(),
                    want.to_bits(),
                    "{nt:?} threads {threads}"
                );
                for cap in [256 * KIB, 1024 * KIB] {
                    let parts = run(&bytes[..], &layout, nt, None, cap, threads).unwrap();
                    let total = crate::parallel::merge_set(&parts, NormPartial::new(nt).unwrap());
                    assert_eq!(
                        total.finish().to_bits(),
                        want.to_bits(),
                        "{nt:?} cap {cap} threads {threads}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_nan_is_found_first_in_file_order_before_anything_is_written() {
        let tensors = mixed();
        let (bytes, _) = file(&tensors, 0);
        let layout = super::super::parse(&bytes).unwrap();
        // NaNs late in t3 (many pieces) and early in t5 and t9: t3's is the first in file order.
        let chunk = 1 << 16;
        let bad = with_nan(&bytes, &layout, 3, 4 * chunk + 9);
        let bad = with_nan(&bad, &layout, 5, 0);
        let bad = with_nan(&bad, &layout, 9, 0);
        for threads in [1, 2, 3, 8] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            match pool.install(|| super::super::clip(&bad[..], &layout, 1.0, NormType::L2)) {
                Err(StError::NonFinite(l)) => {
                    assert_eq!((l.tensor, l.name.as_str()), (3, "t3"), "threads {threads}");
                    assert_eq!(l.index, 4 * chunk + 9);
                    assert!(l.value.is_nan());
                }
                // No `Clipped`, so nothing can be written.
                other => panic!("threads {threads}: {other:?}"),
            }
        }
    }

    #[test]
    fn no_tensor_or_only_empty_ones_write_the_head_alone() {
        let no_tensor = {
            let header = b"{\"__metadata__\":{\"k\":\"v\"}}  ".to_vec();
            let mut b = (header.len() as u64).to_le_bytes().to_vec();
            b.extend_from_slice(&header);
            b
        };
        let (empties, _) = file(&[(DType::F32, 0), (DType::BF16, 0), (DType::F16, 0)], 0);
        for (bytes, n) in [(no_tensor, 0), (empties, 3)] {
            let layout = super::super::parse(&bytes).unwrap();
            assert_eq!(layout.tensors.len(), n);
            for threads in [1, 3] {
                let parts = run(&bytes[..], &layout, NormType::L2, None, 256 * KIB, threads);
                let parts = parts.unwrap();
                assert_eq!(parts.len(), n);
                assert!(parts.iter().all(|p| p.finish() == 0.0));
                let mut got = Vec::new();
                let out = Output {
                    head: layout.head(),
                    scale: Some(0.5),
                    expected: &parts,
                    w: &mut got,
                };
                run(
                    &bytes[..],
                    &layout,
                    NormType::L2,
                    Some(out),
                    256 * KIB,
                    threads,
                )
                .unwrap();
                assert_eq!(got, bytes, "{n} tensors, threads {threads}");
            }
        }
    }
}
