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
    // SAFETY: the bytes of a mapped file must not change while the map is alive. The WAL maps (a) sealed
    // segments, which are never written, truncated or removed while the log is open, and (b) during recovery, the
    // last segment, before anything writes to it: recovery takes what it needs from the map and drops it before it
    // repairs (zeroes a torn tail, truncates an interrupted seal) or the log appends. The directory lock keeps
    // other AeroDB processes out for the whole time. The engine maps through the same function (`FsFile::map`):
    // index runs, which are immutable once renamed into place and only unlinked (never truncated) after no
    // manifest lists them; and Merkle level files, which are only appended to, and of which only the bytes below
    // the written length are ever read. Every byte read from a map is still CRC-checked before it is
    // trusted, so even an external modification cannot become a silently accepted record. (c) The active
    // segment (`FsFile::map_live`), while the log appends to it: readers take only frames below the durable end
    // of their view, bytes that no write changes while the segment is active; the file is preallocated to its
    // capacity and only ever cut to just after its footer (above every such frame) when it is sealed, so no read
    // touches a page beyond the end of the file.
    let map = unsafe { memmap2::Mmap::map(file)? };
    Ok(Bytes::from_owner(MapOwner(map)))
}
