//! The BPF map syscalls on raw bytes: entries of any layout (a migration
//! reads maps of an older one) and whole tables read at once.
//!
//! Entries cross a chunk at a time with the batch commands
//! (`BPF_MAP_LOOKUP_BATCH`, `BPF_MAP_UPDATE_BATCH`, Linux 5.6): a full
//! 262,144-entry conntrack table is a few dozen syscalls instead of two or
//! three per entry (list the key, read the value, write it). That matters
//! where a whole table is read or copied: the resize and the layout carry
//! (the node's lock held, pod starts waiting) and every conntrack
//! collection pass of the agent. A kernel that refuses them gets the
//! element commands, one entry at a time. aya has no batch operations,
//! hence the syscalls here.

use std::cell::Cell;
use std::hash::BuildHasher;
use std::os::fd::{AsFd, AsRawFd, FromRawFd};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum RawMapError {
    #[error("map {map}: {op}: {source}")]
    Call {
        map: String,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("map {map}: {problem}")]
    Shape { map: String, problem: String },
}

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_ANY: u64 = 0;
const BPF_NOEXIST: u64 = 1;
/// The kernel's internal "not supported" (`ENOTSUPP`), which older
/// kernels let out of the batch commands for map types without them.
const ENOTSUPP: i32 = 524;

/// Entries a batch read asks for at once; a hash bucket larger than that
/// grows the chunk (the kernel answers ENOSPC rather than split it).
const CHUNK: usize = 4096;

/// How entries cross between user space and a map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syscalls {
    /// A chunk of entries per call; `PerEntry` where the kernel refuses.
    Batched,
    /// One call per key listed, per value read and per entry written: what
    /// a kernel without the batch commands gets (and the benchmarks'
    /// baseline).
    PerEntry,
}

/// `union bpf_attr` as the element commands read it.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `union bpf_attr` as the batch commands read it.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// `union bpf_attr` as BPF_MAP_CREATE reads it, up to the fields a plain
/// hash map needs (the kernel takes the rest as zero).
#[repr(C)]
#[derive(Default)]
struct CreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

/// Entries side by side: `len` keys in one run, their values in another.
pub struct Entries {
    key_size: usize,
    value_size: usize,
    keys: Vec<u8>,
    values: Vec<u8>,
    len: usize,
}

impl Entries {
    pub fn new(key_size: usize, value_size: usize) -> Entries {
        Entries {
            key_size,
            value_size,
            keys: Vec::new(),
            values: Vec::new(),
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.keys[..self.len * self.key_size]
            .chunks_exact(self.key_size)
            .zip(self.values[..self.len * self.value_size].chunks_exact(self.value_size))
    }

    /// Append an entry of this run's sizes.
    pub fn push(&mut self, key: &[u8], value: &[u8]) {
        debug_assert_eq!((key.len(), value.len()), (self.key_size, self.value_size));
        self.keys.truncate(self.len * self.key_size);
        self.values.truncate(self.len * self.value_size);
        self.keys.extend_from_slice(key);
        self.values.extend_from_slice(value);
        self.len += 1;
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Room for `n` entries, their bytes for the kernel to fill.
    fn room(&mut self, n: usize) {
        self.keys.resize(n * self.key_size, 0);
        self.values.resize(n * self.value_size, 0);
        self.len = 0;
    }
}

/// A map's keys as 64-bit hashes (keyed, so no input picks collisions):
/// 8 bytes a key however long. A key whose hash is there is taken as
/// there; a collision (odds about the map's size / 2^64 per key asked)
/// would leave one late entry uncarried.
pub struct KeysHeld {
    hasher: std::hash::RandomState,
    hashes: std::collections::HashSet<u64>,
}

impl KeysHeld {
    fn holds(&self, key: &[u8]) -> bool {
        self.hashes.contains(&self.hasher.hash_one(key))
    }
}

pub struct Map {
    pub data: aya::maps::MapData,
    name: &'static str,
    pub key_size: usize,
    pub value_size: usize,
    /// Entries an array map holds (its keys are 0..n).
    array: Option<u32>,
    /// Set once the kernel refused a batch command for this map, or asked.
    per_entry: Cell<bool>,
}

/// The kernel has no such command, or not for this map type.
fn refused(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP))
}

impl Map {
    pub fn open(path: &Path, name: &'static str) -> Result<Map, RawMapError> {
        let data = aya::maps::MapData::from_pin(path).map_err(|e| RawMapError::Shape {
            map: path.display().to_string(),
            problem: e.to_string(),
        })?;
        Map::of_data(data, name)
    }

    /// The map behind an aya handle (its fd duplicated).
    pub fn of(data: &aya::maps::MapData, name: &'static str) -> Result<Map, RawMapError> {
        let fd = data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| RawMapError::Call {
                map: name.into(),
                op: "duplicating its fd",
                source,
            })?;
        let data = aya::maps::MapData::from_fd(fd).map_err(|e| RawMapError::Shape {
            map: name.into(),
            problem: e.to_string(),
        })?;
        Map::of_data(data, name)
    }

    fn of_data(data: aya::maps::MapData, name: &'static str) -> Result<Map, RawMapError> {
        let info = data.info().map_err(|e| RawMapError::Shape {
            map: name.into(),
            problem: e.to_string(),
        })?;
        use aya::maps::MapType;
        let map_type = info.map_type();
        // A per-CPU map's values come one per CPU: the buffers here hold one.
        if let Ok(t @ (MapType::PerCpuHash | MapType::PerCpuArray | MapType::LruPerCpuHash)) = map_type {
            return Err(RawMapError::Shape {
                map: name.into(),
                problem: format!("a per-CPU map ({t:?}) is not read or written here"),
            });
        }
        let array = matches!(map_type, Ok(MapType::Array)).then(|| info.max_entries());
        Ok(Map {
            key_size: info.key_size() as usize,
            value_size: info.value_size() as usize,
            data,
            name,
            array,
            per_entry: Cell::new(false),
        })
    }

    pub fn use_syscalls(&self, how: Syscalls) {
        self.per_entry.set(how == Syscalls::PerEntry);
    }

    /// A new, empty map of the same type, key, value and flags with room
    /// for `max_entries`.
    pub fn create_like(&self, max_entries: u32) -> Result<Map, RawMapError> {
        let shape = |problem: String| RawMapError::Shape {
            map: self.name.into(),
            problem,
        };
        let info = self.data.info().map_err(|e| shape(e.to_string()))?;
        // aya's map types carry the kernel's numbers.
        let map_type = info.map_type().map_err(|e| shape(e.to_string()))? as u32;
        let map_flags = info.map_flags();
        let mut attr = CreateAttr {
            map_type,
            key_size: self.key_size as u32,
            value_size: self.value_size as u32,
            max_entries,
            map_flags,
            ..Default::default()
        };
        let n = self.name.len().min(attr.map_name.len() - 1);
        attr.map_name[..n].copy_from_slice(&self.name.as_bytes()[..n]);
        // SAFETY: `attr` is a valid bpf_attr for BPF_MAP_CREATE; the kernel
        // reads size_of::<CreateAttr>() bytes of it.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_CREATE,
                &mut attr as *mut CreateAttr,
                std::mem::size_of::<CreateAttr>(),
            )
        };
        if r < 0 {
            return Err(self.err("creating its resized copy")(std::io::Error::last_os_error()));
        }
        // SAFETY: BPF_MAP_CREATE returned a new fd that nothing else owns.
        let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(r as i32) };
        let data = aya::maps::MapData::from_fd(owned).map_err(|e| shape(e.to_string()))?;
        Ok(Map {
            data,
            name: self.name,
            key_size: self.key_size,
            value_size: self.value_size,
            array: self.array.map(|_| max_entries),
            per_entry: Cell::new(self.per_entry.get()),
        })
    }

    fn fd(&self) -> u32 {
        self.data.fd().as_fd().as_raw_fd() as u32
    }

    /// The bpf syscall on an attr of this map.
    fn call<A>(&self, cmd: libc::c_long, attr: &mut A) -> std::io::Result<()> {
        // SAFETY: every caller passes a valid bpf_attr for `cmd` whose
        // pointers name buffers of the sizes its count and the map's key
        // and value sizes say.
        let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut A, std::mem::size_of::<A>()) };
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    fn err(&self, op: &'static str) -> impl Fn(std::io::Error) -> RawMapError + '_ {
        move |source| RawMapError::Call {
            map: self.name.into(),
            op,
            source,
        }
    }

    /// Every entry, handed to `each` a chunk at a time (the same buffer,
    /// refilled). Entries written meanwhile may be seen or not.
    pub fn read(&self, mut each: impl FnMut(&Entries) -> Result<(), RawMapError>) -> Result<(), RawMapError> {
        let mut chunk = Entries::new(self.key_size, self.value_size);
        if self.per_entry.get() {
            return self.read_per_entry(&mut chunk, each);
        }
        // The resume point: a bucket index for a hash map, a key for an
        // array; the kernel writes out_batch, and reads in_batch from the
        // second call on.
        let token = self.key_size.max(8);
        let (mut from, mut next) = (vec![0u8; token], vec![0u8; token]);
        let (mut first, mut room) = (true, CHUNK);
        loop {
            chunk.room(room);
            let mut attr = BatchAttr {
                in_batch: if first { 0 } else { from.as_ptr() as u64 },
                out_batch: next.as_mut_ptr() as u64,
                keys: chunk.keys.as_mut_ptr() as u64,
                values: chunk.values.as_mut_ptr() as u64,
                count: room as u32,
                map_fd: self.fd(),
                ..Default::default()
            };
            let r = self.call(BPF_MAP_LOOKUP_BATCH, &mut attr);
            chunk.len = (attr.count as usize).min(room);
            match r {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    if chunk.len > 0 {
                        each(&chunk)?;
                    }
                    return Ok(());
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && room < CHUNK << 8 => {
                    room *= 2;
                    continue;
                }
                Err(e) if first && refused(&e) => {
                    self.per_entry.set(true);
                    return self.read_per_entry(&mut chunk, each);
                }
                Err(e) => return Err(self.err("reading a batch")(e)),
            }
            each(&chunk)?;
            std::mem::swap(&mut from, &mut next);
            first = false;
        }
    }

    fn read_per_entry(
        &self,
        chunk: &mut Entries,
        mut each: impl FnMut(&Entries) -> Result<(), RawMapError>,
    ) -> Result<(), RawMapError> {
        chunk.clear();
        for key in self.keys()? {
            if let Some(value) = self.get(&key)? {
                chunk.push(&key, &value);
            }
            if chunk.len() == CHUNK {
                each(chunk)?;
                chunk.clear();
            }
        }
        if !chunk.is_empty() {
            each(chunk)?;
        }
        Ok(())
    }

    /// Every key, as the map lists them now.
    fn keys(&self) -> Result<Vec<Vec<u8>>, RawMapError> {
        if let Some(n) = self.array {
            return Ok((0..n).map(|i| i.to_ne_bytes().to_vec()).collect());
        }
        let mut out: Vec<Vec<u8>> = Vec::new();
        let mut next = vec![0u8; self.key_size];
        loop {
            let mut attr = ElemAttr {
                map_fd: self.fd(),
                key: out.last().map_or(0, |k| k.as_ptr() as u64),
                value: next.as_mut_ptr() as u64,
                ..Default::default()
            };
            match self.call(BPF_MAP_GET_NEXT_KEY, &mut attr) {
                Ok(()) => out.push(next.clone()),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
                Err(e) => return Err(self.err("listing keys")(e)),
            }
        }
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, RawMapError> {
        let mut value = vec![0u8; self.value_size];
        let mut attr = ElemAttr {
            map_fd: self.fd(),
            key: key.as_ptr() as u64,
            value: value.as_mut_ptr() as u64,
            ..Default::default()
        };
        match self.call(BPF_MAP_LOOKUP_ELEM, &mut attr) {
            Ok(()) => Ok(Some(value)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(self.err("reading")(e)),
        }
    }

    /// Write an entry; with `only_new`, not over one that is there.
    /// Whether it was written.
    fn put(&self, key: &[u8], value: &[u8], only_new: bool) -> Result<bool, RawMapError> {
        let mut attr = ElemAttr {
            map_fd: self.fd(),
            key: key.as_ptr() as u64,
            value: value.as_ptr() as u64,
            flags: if only_new { BPF_NOEXIST } else { BPF_ANY },
            ..Default::default()
        };
        match self.call(BPF_MAP_UPDATE_ELEM, &mut attr) {
            Ok(()) => Ok(true),
            Err(e) if only_new && e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(self.err("writing")(e)),
        }
    }

    /// Write `entries`, over any there; how many were written.
    pub fn write(&self, entries: &Entries) -> Result<usize, RawMapError> {
        debug_assert_eq!((entries.key_size, entries.value_size), (self.key_size, self.value_size));
        if entries.len > 0 && !self.per_entry.get() {
            let mut attr = BatchAttr {
                keys: entries.keys.as_ptr() as u64,
                values: entries.values.as_ptr() as u64,
                count: entries.len as u32,
                map_fd: self.fd(),
                elem_flags: BPF_ANY,
                ..Default::default()
            };
            match self.call(BPF_MAP_UPDATE_BATCH, &mut attr) {
                Ok(()) => return Ok(entries.len),
                Err(e) if attr.count == 0 && refused(&e) => self.per_entry.set(true),
                Err(e) => return Err(self.err("writing a batch")(e)),
            }
        }
        for (k, v) in entries.iter() {
            self.put(k, v, false)?;
        }
        Ok(entries.len)
    }

    /// Write those of `entries` whose keys the map lacks, never over one
    /// there (a program's newer entry wins); how many were written. One
    /// call per entry: a batch write would stop at the first key there.
    /// `held` (the map's keys, read before) spares the call for the keys
    /// known to be there, which in a late carry is nearly all of them.
    pub fn write_new(&self, entries: &Entries, held: Option<&KeysHeld>) -> Result<usize, RawMapError> {
        let mut written = 0;
        for (k, v) in entries.iter() {
            if held.is_some_and(|h| h.holds(k)) {
                continue;
            }
            if self.put(k, v, true)? {
                written += 1;
            }
        }
        Ok(written)
    }

    /// The keys the map holds now, for [`Map::write_new`].
    pub fn keys_held(&self) -> Result<KeysHeld, RawMapError> {
        let mut held = KeysHeld {
            hasher: std::hash::RandomState::new(),
            hashes: std::collections::HashSet::new(),
        };
        self.read(|chunk| {
            held.hashes.reserve(chunk.len());
            for (k, _) in chunk.iter() {
                held.hashes.insert(held.hasher.hash_one(k));
            }
            Ok(())
        })?;
        Ok(held)
    }
}

/// Every entry of a map of `K` keys and `V` values (not a per-CPU one),
/// read a chunk at a time and handed to `each` as it comes: a pass over a
/// large table holds one chunk, not the table.
pub fn for_each<K: aya::Pod, V: aya::Pod>(
    data: &aya::maps::MapData,
    name: &'static str,
    mut each: impl FnMut(K, V),
) -> Result<(), RawMapError> {
    let map = Map::of(data, name)?;
    let want = (std::mem::size_of::<K>(), std::mem::size_of::<V>());
    if (map.key_size, map.value_size) != want {
        return Err(RawMapError::Shape {
            map: name.into(),
            problem: format!(
                "entries of {:?} bytes, read as {want:?}",
                (map.key_size, map.value_size)
            ),
        });
    }
    map.read(|chunk| {
        for (k, v) in chunk.iter() {
            // SAFETY: `aya::Pod` types are valid for any bytes, and each
            // slice holds exactly one (the sizes were checked above).
            let (k, v) = unsafe {
                (
                    std::ptr::read_unaligned(k.as_ptr().cast::<K>()),
                    std::ptr::read_unaligned(v.as_ptr().cast::<V>()),
                )
            };
            each(k, v);
        }
        Ok(())
    })
}

/// Every entry of a map of `K` keys and `V` values, read a chunk at a time.
pub fn entries<K: aya::Pod, V: aya::Pod>(
    data: &aya::maps::MapData,
    name: &'static str,
) -> Result<Vec<(K, V)>, RawMapError> {
    let mut out = Vec::new();
    for_each(data, name, |k, v| out.push((k, v)))?;
    Ok(out)
}
