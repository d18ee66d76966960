//! What the datapath tells the tools: per-reason counters, the names of
//! identities and policies, the loaded program's version and settings, and
//! the flow-event ring.

use super::{EVENTS, INFO, METRICS, MapsError, NAMES, Source, err, ignore_missing, lookup};
use crate::config::DatapathConfig;
use crate::layout::*;
use aya::maps::{Array, HashMap, MapData, PerCpuArray, RingBuf};
use std::path::Path;

/// Where the node agent serves flow events to `sluicectl observe`.
pub const DEFAULT_FLOWS_SOCKET: &str = "/run/sluice/flows.sock";

/// Packets and bytes counted under one reason in one direction, summed
/// over CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricCount {
    pub reason: Reason,
    pub dir: Direction,
    pub packets: u64,
    pub bytes: u64,
}

/// A name of the names map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name {
    pub kind: u32,
    pub id: u32,
    pub name: String,
}

pub struct ObserveMaps {
    names: HashMap<MapData, NameKey, NameValue>,
    metrics: PerCpuArray<MapData, MetricsValue>,
    info: Array<MapData, DpInfo>,
}

impl ObserveMaps {
    pub fn open(src: &mut Source<'_>) -> Result<ObserveMaps, MapsError> {
        Ok(ObserveMaps {
            names: src.map(&NAMES)?,
            metrics: src.map(&METRICS)?,
            info: src.map(&INFO)?,
        })
    }

    /// The info entry as it is.
    pub fn info(&self) -> Result<DpInfo, MapsError> {
        self.info.get(&0, 0).map_err(err(INFO.name))
    }

    pub fn set_info(&mut self, v: DpInfo) -> Result<(), MapsError> {
        self.info.set(0, v, 0).map_err(err(INFO.name))
    }

    /// The settings the attached programs were loaded with (`versioned`
    /// names the directory in the error when none were loaded yet).
    pub fn loaded_config(&self, versioned: &Path) -> Result<DatapathConfig, MapsError> {
        let info = self.info()?;
        if info.prog_hash == 0 {
            return Err(MapsError::NotLoaded {
                dir: versioned.display().to_string(),
            });
        }
        info.config().map_err(|e| MapsError::Info(e.to_string()))
    }

    /// Per reason and direction, summed over CPUs.
    pub fn metrics(&self) -> Result<Vec<MetricCount>, MapsError> {
        let mut out = Vec::new();
        for reason in Reason::ALL {
            for dir in [Direction::Egress, Direction::Ingress] {
                let per_cpu = self
                    .metrics
                    .get(&metrics_index(reason, dir), 0)
                    .map_err(err(METRICS.name))?;
                let (packets, bytes) = per_cpu.iter().fold((0, 0), |(p, b), v| (p + v.packets, b + v.bytes));
                out.push(MetricCount {
                    reason,
                    dir,
                    packets,
                    bytes,
                });
            }
        }
        Ok(out)
    }

    /// Packets counted under one reason in one direction.
    pub fn count(&self, reason: Reason, dir: Direction) -> Result<u64, MapsError> {
        Ok(self
            .metrics()?
            .into_iter()
            .find(|m| m.reason == reason && m.dir == dir)
            .map_or(0, |m| m.packets))
    }

    pub fn set_name(&mut self, kind: u32, id: u32, name: &str) -> Result<(), MapsError> {
        self.names
            .insert(NameKey { kind, id }, NameValue::new(name), 0)
            .map_err(err(NAMES.name))
    }

    pub fn remove_name(&mut self, kind: u32, id: u32) -> Result<(), MapsError> {
        ignore_missing(self.names.remove(&NameKey { kind, id }), &NAMES)
    }

    pub fn name(&self, kind: u32, id: u32) -> Option<String> {
        lookup(&self.names, &NAMES, &NameKey { kind, id })
            .ok()
            .flatten()
            .map(|v| v.to_string_lossy())
    }

    /// Every name of the names map.
    pub fn names(&self) -> Result<Vec<Name>, MapsError> {
        self.names
            .iter()
            .map(|kv| {
                kv.map(|(k, v)| Name {
                    kind: k.kind,
                    id: k.id,
                    name: v.to_string_lossy(),
                })
            })
            .collect::<Result<_, _>>()
            .map_err(err(NAMES.name))
    }
}

/// The flow-event ring of a node's pinned maps. It has one reader: the
/// agent. Events are submitted without a wakeup, so the reader polls.
pub struct Events {
    ring: RingBuf<MapData>,
}

impl Events {
    pub fn open(src: &mut Source<'_>) -> Result<Events, MapsError> {
        Ok(Events {
            ring: src.map(&EVENTS)?,
        })
    }

    pub fn open_pinned(versioned: &Path) -> Result<Events, MapsError> {
        Events::open(&mut Source::pinned(versioned))
    }

    /// Every event on the ring now.
    pub fn drain(&mut self) -> Vec<FlowEvent> {
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            out.extend(FlowEvent::from_bytes(&item));
        }
        out
    }
}
