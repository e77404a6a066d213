//! Overlap checks for bindings that build gradient views from raw memory (the C ABI, the
//! Python package): two `&mut` views of one memory are undefined behaviour in Rust even if
//! nothing is ever written through them, so a binding must refuse aliased buffers *before*
//! building the views. This module holds the check once, as safe code over addresses.

/// A buffer's place in memory: its first byte's address and its length in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// Address of the first byte.
    pub addr: usize,
    /// Length in bytes (a zero-length span overlaps nothing).
    pub len: usize,
}

/// A pair of spans that share at least one byte, as `(i, j)` with `i < j` (indices into
/// `spans`): the first such pair met sweeping the spans in address order; `None` when all spans
/// are disjoint. Zero-length spans never overlap anything. A span whose end would
/// pass the address space counts as reaching its end (it overlaps everything above it).
/// `O(n log n)`; allocates one index vector.
///
/// ```
/// use gradclip::overlap::{first_overlap, Span};
/// let a = Span { addr: 1000, len: 16 };
/// let b = Span { addr: 1016, len: 8 }; // adjacent: fine
/// let c = Span { addr: 1012, len: 4 }; // inside a
/// assert_eq!(first_overlap(&[a, b]), None);
/// assert_eq!(first_overlap(&[a, b, c]), Some((0, 2)));
/// ```
pub fn first_overlap(spans: &[Span]) -> Option<(usize, usize)> {
    let mut order: Vec<usize> = (0..spans.len()).filter(|&i| spans[i].len > 0).collect();
    order.sort_unstable_by_key(|&i| (spans[i].addr, i));
    // Sweep in address order keeping the span that reaches furthest so far.
    let mut reach: Option<(usize, usize)> = None; // (end, index)
    for &i in &order {
        let s = spans[i];
        if let Some((end, j)) = reach {
            if s.addr < end {
                return Some((i.min(j), i.max(j)));
            }
        }
        let end = s.addr.saturating_add(s.len);
        if reach.is_none_or(|(e, _)| end > e) {
            reach = Some((end, i));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(addr: usize, len: usize) -> Span {
        Span { addr, len }
    }

    #[test]
    fn disjoint_adjacent_and_empty_spans_pass() {
        assert_eq!(first_overlap(&[]), None);
        assert_eq!(
            first_overlap(&[span(0, 4), span(4, 4), span(8, 0), span(8, 4)]),
            None
        );
        assert_eq!(
            first_overlap(&[span(10, 0), span(10, 0), span(5, 10)]),
            None
        );
    }

    #[test]
    fn overlaps_are_found_in_any_order() {
        assert_eq!(first_overlap(&[span(0, 8), span(4, 8)]), Some((0, 1)));
        assert_eq!(first_overlap(&[span(4, 8), span(0, 8)]), Some((0, 1)));
        // the same buffer twice
        assert_eq!(
            first_overlap(&[span(64, 4), span(0, 4), span(64, 4)]),
            Some((0, 2))
        );
        // a long span covering a later one that is not its neighbour in address order
        assert_eq!(
            first_overlap(&[span(0, 100), span(10, 5), span(50, 5)]),
            Some((0, 1))
        );
        // end at the top of the address space saturates instead of wrapping
        assert_eq!(
            first_overlap(&[span(usize::MAX - 4, 100), span(usize::MAX - 1, 1)]),
            Some((0, 1))
        );
    }

    #[test]
    fn agrees_with_the_quadratic_check() {
        let mut x = 12345u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..2000 {
            let n = (next() % 6) as usize;
            let spans: Vec<Span> = (0..n)
                .map(|_| span((next() % 64) as usize, (next() % 12) as usize))
                .collect();
            let any = (0..n).any(|i| {
                (i + 1..n).any(|j| {
                    let (a, b) = (spans[i], spans[j]);
                    a.len > 0 && b.len > 0 && a.addr < b.addr + b.len && b.addr < a.addr + a.len
                })
            });
            let got = first_overlap(&spans);
            assert_eq!(got.is_some(), any, "{spans:?}");
            if let Some((i, j)) = got {
                let (a, b) = (spans[i], spans[j]);
                assert!(i < j && a.addr < b.addr + b.len && b.addr < a.addr + a.len);
            }
        }
    }
}
