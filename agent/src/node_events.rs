//! Kubernetes Events for what a sync could not do as asked: a failed write
//! (`SyncFailed`) or a fallback (`SyncWarning`), posted as Warning events
//! on the agent's Node, so `kubectl describe node` and `kubectl get events`
//! show them beside the agent's log and `sluice_sync_failing`.
//!
//! A message is posted when it appears, not on every retry of the pass
//! that keeps it; once it is gone and comes back, it is posted again.
//! Only with the API-server source (manifests have no API to post to).

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use std::collections::BTreeSet;
use tokio::sync::mpsc;
use tracing::warn;

/// The most events one pass posts (the rest are in the log).
pub const MAX_PER_PASS: usize = 20;
/// The API server takes a message of at most 1 kB.
const MAX_NOTE: usize = 1000;

/// One event to post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub reason: &'static str,
    pub message: String,
}

/// Which messages of a pass are new: the ones not posted while they lasted.
#[derive(Debug, Default)]
pub struct Dedup {
    posted: BTreeSet<(&'static str, String)>,
}

impl Dedup {
    /// The notes to post for a pass that reported `failures` and
    /// `warnings`; what no longer appears may be posted again later.
    pub fn pass(&mut self, failures: &[String], warnings: &[String]) -> Vec<Note> {
        let now: BTreeSet<(&'static str, String)> = failures
            .iter()
            .map(|f| ("SyncFailed", f.clone()))
            .chain(warnings.iter().map(|w| ("SyncWarning", w.clone())))
            .collect();
        let new: Vec<Note> = now
            .difference(&self.posted)
            .take(MAX_PER_PASS)
            .map(|(reason, message)| Note {
                reason,
                message: message.clone(),
            })
            .collect();
        self.posted = now;
        new
    }
}

/// Posts notes as events on node `node`, from the API-server runtime.
#[derive(Clone)]
pub struct Poster {
    tx: mpsc::UnboundedSender<Note>,
}

impl Poster {
    /// Start the posting task on the current tokio runtime.
    pub fn spawn(client: Client, node: String) -> Poster {
        let (tx, mut rx) = mpsc::unbounded_channel::<Note>();
        let reporter = Reporter {
            controller: "sluice-agent".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        let recorder = Recorder::new(client, reporter);
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.clone()),
            ..Default::default()
        };
        tokio::spawn(async move {
            while let Some(n) = rx.recv().await {
                let mut note = n.message;
                if note.len() > MAX_NOTE {
                    let mut end = MAX_NOTE;
                    while !note.is_char_boundary(end) {
                        end -= 1;
                    }
                    note.truncate(end);
                }
                let ev = Event {
                    type_: EventType::Warning,
                    reason: n.reason.into(),
                    note: Some(note),
                    action: "Sync".into(),
                    secondary: None,
                };
                if let Err(e) = recorder.publish(&ev, &reference).await {
                    warn!(error = %e, node = %node, "posting an event");
                }
            }
        });
        Poster { tx }
    }

    pub fn post(&self, notes: Vec<Note>) {
        for n in notes {
            let _ = self.tx.send(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_posted_when_it_appears() {
        let mut d = Dedup::default();
        let f = |s: &str| vec![s.to_string()];
        let first = d.pass(&f("frontend a failed"), &f("slice x: fd00::5 is not IPv4"));
        assert_eq!(first.len(), 2);
        assert_eq!(first[0].reason, "SyncFailed");
        // The retries of the same failure post nothing.
        assert!(
            d.pass(&f("frontend a failed"), &f("slice x: fd00::5 is not IPv4"))
                .is_empty()
        );
        // A new one is posted; one that went and came back is posted again.
        assert_eq!(d.pass(&f("frontend b failed"), &[]).len(), 1);
        let again = d.pass(&f("frontend a failed"), &[]);
        assert_eq!(
            again,
            vec![Note {
                reason: "SyncFailed",
                message: "frontend a failed".into()
            }]
        );
        // A pass with a flood posts a bounded number.
        let many: Vec<String> = (0..100).map(|i| format!("f{i}")).collect();
        assert_eq!(d.pass(&many, &[]).len(), MAX_PER_PASS);
    }
}
