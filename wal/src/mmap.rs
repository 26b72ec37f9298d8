//! The one place with `unsafe`: read-only memory maps of sealed segment files.
#![allow(unsafe_code)]

use std::{fs::File, io};

use bytes::Bytes;

/// Owner of a mapping, so `Bytes` slices keep it alive.
struct MapOwner(memmap2::Mmap);

impl AsRef<[u8]> for MapOwner {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Maps the whole file read-only.
pub(crate) fn map_readonly(file: &File) -> io::Result<Bytes> {
    if file.metadata()?.len() == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: the WAL maps only sealed segments. A sealed segment is never written, truncated or removed while the
    // log is open: the directory lock keeps other AeroDB processes out, and the writer never reopens a sealed
    // segment for writing. Every byte read from the map is still CRC-checked before it is trusted, so even an
    // external modification cannot become a silently accepted record (it would be reported as corruption).
    let map = unsafe { memmap2::Mmap::map(file)? };
    Ok(Bytes::from_owner(MapOwner(map)))
}
