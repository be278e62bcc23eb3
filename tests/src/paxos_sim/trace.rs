//! The last events of a run, kept to explain a violation.

use std::collections::VecDeque;
use std::fmt;

use paxos_log::{Ballot, Message, NodeId, Role, Slot, Value};

use super::command_id;

/// One message, summarised without its payload.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MsgSummary {
    kind: &'static str,
    ballot: Option<Ballot>,
    /// First and last slot carried, and how many.
    slots: Option<(Slot, Slot, usize)>,
    /// Commit point, first slot of a prepare, probe or the refusing promise.
    extra: Option<(&'static str, u64)>,
    /// A promise's `compacted_upto`, when not 0.
    compacted: Option<Slot>,
}

impl MsgSummary {
    /// A whole snapshot moved by the simulated driver, covering `1..=slot`.
    pub(crate) fn snapshot(slot: Slot) -> MsgSummary {
        MsgSummary {
            kind: "SNAPSHOT",
            ballot: None,
            slots: None,
            extra: Some(("upto", slot)),
            compacted: None,
        }
    }

    pub(crate) fn of(message: &Message) -> MsgSummary {
        let compacted = match message {
            Message::Promise { compacted_upto, .. } if *compacted_upto > 0 => Some(*compacted_upto),
            _ => None,
        };
        let (ballot, slots, extra) = match message {
            Message::Prepare { ballot, first_slot } => {
                (Some(*ballot), None, Some(("first", *first_slot)))
            }
            Message::Promise {
                ballot,
                first_slot,
                slots,
                ..
            } => (
                Some(*ballot),
                span(slots.iter().map(|s| s.slot())),
                Some(("first", *first_slot)),
            ),
            Message::Accept {
                ballot,
                entries,
                commit_upto,
            } => (
                Some(*ballot),
                span(entries.iter().map(|e| e.slot)),
                Some(("commit", *commit_upto)),
            ),
            Message::Accepted { ballot, slots } => {
                (Some(*ballot), span(slots.iter().copied()), None)
            }
            Message::Nack { ballot, promised } => (
                Some(*ballot),
                None,
                Some(("promised_round", promised.round)),
            ),
            Message::Heartbeat {
                ballot,
                commit_upto,
                ..
            } => (Some(*ballot), None, Some(("commit", *commit_upto))),
            Message::HeartbeatAck { ballot, probe } => {
                (Some(*ballot), None, Some(("probe", *probe)))
            }
            Message::CatchUp {
                first_slot,
                last_slot,
            } => (None, Some((*first_slot, *last_slot, 0)), None),
            Message::Chosen { entries } => (None, span(entries.iter().map(|e| e.slot)), None),
            Message::Snapshot { slot, offset, .. } => (
                None,
                span(std::iter::once(*slot)),
                Some(("offset", *offset)),
            ),
        };
        MsgSummary {
            kind: message.kind(),
            ballot,
            slots,
            extra,
            compacted,
        }
    }
}

/// First slot, last slot and count of a list of slots.
fn span(mut slots: impl Iterator<Item = Slot>) -> Option<(Slot, Slot, usize)> {
    let first = slots.next()?;
    let (last, count) = slots.fold((first, 1), |(_, n), s| (s, n + 1));
    Some((first, last, count))
}

impl fmt::Display for MsgSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind)?;
        if let Some(ballot) = self.ballot {
            write!(f, " b={ballot}")?;
        }
        if let Some((first, last, count)) = self.slots {
            if count == 0 {
                write!(f, " slots={first}..={last}")?;
            } else {
                write!(f, " slots={first}..={last}({count})")?;
            }
        }
        if let Some((name, value)) = self.extra {
            write!(f, " {name}={value}")?;
        }
        if let Some(compacted) = self.compacted {
            write!(f, " compacted={compacted}")?;
        }
        Ok(())
    }
}

/// A value in a few characters: `noop` or `[c12,c13]` (command ids).
pub(crate) fn short_value(value: &Value) -> String {
    match value {
        Value::Noop => "noop".to_string(),
        Value::Commands(commands) => {
            let ids: Vec<String> = commands
                .iter()
                .map(|c| match command_id(c) {
                    Some(id) => format!("c{id}"),
                    None => format!("?{c:?}"),
                })
                .collect();
            format!("[{}]", ids.join(","))
        }
        Value::Reconfigure(members) => {
            let ids: Vec<String> = members.iter().map(ToString::to_string).collect();
            format!("reconfigure{{{}}}", ids.join(","))
        }
    }
}

/// Something that happened in a run.
#[derive(Debug, Clone)]
pub(crate) enum TraceEvent {
    Deliver {
        from: NodeId,
        to: NodeId,
        msg: MsgSummary,
    },
    Drop {
        from: NodeId,
        to: NodeId,
        msg: MsgSummary,
        why: &'static str,
    },
    Forged {
        to: NodeId,
        msg: MsgSummary,
    },
    Ready {
        node: NodeId,
        messages: usize,
        persist: usize,
        persisted_messages: usize,
        chosen: String,
        reads: usize,
        snapshot_requests: usize,
        disk_ticks: u64,
        crash_point: Option<&'static str>,
    },
    Persisted {
        node: NodeId,
        ops: usize,
    },
    Crash {
        node: NodeId,
        point: &'static str,
    },
    Restart {
        node: NodeId,
        applied_upto: Slot,
        applied_before: Slot,
        promised: Ballot,
        accepted: usize,
        chosen: usize,
        snapshot: Slot,
        compacted: Slot,
    },
    Role {
        node: NodeId,
        role: Role,
        ballot: Ballot,
    },
    Propose {
        node: NodeId,
        command: u64,
        outcome: &'static str,
    },
    ReadIndex {
        node: NodeId,
        read_id: u64,
        required: Slot,
    },
    ReadServed {
        node: NodeId,
        read_id: u64,
        slot: Slot,
    },
    SnapshotTaken {
        node: NodeId,
        slot: Slot,
        compact_upto: Slot,
        crash: bool,
    },
    SnapshotSent {
        from: NodeId,
        to: NodeId,
        slot: Slot,
    },
    SnapshotCorrupted {
        to: NodeId,
        slot: Slot,
        changed_slot: Slot,
    },
    SnapshotInstalled {
        node: NodeId,
        from: NodeId,
        slot: Slot,
        applied_before: Slot,
        crash: bool,
    },
    SnapshotIgnored {
        node: NodeId,
        slot: Slot,
        why: &'static str,
    },
    CompactedStepDown {
        node: NodeId,
        role: Role,
        from: NodeId,
        ballot: Ballot,
        first_slot: Slot,
        compacted_upto: Slot,
    },
    Reconfigure {
        node: NodeId,
        kind: &'static str,
        members: Vec<NodeId>,
        outcome: &'static str,
    },
    Network(String),
    Phase(&'static str),
}

impl fmt::Display for TraceEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TraceEvent::Deliver { from, to, msg } => write!(f, "deliver {from}->{to} {msg}"),
            TraceEvent::Drop { from, to, msg, why } => {
                write!(f, "drop ({why}) {from}->{to} {msg}")
            }
            TraceEvent::Forged { to, msg } => write!(f, "FORGED value of {msg} to {to}"),
            TraceEvent::Ready {
                node,
                messages,
                persist,
                persisted_messages,
                chosen,
                reads,
                snapshot_requests,
                disk_ticks,
                crash_point,
            } => {
                write!(
                    f,
                    "{node} ready: send {messages}, persist {persist} ops (disk {disk_ticks}t), \
                     then send {persisted_messages}"
                )?;
                if !chosen.is_empty() {
                    write!(f, ", chosen {chosen}")?;
                }
                if *reads > 0 {
                    write!(f, ", {reads} reads")?;
                }
                if *snapshot_requests > 0 {
                    write!(f, ", {snapshot_requests} snapshot requests")?;
                }
                if let Some(point) = crash_point {
                    write!(f, " [will crash {point}]")?;
                }
                Ok(())
            }
            TraceEvent::Persisted { node, ops } => write!(f, "{node} persisted {ops} ops"),
            TraceEvent::Crash { node, point } => write!(f, "CRASH {node} ({point})"),
            TraceEvent::Restart {
                node,
                applied_upto,
                applied_before,
                promised,
                accepted,
                chosen,
                snapshot,
                compacted,
            } => write!(
                f,
                "RESTART {node}: applied_upto {applied_upto} (had applied {applied_before}), \
                 disk: promised {promised}, {accepted} accepted, {chosen} chosen, \
                 compacted up to {compacted}, snapshot up to {snapshot}"
            ),
            TraceEvent::Role { node, role, ballot } => {
                write!(f, "{node} is {role:?} (ballot {ballot})")
            }
            TraceEvent::Propose {
                node,
                command,
                outcome,
            } => write!(f, "propose c{command} at {node}: {outcome}"),
            TraceEvent::ReadIndex {
                node,
                read_id,
                required,
            } => write!(
                f,
                "read_index r{read_id} at {node} (must see slot {required})"
            ),
            TraceEvent::ReadServed {
                node,
                read_id,
                slot,
            } => write!(f, "{node} read r{read_id} ready at slot {slot}"),
            TraceEvent::SnapshotTaken {
                node,
                slot,
                compact_upto,
                crash,
            } => {
                write!(
                    f,
                    "{node} SNAPSHOT at slot {slot} saved, compacts log and store up to \
                     {compact_upto}"
                )?;
                if *crash {
                    write!(f, " [will crash before compacting]")?;
                }
                Ok(())
            }
            TraceEvent::SnapshotSent { from, to, slot } => {
                write!(f, "{from} sends its snapshot (upto {slot}) to {to}")
            }
            TraceEvent::SnapshotCorrupted {
                to,
                slot,
                changed_slot,
            } => write!(
                f,
                "CORRUPTED snapshot (upto {slot}) to {to}: value of slot {changed_slot} changed"
            ),
            TraceEvent::SnapshotInstalled {
                node,
                from,
                slot,
                applied_before,
                crash,
            } => {
                write!(
                    f,
                    "{node} INSTALLS snapshot from {from} up to slot {slot} (had applied \
                     {applied_before})"
                )?;
                if *crash {
                    write!(f, " [will crash before install_snapshot]")?;
                }
                Ok(())
            }
            TraceEvent::SnapshotIgnored { node, slot, why } => {
                write!(f, "{node} ignores snapshot up to {slot}: {why}")
            }
            TraceEvent::CompactedStepDown {
                node,
                role,
                from,
                ballot,
                first_slot,
                compacted_upto,
            } => write!(
                f,
                "{node} ({role:?}, ballot {ballot}) steps down: {from} promised with \
                 compacted_upto {compacted_upto} >= first_slot {first_slot}"
            ),
            TraceEvent::Reconfigure {
                node,
                kind,
                members,
                outcome,
            } => write!(
                f,
                "RECONFIGURE at {node} ({kind}) to {}: {outcome}",
                short_value(&Value::Reconfigure(members.clone()))
            ),
            TraceEvent::Network(what) => write!(f, "network: {what}"),
            TraceEvent::Phase(what) => write!(f, "=== {what}"),
        }
    }
}

/// A ring buffer of the last events, each with its tick.
#[derive(Debug)]
pub(crate) struct Trace {
    events: VecDeque<(u64, TraceEvent)>,
    capacity: usize,
}

impl Trace {
    pub(crate) fn new(capacity: usize) -> Trace {
        Trace {
            events: VecDeque::with_capacity(capacity.min(4096)),
            capacity: capacity.max(1),
        }
    }

    pub(crate) fn push(&mut self, tick: u64, event: TraceEvent) {
        if self.events.len() == self.capacity {
            self.events.pop_front();
        }
        self.events.push_back((tick, event));
    }

    /// The kept events, oldest first, one per line.
    pub(crate) fn lines(&self) -> Vec<String> {
        self.events
            .iter()
            .map(|(tick, event)| format!("t{tick:<5} {event}"))
            .collect()
    }
}
