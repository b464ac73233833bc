//! Buffers kept from one forward pass to the next: the LSTM's input-side
//! gate products, `(rows, 4U)` per layer and direction (40 MiB at W3's
//! 640 rows of the full model). A fresh buffer of that size is a fresh
//! mapping from the allocator (above glibc's 32 MiB `mmap` threshold), so
//! every pass zeroed and page-faulted it again: 50 of the 216 ms of W3
//! bf16's input-side products per batch. Kept, its pages stay mapped and
//! `Vec::resize` zero-fills only growth; every value a pass reads it has
//! written first.

use std::sync::Mutex;

/// A pool of `f32` buffers, shared by the passes of one model.
#[derive(Default)]
pub(super) struct Scratch {
    bufs: Mutex<Vec<Vec<f32>>>,
}

impl Scratch {
    /// A buffer from the pool (the largest), or a new, empty one.
    pub(super) fn take(&self) -> Vec<f32> {
        let mut bufs = self.bufs.lock().unwrap_or_else(|e| e.into_inner());
        let best = (0..bufs.len()).max_by_key(|&i| bufs[i].capacity());
        best.map(|i| bufs.swap_remove(i)).unwrap_or_default()
    }

    /// Returns `buf` to the pool, unless the pool would then hold more than
    /// `cap` bytes (concurrent passes: the extra buffers are freed).
    pub(super) fn give(&self, buf: Vec<f32>, cap: usize) {
        let mut bufs = self.bufs.lock().unwrap_or_else(|e| e.into_inner());
        let held: usize = bufs.iter().map(|b| b.capacity() * 4).sum();
        if buf.capacity() > 0 && held + buf.capacity() * 4 <= cap {
            bufs.push(buf);
        }
    }

    /// Bytes held.
    #[cfg(test)]
    pub(super) fn bytes(&self) -> usize {
        let bufs = self.bufs.lock().unwrap_or_else(|e| e.into_inner());
        bufs.iter().map(|b| b.capacity() * 4).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::Scratch;

    #[test]
    fn keeps_buffers_up_to_the_cap_and_hands_out_the_largest() {
        let s = Scratch::default();
        assert!(s.take().is_empty());
        s.give(vec![1.0; 100], 1000);
        s.give(vec![2.0; 150], 1000);
        assert_eq!(s.bytes(), 1000);
        // Over the cap: freed.
        s.give(vec![3.0; 10], 1000);
        assert_eq!(s.bytes(), 1000);
        let b = s.take();
        assert_eq!((b.len(), b[0]), (150, 2.0));
        assert_eq!(s.bytes(), 400);
        s.give(Vec::new(), 1000);
        assert_eq!(s.take().len(), 100);
        assert!(s.take().is_empty());
    }
}
