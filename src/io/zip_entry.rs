//! What a zip entry may claim before it is read, shared by the `.npz`
//! reader ([`super::npz`]) and torch's zip serialisation ([`super::torch`]):
//! the zip crate checks the CRC-32 at the end of an entry, but neither
//! bounds its declared size by what its compressed bytes can hold nor
//! compares its extent with the archive's.

use std::io::Read;
use zip::CompressionMethod;
use zip::read::ZipFile;

/// Deflate cannot expand data more than 1032 times (a 258-byte match coded
/// in two bits): an entry declaring more is refused before anything is
/// allocated for it.
pub(crate) const MAX_DEFLATE_RATIO: u64 = 1032;

/// The entry's declared (uncompressed) size once it is plausible: stored or
/// deflated, no larger than its compressed bytes can hold (stored: equal),
/// its data inside an archive of `archive_len` bytes. The error says why.
pub(crate) fn checked_size<R: Read>(entry: &ZipFile<'_, R>, archive_len: u64) -> Result<u64, String> {
    let (size, compressed) = (entry.size(), entry.compressed_size());
    let most = match entry.compression() {
        CompressionMethod::Stored if compressed != size => {
            return Err(format!(
                "stored entry has compressed size {compressed} but uncompressed size {size}"
            ));
        }
        CompressionMethod::Stored => compressed,
        CompressionMethod::Deflated => compressed.saturating_mul(MAX_DEFLATE_RATIO),
        other => {
            return Err(format!(
                "compression method {other:?} not supported (only stored or deflated entries)"
            ));
        }
    };
    if size > most {
        return Err(format!(
            "declares {size} bytes, more than its {compressed} compressed bytes can hold"
        ));
    }
    if entry
        .data_start()
        .and_then(|start| start.checked_add(compressed))
        .is_none_or(|end| end > archive_len)
    {
        return Err("data runs past the end of the archive (truncated?)".into());
    }
    Ok(size)
}
