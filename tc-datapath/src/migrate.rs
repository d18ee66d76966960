//! Carrying the node's state across a map layout change.
//!
//! A new layout version pins new maps in a directory of its own
//! (`<root>/v<N>`). Without more, the pods moved onto the new programs
//! would find empty maps: every established Service connection would lose
//! its backend and its reverse NAT, every isolated pod its policy, until
//! the agent wrote them again. So before the programs switch, the entries
//! of the old maps are copied into the new ones, converted field by field:
//! each struct is described by name (its fields' offsets and sizes, as
//! `bpf/layout_dump.c` prints them), a field the new layout keeps is
//! copied, a new field is zero, a dropped one is left behind. After the
//! links have moved, the flows made in between (conntrack, affinity) are
//! copied once more.
//!
//! Every layout version's description is committed under `layouts/`
//! (a test holds the current one to what the C compiles), so a later
//! version can read the maps of any earlier one it knows. A field whose
//! meaning changes without its name needs code of its own here.
//!
//! The entries are read and written through the raw map syscalls: aya's
//! maps are typed by the current build's layout, and an old map's entries
//! are not of it.

use crate::maps::{self, MapDef};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, FromRawFd};
use std::path::Path;
use std::sync::LazyLock;

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("layout description, line {line}: {problem}")]
    Desc { line: usize, problem: String },
    #[error("map {map}: {op}: {source}")]
    Map {
        map: String,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("map {map}: {problem}")]
    Shape { map: String, problem: String },
}

/// One field of a struct: where it is and how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub offset: usize,
    pub size: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StructDesc {
    pub size: usize,
    pub fields: Vec<Field>,
}

/// The layout of one version: its number and every struct of layout.h.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub version: u32,
    pub structs: BTreeMap<String, StructDesc>,
}

impl Layout {
    /// Read what `layout_dump desc` prints.
    pub fn parse(text: &str) -> Result<Layout, MigrateError> {
        let mut version = None;
        let mut structs: BTreeMap<String, StructDesc> = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let bad = |problem: &str| MigrateError::Desc {
                line: i + 1,
                problem: format!("{problem}: {line:?}"),
            };
            let num = |s: Option<&str>| s.and_then(|s| s.parse::<usize>().ok()).ok_or_else(|| bad("a number"));
            let mut w = line.split_whitespace();
            match w.next() {
                Some("version") => version = Some(num(w.next())? as u32),
                Some("S") => {
                    let name = w.next().ok_or_else(|| bad("a struct name"))?;
                    let size = num(w.next())?;
                    structs.insert(
                        name.to_string(),
                        StructDesc {
                            size,
                            fields: Vec::new(),
                        },
                    );
                }
                Some("F") => {
                    let (s, f) = (w.next(), w.next());
                    let (Some(s), Some(f)) = (s, f) else {
                        return Err(bad("a struct and a field"));
                    };
                    let (offset, size) = (num(w.next())?, num(w.next())?);
                    let desc = structs.get_mut(s).ok_or_else(|| bad("a field before its struct"))?;
                    desc.fields.push(Field {
                        name: f.to_string(),
                        offset,
                        size,
                    });
                }
                None => {}
                Some(_) => return Err(bad("an unknown line")),
            }
        }
        let version = version.ok_or(MigrateError::Desc {
            line: 0,
            problem: "no version line".into(),
        })?;
        Ok(Layout { version, structs })
    }

    /// This build's layout.
    pub fn current() -> &'static Layout {
        static CURRENT: LazyLock<Layout> =
            LazyLock::new(|| Layout::parse(CURRENT_DESC).expect("build.rs writes a valid description"));
        &CURRENT
    }

    /// An earlier version's layout, from the committed descriptions.
    pub fn known(version: u32) -> Option<Layout> {
        KNOWN
            .iter()
            .find(|(v, _)| *v == version)
            .and_then(|(_, text)| Layout::parse(text).ok())
    }

    /// The description's text, as written next to the maps.
    pub fn to_desc(&self) -> String {
        let mut out = format!("version {}\n", self.version);
        for (name, s) in &self.structs {
            out += &format!("S {name} {}\n", s.size);
            for f in &s.fields {
                out += &format!("F {name} {} {} {}\n", f.name, f.offset, f.size);
            }
        }
        out
    }

    /// How an entry of `name` in this layout becomes one in `to`: None
    /// when the struct is unknown to either.
    fn shape(&self, name: &str) -> Option<&StructDesc> {
        self.structs.get(name)
    }
}

const CURRENT_DESC: &str = include_str!(concat!(env!("OUT_DIR"), "/layout.desc"));

/// Every committed layout description (`layouts/v<N>.desc`).
const KNOWN: &[(u32, &str)] = &[
    (7, include_str!("../layouts/v7.desc")),
    (8, include_str!("../layouts/v8.desc")),
    (9, include_str!("../layouts/v9.desc")),
    (10, include_str!("../layouts/v10.desc")),
    (11, include_str!("../layouts/v11.desc")),
    (12, include_str!("../layouts/v12.desc")),
];

/// The layout of the maps pinned in `versioned` (`v<N>`), from the
/// committed descriptions: None for a version this build does not know (a
/// later one: a downgrade does not carry the maps). bpffs holds no plain
/// files, so the description cannot travel with the maps.
pub fn layout_of(versioned: &Path) -> Option<Layout> {
    let version = versioned.file_name()?.to_str()?.strip_prefix('v')?.parse().ok()?;
    Layout::known(version)
}

/// Key and value of a migrated map: a struct of layout.h, or a plain
/// integer of this many bytes.
#[derive(Debug, Clone, Copy)]
enum Part {
    Struct(&'static str),
    Plain(usize),
}

/// The maps whose entries carry over, and what their keys and values are.
/// Not carried: the event ring and the counters (per CPU), `sl_info` (the
/// new programs' own), the fragments (seconds long), the conntrack
/// shares (the agent counts them again), and the verdict cache with its
/// policy generation (the new maps start empty, so no slot counts).
const MIGRATED: &[(&MapDef, Part, Part)] = &[
    (&maps::SERVICES, Part::Struct("svc_key"), Part::Struct("svc_value")),
    (&maps::VIP_FILTER, Part::Plain(4), Part::Plain(8)),
    (&maps::BACKENDS, Part::Plain(4), Part::Struct("backend_value")),
    (&maps::REVNAT, Part::Plain(4), Part::Struct("revnat_value")),
    (&maps::MAGLEV, Part::Struct("maglev_key"), Part::Struct("maglev_value")),
    (
        &maps::AFFINITY,
        Part::Struct("affinity_key"),
        Part::Struct("affinity_value"),
    ),
    (&maps::CT, Part::Struct("ct_key"), Part::Struct("ct_value")),
    (
        &maps::ENDPOINTS,
        Part::Struct("endpoint_key"),
        Part::Struct("endpoint_value"),
    ),
    (
        &maps::IPCACHE,
        Part::Struct("endpoint_key"),
        Part::Struct("ipcache_value"),
    ),
    (&maps::CIDR, Part::Struct("cidr_key"), Part::Struct("ipcache_value")),
    (&maps::EP_POLICY, Part::Plain(4), Part::Struct("ep_policy_value")),
    (
        &maps::POLICY,
        Part::Struct("policy_match"),
        Part::Struct("policy_value"),
    ),
    (
        &maps::POLICY_RANGES,
        Part::Struct("policy_key"),
        Part::Struct("policy_value"),
    ),
    (&maps::NAMES, Part::Struct("name_key"), Part::Struct("name_value")),
    (&maps::NAT, Part::Struct("ct_key"), Part::Struct("nat_value")),
    (&maps::NAT_NEW, Part::Struct("ct_key"), Part::Struct("nat_value")),
    (&maps::SNAT_HELD, Part::Struct("ct_key"), Part::Plain(8)),
    (&maps::UPLINKS, Part::Plain(4), Part::Struct("uplink_value")),
    (
        &maps::HOSTPORTS,
        Part::Struct("hostport_key"),
        Part::Struct("hostport_value"),
    ),
    (&maps::LB_SOURCES, Part::Struct("lb_source_key"), Part::Plain(4)),
];

/// The maps whose entries the programs make as packets come: copied once
/// more after the links moved (only what the new maps lack).
const FLOWING: [&str; 5] = ["sl_ct", "sl_affinity", "sl_nat", "sl_nat_new", "sl_snat_held"];

/// Convert one entry from `from` to `to`: fields by name, the rest zero.
/// A nested struct (a policy key's match) is converted as its own struct
/// when both layouts describe it, else copied when its size is unchanged.
fn convert(from: &Layout, to: &Layout, part: Part, bytes: &[u8]) -> Option<Vec<u8>> {
    match part {
        Part::Plain(n) => (bytes.len() == n).then(|| bytes.to_vec()),
        Part::Struct(name) => convert_struct(from, to, name, bytes),
    }
}

fn convert_struct(from: &Layout, to: &Layout, name: &str, bytes: &[u8]) -> Option<Vec<u8>> {
    let (old, new) = (from.shape(name)?, to.shape(name)?);
    if bytes.len() != old.size {
        return None;
    }
    let mut out = vec![0u8; new.size];
    for f in &new.fields {
        let Some(o) = old.fields.iter().find(|o| o.name == f.name) else {
            continue;
        };
        let src = &bytes[o.offset..o.offset + o.size];
        if o.size == f.size {
            out[f.offset..f.offset + f.size].copy_from_slice(src);
        }
    }
    Some(out)
}

/// What a migration carried.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Carried {
    /// Entries written, by map.
    pub entries: BTreeMap<&'static str, usize>,
    /// Entries left behind (a struct unknown to a layout, a size that does
    /// not fit), by map.
    pub skipped: BTreeMap<&'static str, usize>,
}

impl Carried {
    pub fn total(&self) -> usize {
        self.entries.values().sum()
    }
}

/// Copy every migrated map's entries from the maps pinned under `old_dir`
/// (layout `from`) into those under `new_dir` (layout `to`). With
/// `flowing_only`, only the maps the programs write as packets come, and
/// only the keys the new maps lack.
pub fn carry(
    old_dir: &Path,
    from: &Layout,
    new_dir: &Path,
    to: &Layout,
    flowing_only: bool,
) -> Result<Carried, MigrateError> {
    let mut out = Carried::default();
    for (def, key_part, value_part) in MIGRATED {
        if flowing_only && !FLOWING.contains(&def.name) {
            continue;
        }
        let (old_path, new_path) = (maps::pin_path(old_dir, def), maps::pin_path(new_dir, def));
        if !old_path.exists() || !new_path.exists() {
            continue;
        }
        let old = raw::Map::open(&old_path, def.name)?;
        let new = raw::Map::open(&new_path, def.name)?;
        let mut written = 0;
        let mut skipped = 0;
        for key in old.keys()? {
            let Some(value) = old.get(&key)? else { continue };
            let (Some(k), Some(v)) = (
                convert(from, to, *key_part, &key),
                convert(from, to, *value_part, &value),
            ) else {
                skipped += 1;
                continue;
            };
            if k.len() != new.key_size || v.len() != new.value_size {
                skipped += 1;
                continue;
            }
            if new.put(&k, &v, flowing_only)? {
                written += 1;
            }
        }
        out.entries.insert(def.name, written);
        if skipped > 0 {
            out.skipped.insert(def.name, skipped);
        }
    }
    Ok(out)
}

/// Make a map like the one pinned at `path` (its type, key, value and
/// flags) with room for `max_entries`, copy its entries in, and pin it at
/// `to`: a table resized (`TableSizes`). Entries past a smaller size are
/// the LRU's to evict. Returns how many were copied.
pub fn remake(path: &Path, name: &'static str, max_entries: u32, to: &Path) -> Result<usize, MigrateError> {
    let old = raw::Map::open(path, name)?;
    let new = old.create_like(max_entries)?;
    new.data.pin(to).map_err(|e| MigrateError::Shape {
        map: name.into(),
        problem: format!("pinning at {}: {e}", to.display()),
    })?;
    copy(&old, &new, false)
}

/// Copy the entries of the map pinned at `from` that the one at `to` lacks
/// (a resized table's, written by the programs that still had the old one).
pub fn carry_new(from: &Path, to: &Path, name: &'static str) -> Result<usize, MigrateError> {
    let (old, new) = (raw::Map::open(from, name)?, raw::Map::open(to, name)?);
    if (old.key_size, old.value_size) != (new.key_size, new.value_size) {
        return Err(MigrateError::Shape {
            map: name.into(),
            problem: format!("{} and {} hold entries of other sizes", from.display(), to.display()),
        });
    }
    copy(&old, &new, true)
}

fn copy(old: &raw::Map, new: &raw::Map, only_new: bool) -> Result<usize, MigrateError> {
    let mut written = 0;
    for key in old.keys()? {
        if let Some(value) = old.get(&key)?
            && new.put(&key, &value, only_new)?
        {
            written += 1;
        }
    }
    Ok(written)
}

/// An object and the layout of its maps: what a node runs. The test of a
/// layout change loads another one (`test_bump`).
pub struct Build {
    pub object: Cow<'static, [u8]>,
    pub layout: Layout,
}

impl Build {
    pub fn current() -> Build {
        Build {
            object: Cow::Borrowed(crate::OBJECT),
            layout: Layout::current().clone(),
        }
    }

    /// The upgrade test's build: another layout version (1007) whose
    /// conntrack value has every field at another offset. It is not in the
    /// library: read from the build directory.
    pub fn test_bump() -> std::io::Result<Build> {
        let dir = Path::new(env!("OUT_DIR"));
        let object = std::fs::read(dir.join("datapath-test-bump.o"))?;
        let text = std::fs::read_to_string(dir.join("layout-test-bump.desc"))?;
        let layout = Layout::parse(&text).map_err(std::io::Error::other)?;
        Ok(Build {
            object: Cow::Owned(object),
            layout,
        })
    }
}

/// The BPF map syscalls on raw bytes.
mod raw {
    use super::*;

    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
    const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
    const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
    const BPF_ANY: u64 = 0;
    const BPF_NOEXIST: u64 = 1;

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

    /// `union bpf_attr` as BPF_MAP_CREATE reads it, up to the fields a
    /// plain hash map needs (the kernel takes the rest as zero).
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

    pub struct Map {
        pub data: aya::maps::MapData,
        name: &'static str,
        pub key_size: usize,
        pub value_size: usize,
        /// Entries an array map holds (its keys are 0..n).
        array: Option<u32>,
    }

    impl Map {
        pub fn open(path: &Path, name: &'static str) -> Result<Map, MigrateError> {
            let data = aya::maps::MapData::from_pin(path).map_err(|e| MigrateError::Shape {
                map: path.display().to_string(),
                problem: e.to_string(),
            })?;
            let info = data.info().map_err(|e| MigrateError::Shape {
                map: name.into(),
                problem: e.to_string(),
            })?;
            let array = matches!(info.map_type(), Ok(aya::maps::MapType::Array)).then(|| info.max_entries());
            Ok(Map {
                key_size: info.key_size() as usize,
                value_size: info.value_size() as usize,
                data,
                name,
                array,
            })
        }

        /// A new, empty map of the same type, key, value and flags with
        /// room for `max_entries`.
        pub fn create_like(&self, max_entries: u32) -> Result<Map, MigrateError> {
            let shape = |problem: String| MigrateError::Shape {
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
            // SAFETY: `attr` is a valid bpf_attr for BPF_MAP_CREATE; the
            // kernel reads size_of::<CreateAttr>() bytes of it.
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
            let data = aya::maps::MapData::from_fd(owned).map_err(|e| MigrateError::Shape {
                map: self.name.into(),
                problem: e.to_string(),
            })?;
            Ok(Map {
                data,
                name: self.name,
                key_size: self.key_size,
                value_size: self.value_size,
                array: self.array.map(|_| max_entries),
            })
        }

        fn call(&self, cmd: libc::c_long, attr: &mut ElemAttr) -> std::io::Result<()> {
            attr.map_fd = self.data.fd().as_fd().as_raw_fd() as u32;
            // SAFETY: `attr` is a valid bpf_attr for the element commands,
            // its pointers name buffers of the map's key and value sizes.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    cmd,
                    attr as *mut ElemAttr,
                    std::mem::size_of::<ElemAttr>(),
                )
            };
            if r < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        }

        fn err(&self, op: &'static str) -> impl Fn(std::io::Error) -> MigrateError + '_ {
            move |source| MigrateError::Map {
                map: self.name.into(),
                op,
                source,
            }
        }

        /// Every key, as the map lists them now.
        pub fn keys(&self) -> Result<Vec<Vec<u8>>, MigrateError> {
            if let Some(n) = self.array {
                return Ok((0..n).map(|i| i.to_ne_bytes().to_vec()).collect());
            }
            let mut out: Vec<Vec<u8>> = Vec::new();
            let mut next = vec![0u8; self.key_size];
            loop {
                let mut attr = ElemAttr {
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

        pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, MigrateError> {
            let mut value = vec![0u8; self.value_size];
            let mut attr = ElemAttr {
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
        pub fn put(&self, key: &[u8], value: &[u8], only_new: bool) -> Result<bool, MigrateError> {
            let mut attr = ElemAttr {
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_layout_is_committed() {
        // At a layout change, commit the new description as
        // layouts/v<N>.desc (from OUT_DIR/layout.desc) and list it in KNOWN:
        // the next change will need it to read these maps.
        let known = Layout::known(crate::layout::LAYOUT_VERSION)
            .expect("layouts/v<current>.desc is committed and listed in KNOWN");
        assert_eq!(
            &known,
            Layout::current(),
            "layouts/v<current>.desc is what layout.h compiles to"
        );
    }

    #[test]
    fn entries_convert_field_by_field() {
        let from = Layout::parse("version 1\nS s 8\nF s a 0 4\nF s b 4 4\n").unwrap();
        let to = Layout::parse("version 2\nS s 16\nF s new 0 8\nF s b 8 4\nF s a 12 4\n").unwrap();
        let old = [1, 0, 0, 0, 2, 0, 0, 0];
        let got = convert(&from, &to, Part::Struct("s"), &old).unwrap();
        assert_eq!(got, [0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0]);
        // A size that does not fit the old layout is not converted.
        assert!(convert(&from, &to, Part::Struct("s"), &[0; 4]).is_none());
        assert!(convert(&from, &to, Part::Struct("missing"), &old).is_none());
        // The description survives its text.
        assert_eq!(Layout::parse(&to.to_desc()).unwrap(), to);
    }

    #[test]
    fn descriptions_that_make_no_sense_are_refused() {
        for bad in ["S s 8\n", "version x\n", "version 1\nF s a 0 4\n", "version 1\nQ\n"] {
            assert!(Layout::parse(bad).is_err(), "{bad:?}");
        }
    }
}
