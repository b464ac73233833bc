//! The crate's small tensor type: a shape and f32 storage that is either owned
//! or borrowed in place from a memory-mapped weight file.
//!
//! It is deliberately minimal: the forward pass works on slices through the
//! kernels in [`crate::backend::cpu`]; the tensor carries shapes across API boundaries
//! and keeps mapped weights alive.

use crate::error::{Error, Result};
use std::sync::Arc;

/// Bytes a tensor can point into: a file mapping or an owned buffer.
#[derive(Debug)]
pub enum Bytes {
    /// A read-only memory map of a file.
    Mapped(memmap2::Mmap),
    /// Bytes held in memory.
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

#[derive(Debug, Clone)]
enum Storage {
    Owned(Vec<f32>),
    /// `len` f32 values at byte `offset` of `bytes`; the offset is 4-aligned in
    /// memory (checked when the tensor is made).
    Shared {
        bytes: Arc<Bytes>,
        offset: usize,
        len: usize,
    },
}

/// A dense row-major f32 tensor.
#[derive(Debug, Clone)]
pub struct Tensor {
    shape: Vec<usize>,
    storage: Storage,
}

/// The bytes of `n` elements of `size` bytes at `offset`, bounds-checked.
fn byte_range(bytes: &[u8], n: usize, size: usize, offset: usize) -> Result<&[u8]> {
    let nbytes = n
        .checked_mul(size)
        .ok_or_else(|| Error::Shape("tensor too large".into()))?;
    let end = offset
        .checked_add(nbytes)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| Error::Shape(format!("{nbytes} bytes at offset {offset} lie outside the buffer")))?;
    Ok(&bytes[offset..end])
}

/// `n` zeroed values, or an error naming `what` when the allocator refuses
/// them: a batch padded far beyond memory (10,000 one-word sentences and
/// one of 100,000 words pad to a billion positions) is an error, where
/// `vec![0; n]` aborts the process. Zeroed pages as `vec!` gets them
/// (`calloc`: untouched until written), so nothing is slower.
pub fn try_zeroed<T: bytemuck::Zeroable>(n: usize, what: &str) -> Result<Vec<T>> {
    let refused = || {
        let gib = n as f64 * std::mem::size_of::<T>() as f64 / (1u64 << 30) as f64;
        Error::Input(format!(
            "{what} would need {gib:.1} GiB, more memory than there is; split the batch \
             (a batch is padded to its longest sentence: sentences x longest x values)"
        ))
    };
    let layout = std::alloc::Layout::array::<T>(n).map_err(|_| refused())?;
    if layout.size() == 0 {
        return Ok(Vec::new());
    }
    // SAFETY: the layout's size is not zero (checked above).
    let p = unsafe { std::alloc::alloc_zeroed(layout) } as *mut T;
    if p.is_null() {
        return Err(refused());
    }
    // SAFETY: `p` comes from the global allocator with the layout of an
    // array of `n` values of `T` (what a `Vec<T>` of capacity `n` frees),
    // and all `n` are initialised: zero bytes are a valid `T` (`Zeroable`).
    Ok(unsafe { Vec::from_raw_parts(p, n, n) })
}

fn numel(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| Error::Shape(format!("shape {shape:?} has too many elements")))
}

impl Tensor {
    /// A tensor owning `data`; `data.len()` must equal the shape's product.
    pub fn from_vec(shape: &[usize], data: Vec<f32>) -> Result<Self> {
        let n = numel(shape)?;
        if n != data.len() {
            return Err(Error::Shape(format!(
                "shape {shape:?} needs {n} values, got {}",
                data.len()
            )));
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            storage: Storage::Owned(data),
        })
    }

    /// A tensor of zeros; an error when memory for it cannot be had.
    pub fn zeros(shape: &[usize]) -> Result<Self> {
        Self::from_vec(shape, try_zeroed(numel(shape)?, "a tensor")?)
    }

    /// A view of little-endian f32 values inside shared bytes, used in place
    /// when 4-byte aligned and copied otherwise.
    pub fn from_bytes(shape: &[usize], bytes: &Arc<Bytes>, offset: usize) -> Result<Self> {
        let n = numel(shape)?;
        let raw = byte_range(bytes, n, 4, offset)?;
        if cfg!(target_endian = "little") && bytemuck::try_cast_slice::<u8, f32>(raw).is_ok() {
            return Ok(Tensor {
                shape: shape.to_vec(),
                storage: Storage::Shared {
                    bytes: Arc::clone(bytes),
                    offset,
                    len: n,
                },
            });
        }
        let data = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Self::from_vec(shape, data)
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match &self.storage {
            Storage::Owned(v) => v.len(),
            Storage::Shared { len, .. } => *len,
        }
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the values are used in place from shared (mapped) bytes.
    pub fn is_shared(&self) -> bool {
        matches!(self.storage, Storage::Shared { .. })
    }

    /// The values in row-major order.
    pub fn data(&self) -> &[f32] {
        match &self.storage {
            Storage::Owned(v) => v,
            Storage::Shared { bytes, offset, len } => {
                // Alignment and bounds were checked in `from_bytes`.
                bytemuck::cast_slice(&bytes[*offset..*offset + *len * 4])
            }
        }
    }

    /// Mutable values; shared storage is copied out first.
    pub fn data_mut(&mut self) -> &mut [f32] {
        if let Storage::Shared { .. } = self.storage {
            self.storage = Storage::Owned(self.data().to_vec());
        }
        match &mut self.storage {
            Storage::Owned(v) => v,
            Storage::Shared { .. } => unreachable!("converted to owned above"),
        }
    }

    /// The values, moved out (copied if shared).
    pub fn into_vec(self) -> Vec<f32> {
        match self.storage {
            Storage::Owned(v) => v,
            Storage::Shared { .. } => self.data().to_vec(),
        }
    }

    /// The same values under another shape with the same element count.
    pub fn reshape(mut self, shape: &[usize]) -> Result<Self> {
        if numel(shape)? != self.len() {
            return Err(Error::Shape(format!("cannot reshape {:?} to {shape:?}", self.shape)));
        }
        self.shape = shape.to_vec();
        Ok(self)
    }
}

/// bfloat16 -> f32 (exact: bf16 is the top half of an f32).
#[inline]
pub fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// f32 -> bfloat16, rounding to nearest even (NaN stays NaN).
pub fn f32_to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    let round = 0x7FFF + ((bits >> 16) & 1);
    (bits.wrapping_add(round) >> 16) as u16
}

#[derive(Debug, Clone)]
enum Bf16Storage {
    Owned(Vec<u16>),
    Shared {
        bytes: Arc<Bytes>,
        offset: usize,
        len: usize,
    },
}

/// A bfloat16 tensor (reduced-precision weights), used in place from the
/// mapping when 2-byte aligned and copied otherwise.
#[derive(Debug, Clone)]
pub struct Bf16Tensor {
    shape: Vec<usize>,
    storage: Bf16Storage,
}

impl Bf16Tensor {
    /// Little-endian bf16 values at byte `offset` of `bytes`.
    pub fn from_bytes(shape: &[usize], bytes: &Arc<Bytes>, offset: usize) -> Result<Self> {
        let n = numel(shape)?;
        let raw = byte_range(bytes, n, 2, offset)?;
        let storage = if cfg!(target_endian = "little") && bytemuck::try_cast_slice::<u8, u16>(raw).is_ok() {
            Bf16Storage::Shared {
                bytes: Arc::clone(bytes),
                offset,
                len: n,
            }
        } else {
            Bf16Storage::Owned(raw.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect())
        };
        Ok(Bf16Tensor {
            shape: shape.to_vec(),
            storage,
        })
    }

    /// From f32 values, rounded to nearest even.
    pub fn from_f32(shape: &[usize], data: &[f32]) -> Result<Self> {
        Self::from_bits(shape, data.iter().map(|&x| f32_to_bf16(x)).collect())
    }

    /// From raw bf16 values (owned).
    pub fn from_bits(shape: &[usize], data: Vec<u16>) -> Result<Self> {
        if numel(shape)? != data.len() {
            return Err(Error::Shape(format!(
                "shape {shape:?} does not match {} values",
                data.len()
            )));
        }
        Ok(Bf16Tensor {
            shape: shape.to_vec(),
            storage: Bf16Storage::Owned(data),
        })
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data().len()
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The raw bf16 values.
    pub fn data(&self) -> &[u16] {
        match &self.storage {
            Bf16Storage::Owned(v) => v,
            // Alignment and bounds were checked in `from_bytes`.
            Bf16Storage::Shared { bytes, offset, len } => bytemuck::cast_slice(&bytes[*offset..*offset + *len * 2]),
        }
    }

    /// Tells the kernel that this process no longer needs the mapped file
    /// pages wholly inside this tensor's bytes (`madvise(MADV_DONTNEED)`),
    /// so that they stop counting towards its resident memory; a later read
    /// maps them in again from the file, with the same values. For a copy
    /// made at load (the paired layout): the mapped original is then not
    /// read again. Nothing for owned values, or off Unix; advice the kernel
    /// refuses is ignored (it only costs memory).
    pub fn release_mapped_pages(&self) {
        #[cfg(unix)]
        if let Bf16Storage::Shared { bytes, offset, len } = &self.storage
            && let Bytes::Mapped(map) = &**bytes
        {
            const PAGE: usize = 4096;
            let start = (map.as_ptr() as usize + offset).next_multiple_of(PAGE) - map.as_ptr() as usize;
            let end = (map.as_ptr() as usize + offset + 2 * len) / PAGE * PAGE - map.as_ptr() as usize;
            if end > start {
                // SAFETY: the mapping is read-only and never written, so a
                // page dropped by MADV_DONTNEED reads back from the file with
                // the bytes it had (a private mapping's pages only lose
                // content the process wrote). Pages that other tensors share
                // (none: the range is rounded inwards to whole pages) would
                // read back the same. `start .. end` lies inside the mapping.
                let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start) };
            }
        }
    }

    /// The values widened to f32 (exactly).
    pub fn to_f32(&self) -> Vec<f32> {
        self.data().iter().map(|&b| bf16_to_f32(b)).collect()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(bf16_to_f32(f32_to_bf16(f32::INFINITY)), f32::INFINITY);
        for x in [0.0f32, 1.0, -2.5, 3.25, 1e-20, 65504.0] {
            let r = bf16_to_f32(f32_to_bf16(x));
            assert!((r - x).abs() <= x.abs() / 128.0, "{x} -> {r}");
        }
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: even mantissa (1.0) wins.
        assert_eq!(bf16_to_f32(f32_to_bf16(1.0 + 1.0 / 256.0)), 1.0);
        assert!(bf16_to_f32(f32_to_bf16(f32::NAN)).is_nan());
    }

    use super::*;

    #[test]
    fn shared_when_aligned_copied_otherwise() {
        let mut raw = vec![0u8; 4];
        for v in [1.5f32, -2.0, 3.25] {
            raw.extend_from_slice(&v.to_le_bytes());
        }
        raw.push(0);
        let bytes = Arc::new(Bytes::Owned(raw));
        let t = Tensor::from_bytes(&[3], &bytes, 4).unwrap();
        assert_eq!(t.data(), &[1.5, -2.0, 3.25]);
        // Offset 5 reads different bytes, never panics.
        assert_eq!(Tensor::from_bytes(&[3], &bytes, 5).unwrap().len(), 3);
        assert!(Tensor::from_bytes(&[4], &bytes, 4).is_err());
        assert!(Tensor::from_bytes(&[usize::MAX, 2], &bytes, 0).is_err());
    }

    /// Kilobytes of `map` resident in this process (its `/proc/self/smaps` entry).
    #[cfg(target_os = "linux")]
    fn resident_kib(map: &memmap2::Mmap) -> usize {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let start = format!("{:x}-", map.as_ptr() as usize);
        let entry = smaps.split_once(&start).expect("the mapping in smaps").1;
        let rss = entry.lines().find(|l| l.starts_with("Rss:")).unwrap();
        rss.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// The pages wholly inside a mapped tensor leave the resident set, and
    /// the values read back unchanged.
    #[cfg(target_os = "linux")]
    #[test]
    fn released_pages_leave_the_resident_set_and_read_back_the_same() {
        use std::io::Write;
        let values: Vec<u16> = (0..32 * 1024).map(|i| (i * 7919 % 65_521) as u16).collect();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(bytemuck::cast_slice(&values)).unwrap();
        // SAFETY: a read-only mapping of a file this test alone holds.
        let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
        let base = map.as_ptr();
        let bytes = Arc::new(Bytes::Mapped(map));
        // 20,000 values from byte 6: pages 1 to 8 lie wholly inside.
        let t = Bf16Tensor::from_bytes(&[20_000], &bytes, 6).unwrap();
        let before = t.data().to_vec();
        assert_eq!(&before[..], &values[3..20_003]);
        let Bytes::Mapped(map) = &*bytes else { unreachable!() };
        assert_eq!(map.as_ptr(), base);
        let resident = resident_kib(map);
        assert!(resident >= 40, "{resident} KiB resident after reading 40 KB");
        t.release_mapped_pages();
        let after = resident_kib(map);
        assert!(
            after + 32 <= resident,
            "{resident} -> {after} KiB: 8 pages not released"
        );
        assert_eq!(t.data(), &before[..]);
        // Owned values: nothing to release, nothing changes.
        let owned = Bf16Tensor::from_bits(&[3], vec![1, 2, 3]).unwrap();
        owned.release_mapped_pages();
        assert_eq!(owned.data(), &[1, 2, 3]);
    }

    #[test]
    fn matmul_and_shapes() {
        let a = Tensor::from_vec(&[2, 3], vec![1., 2., 3., 4., 5., 6.]).unwrap();
        let b = Tensor::from_vec(&[3, 1], vec![1., 0., -1.]).unwrap();
        assert_eq!(a.matmul(&b).unwrap().data(), &[-2., -2.]);
        assert!(b.matmul(&b).is_err());
        assert!(Tensor::from_vec(&[2, 2], vec![0.0; 3]).is_err());
        assert!(a.reshape(&[4]).is_err());
    }
}
