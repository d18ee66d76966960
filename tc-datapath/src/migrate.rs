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
use crate::raw_map as raw;
pub use crate::raw_map::Syscalls;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::LazyLock;

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("layout description, line {line}: {problem}")]
    Desc { line: usize, problem: String },
    #[error(transparent)]
    Raw(#[from] raw::RawMapError),
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
        let mut converted = raw::Entries::new(new.key_size, new.value_size);
        let held = if flowing_only { Some(new.keys_held()?) } else { None };
        old.read(|chunk| {
            converted.clear();
            for (key, value) in chunk.iter() {
                match (convert(from, to, *key_part, key), convert(from, to, *value_part, value)) {
                    (Some(k), Some(v)) if k.len() == new.key_size && v.len() == new.value_size => {
                        converted.push(&k, &v)
                    }
                    _ => skipped += 1,
                }
            }
            written += if flowing_only {
                new.write_new(&converted, held.as_ref())?
            } else {
                new.write(&converted)?
            };
            Ok(())
        })?;
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
    remake_with(path, name, max_entries, to, Syscalls::Batched)
}

/// [`remake`] with the syscalls chosen (the benchmark times both).
pub fn remake_with(
    path: &Path,
    name: &'static str,
    max_entries: u32,
    to: &Path,
    how: Syscalls,
) -> Result<usize, MigrateError> {
    let old = raw::Map::open(path, name)?;
    old.use_syscalls(how);
    let new = old.create_like(max_entries)?;
    new.data.pin(to).map_err(|e| MigrateError::Shape {
        map: name.into(),
        problem: format!("pinning at {}: {e}", to.display()),
    })?;
    let mut written = 0;
    old.read(|chunk| {
        written += new.write(chunk)?;
        Ok(())
    })?;
    Ok(written)
}

/// Copy the entries of the map pinned at `from` that the one at `to` lacks
/// (a resized table's, written by the programs that still had the old one).
pub fn carry_new(from: &Path, to: &Path, name: &'static str) -> Result<usize, MigrateError> {
    carry_new_with(from, to, name, Syscalls::Batched)
}

/// [`carry_new`] with the syscalls chosen.
pub fn carry_new_with(from: &Path, to: &Path, name: &'static str, how: Syscalls) -> Result<usize, MigrateError> {
    let (old, new) = (raw::Map::open(from, name)?, raw::Map::open(to, name)?);
    old.use_syscalls(how);
    if (old.key_size, old.value_size) != (new.key_size, new.value_size) {
        return Err(MigrateError::Shape {
            map: name.into(),
            problem: format!("{} and {} hold entries of other sizes", from.display(), to.display()),
        });
    }
    // The new table's keys, read first by batches, spare a write attempt
    // per key already there; read entry by entry they would cost as much
    // as they spare.
    let held = match how {
        Syscalls::Batched => Some(new.keys_held()?),
        Syscalls::PerEntry => None,
    };
    let mut written = 0;
    old.read(|chunk| {
        written += new.write_new(chunk, held.as_ref())?;
        Ok(())
    })?;
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
