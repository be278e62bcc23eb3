//! What a simulation run does to the cluster: the fault rates, the client
//! load and the core's settings, plus the named scenarios of the suites.

/// A deliberate fault the real system never has, used only to prove that
/// the checkers catch a broken log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corruption {
    /// The network rewrites the value of every slot of every `Accept` it
    /// delivers into a command no client proposed, so followers accept
    /// values their leader never sent (the leader's own acceptance never
    /// crosses the network and stays right).
    ForgeAcceptValues,
    /// The network changes the value of one random slot of every snapshot
    /// it delivers (into a command no client proposed), so the receiver
    /// installs a state machine that differs from the chosen log.
    CorruptSnapshots,
    /// The driver restores and installs snapshots without the membership
    /// saved with them (it hands the core the genesis configuration, as a
    /// driver would that dropped `Replica::membership_for_snapshot`), so a
    /// replica restored from a snapshot that covers a membership change
    /// counts its quorums among the wrong members.
    ForgetSnapshotMembership,
}

/// The fault rates, client load and core settings of one simulation run.
///
/// Probabilities are per tick unless said otherwise. Every fault stops after
/// `fault_ticks`: the network heals, every replica restarts, and from then
/// on the cluster must elect a leader and choose a fresh proposal on every
/// replica within `liveness_ticks` (with membership changes: on every
/// member of the latest configuration).
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Name, used in reports and to vary schedules between scenarios.
    pub name: &'static str,
    /// Number of replicas in the genesis configuration (3 or 5): machines
    /// `n1..=n<replicas>`, the `Config::members` of every machine.
    pub replicas: u64,
    /// Extra machines, numbered after the genesis ones, that run from the
    /// start as non-voters (their `Config::members` is the genesis set, as
    /// for a replica added later) until a membership change adds them.
    /// Every machine takes part in the faults.
    pub spares: u64,
    /// Ticks during which faults are injected.
    pub fault_ticks: u64,
    /// Bound, in ticks after the faults stop, for the liveness check.
    pub liveness_ticks: u64,

    // --- network ---
    /// Per message: lost.
    pub drop_rate: f64,
    /// Per message: delivered twice (each copy with its own delay).
    pub duplicate_rate: f64,
    /// Each message takes `[0, delay_max_ticks]` ticks; messages of the
    /// same tick arrive in random order.
    pub delay_max_ticks: u64,
    /// Per message: held back for up to `reorder_delay_max_ticks` more, so
    /// that later messages overtake it (stale messages from old ballots).
    pub reorder_rate: f64,
    /// See `reorder_rate`.
    pub reorder_delay_max_ticks: u64,
    /// Per tick while the network is whole: split it.
    pub partition_rate: f64,
    /// Of the partitions: the share that is one-way (one side's messages
    /// get through, the other side's do not).
    pub one_way_fraction: f64,
    /// Of the partitions: the share that cuts only the link between two
    /// replicas, both ways (the others still reach both: a bridge, the
    /// classic way to get two replicas that each think they can lead).
    pub link_cut_fraction: f64,
    /// Per tick while the network is split: heal it.
    pub heal_rate: f64,

    // --- disk, crashes, restarts ---
    /// A `Ready`'s persist completes `[0, disk_delay_max_ticks]` ticks after
    /// it is taken; messages keep arriving meanwhile.
    pub disk_delay_max_ticks: u64,
    /// Per tick: crash one random running replica.
    pub crash_rate: f64,
    /// Per `Ready` taken: crash while carrying it out, at a random point
    /// (before sending, after sending, in the middle of the persist batch,
    /// after the persist, after the persisted messages, in the middle of
    /// applying, before `advance`).
    pub crash_in_ready_rate: f64,
    /// Per `Ready` that persists a promise (an election is under way):
    /// crash while carrying it out, at a random point. Aims crashes at the
    /// window where a lost promise could matter most.
    pub crash_in_election_rate: f64,
    /// Per tick: crash every running replica at once.
    pub crash_all_rate: f64,
    /// A crashed replica restarts after `[1, down_ticks_max]` ticks.
    pub down_ticks_max: u64,
    /// Of the crashes: the share that restarts within `[1, 5]` ticks, before
    /// the other replicas notice (so a replica that lost an unsynced
    /// promise is back while the ballots it forgot are still in play).
    pub quick_restart_fraction: f64,
    /// Per restart: the state machine was lost entirely (`applied_upto` 0).
    pub state_machine_lost_rate: f64,
    /// Per restart (when not lost): the state machine kept only a random
    /// prefix of what it applied (it is flushed lazily).
    ///
    /// With snapshots, a state machine is never lost below its durable
    /// snapshot: a lost one restarts from the snapshot, a partly lost one
    /// keeps a prefix at least that long. (A real node whose snapshot is
    /// lost while its log is compacted cannot restart at all, so the
    /// simulation does not model snapshot loss.)
    pub state_machine_partial_rate: f64,

    // --- snapshots and log compaction ---
    /// Each replica takes a snapshot of its state machine, saves it
    /// durably, then compacts its log (`Replica::compact`) and acceptor
    /// store (`AcceptorStore::compact`) below it, every K applied slots;
    /// K is drawn per run from this range. `None`: never (no snapshot is
    /// then ever taken, sent or installed).
    pub snapshot_every: Option<(u64, u64)>,
    /// Per tick and running replica: take a snapshot now, at whatever it
    /// applied, even with a `Ready` in flight (compaction at random
    /// moments).
    pub snapshot_random_rate: f64,
    /// Of the snapshots: the share that compacts the log only up to a
    /// random slot between the previous compaction point and the snapshot
    /// (keeping a tail that peers can still catch up from).
    pub compact_partial_fraction: f64,
    /// A replica sends its snapshot to the same peer at most once per this
    /// many ticks, however often the peer asks (`snapshot_resend_after`).
    pub snapshot_resend_ticks: u64,
    /// Per snapshot taken: crash right after it is durable, before the log
    /// and store are compacted below it.
    pub crash_in_snapshot_rate: f64,
    /// Per snapshot received and installed: crash right after the state
    /// machine is restored from it and it is saved durably, before
    /// `install_snapshot` and the store's compaction (a point of the real
    /// driver's `receive_snapshot`; a torn store compaction leaves the same
    /// state). `compaction_crash_before_install_snapshot` drives it hard;
    /// it is the regression test of the bug this crash point found.
    pub crash_in_install_rate: f64,
    /// Per tick: one replica goes away for a long stretch (crashed, or cut
    /// off from everyone both ways), so that it falls behind the others'
    /// compaction points; at most a minority at once.
    pub long_outage_rate: f64,
    /// A long outage lasts `[low, high]` ticks.
    pub long_outage_ticks: (u64, u64),
    /// Of the long outages: the share that isolates the replica on the
    /// network (it keeps running, and may campaign) instead of crashing it.
    pub long_outage_isolate_fraction: f64,

    // --- clients ---
    /// Per tick while the faults last: a client sends a burst of new
    /// commands (afterwards only the liveness check proposes).
    pub propose_rate: f64,
    /// Commands per burst: `[1, propose_burst_max]`.
    pub propose_burst_max: u64,
    /// Per client call: it goes to a random replica instead of one that
    /// believes it leads (it is then usually refused).
    pub misdirect_rate: f64,
    /// Per tick: a client starts a linearizable read (`read_index`).
    pub read_rate: f64,

    // --- membership changes ---
    /// Per tick while the faults last: ask the replica that believes it
    /// leads to `reconfigure` to a new member set, drawn from its newest
    /// configuration: one machine added, one member removed, or one member
    /// replaced by a non-member. Sizes stay mostly within 3..=5 members.
    pub reconfig_rate: f64,
    /// Per change a leader took: crash the machine being added or removed
    /// (for a replacement, one of the two), now or a few ticks later, so
    /// the change happens while it is down and it must catch up (from the
    /// log or a snapshot) after its restart.
    pub crash_changing_node_rate: f64,

    // --- core settings ---
    /// `Config::election_timeout_ticks_min`.
    pub election_timeout_ticks_min: u32,
    /// `Config::election_timeout_ticks_max`.
    pub election_timeout_ticks_max: u32,
    /// `Config::heartbeat_interval_ticks`.
    pub heartbeat_interval_ticks: u32,
    /// `Config::batch_commands_max`.
    pub batch_commands_max: usize,
    /// `Config::inflight_slots_max`.
    pub inflight_slots_max: u64,
    /// `Config::message_slots_max`.
    pub message_slots_max: usize,
    /// `Config::pending_commands_max`.
    pub pending_commands_max: usize,
    /// `Config::reconfig_window_slots` (α).
    pub reconfig_window_slots: u64,
    /// Each run draws the core settings above (heartbeat interval,
    /// election timeouts, batch, pipeline and message bounds) from wide
    /// ranges instead, so that the seeds of one suite also cover many
    /// timing relations; the report shows the values drawn.
    pub vary_core_settings: bool,

    /// Test-only sabotage proving the checkers work; `None` in every suite.
    pub corruption: Option<Corruption>,
}

impl Scenario {
    /// A cluster of `replicas` with no fault at all and moderate client
    /// load: the base every named scenario changes.
    pub fn quiet(name: &'static str, replicas: u64) -> Scenario {
        Scenario {
            name,
            replicas,
            spares: 0,
            fault_ticks: 500,
            liveness_ticks: 1_000,
            drop_rate: 0.0,
            duplicate_rate: 0.0,
            delay_max_ticks: 2,
            reorder_rate: 0.0,
            reorder_delay_max_ticks: 0,
            partition_rate: 0.0,
            one_way_fraction: 0.0,
            link_cut_fraction: 0.0,
            heal_rate: 0.0,
            disk_delay_max_ticks: 1,
            crash_rate: 0.0,
            crash_in_ready_rate: 0.0,
            crash_in_election_rate: 0.0,
            crash_all_rate: 0.0,
            down_ticks_max: 30,
            quick_restart_fraction: 0.0,
            state_machine_lost_rate: 0.0,
            state_machine_partial_rate: 0.0,
            snapshot_every: None,
            snapshot_random_rate: 0.0,
            compact_partial_fraction: 0.0,
            snapshot_resend_ticks: 5,
            crash_in_snapshot_rate: 0.0,
            crash_in_install_rate: 0.0,
            long_outage_rate: 0.0,
            long_outage_ticks: (100, 200),
            long_outage_isolate_fraction: 0.0,
            propose_rate: 0.3,
            propose_burst_max: 4,
            misdirect_rate: 0.1,
            read_rate: 0.05,
            reconfig_rate: 0.0,
            crash_changing_node_rate: 0.0,
            election_timeout_ticks_min: 10,
            election_timeout_ticks_max: 20,
            heartbeat_interval_ticks: 2,
            batch_commands_max: 4,
            inflight_slots_max: 8,
            message_slots_max: 8,
            pending_commands_max: 64,
            reconfig_window_slots: 8,
            vary_core_settings: false,
            corruption: None,
        }
    }

    /// Three replicas on a network that loses, duplicates, delays and
    /// reorders messages; no partitions, no crashes.
    pub fn lossy_network() -> Scenario {
        Scenario {
            drop_rate: 0.2,
            duplicate_rate: 0.1,
            delay_max_ticks: 4,
            reorder_rate: 0.1,
            reorder_delay_max_ticks: 25,
            ..Scenario::quiet("lossy_network", 3)
        }
    }

    /// Three replicas; the network splits (both ways, or one way) and heals
    /// again, with a little loss.
    pub fn partitions_and_heal() -> Scenario {
        Scenario {
            drop_rate: 0.02,
            delay_max_ticks: 3,
            reorder_rate: 0.02,
            reorder_delay_max_ticks: 20,
            partition_rate: 0.04,
            one_way_fraction: 0.4,
            link_cut_fraction: 0.3,
            heal_rate: 0.04,
            ..Scenario::quiet("partitions_and_heal", 3)
        }
    }

    /// Three replicas crash often, many of them in the middle of carrying
    /// out a `Ready` (so unsynced promises and acceptances are lost), and
    /// restart with a durable, lost or partly lost state machine.
    pub fn crashes_lose_unsynced() -> Scenario {
        Scenario {
            drop_rate: 0.02,
            delay_max_ticks: 3,
            disk_delay_max_ticks: 3,
            crash_rate: 0.015,
            crash_in_ready_rate: 0.01,
            crash_in_election_rate: 0.05,
            down_ticks_max: 40,
            quick_restart_fraction: 0.3,
            state_machine_lost_rate: 0.25,
            state_machine_partial_rate: 0.35,
            ..Scenario::quiet("crashes_lose_unsynced", 3)
        }
    }

    /// Three replicas that all crash at once, repeatedly, while messages
    /// are in flight; some crash alone or in the middle of a `Ready`.
    pub fn crash_everyone() -> Scenario {
        Scenario {
            drop_rate: 0.02,
            delay_max_ticks: 3,
            reorder_rate: 0.02,
            reorder_delay_max_ticks: 20,
            disk_delay_max_ticks: 2,
            crash_rate: 0.005,
            crash_in_ready_rate: 0.003,
            crash_all_rate: 0.012,
            down_ticks_max: 25,
            quick_restart_fraction: 0.2,
            state_machine_lost_rate: 0.2,
            state_machine_partial_rate: 0.3,
            ..Scenario::quiet("crash_everyone", 3)
        }
    }

    /// Five replicas and every fault together.
    pub fn five_replicas_mixed_faults() -> Scenario {
        Scenario {
            drop_rate: 0.08,
            duplicate_rate: 0.05,
            delay_max_ticks: 4,
            reorder_rate: 0.05,
            reorder_delay_max_ticks: 25,
            partition_rate: 0.02,
            one_way_fraction: 0.4,
            link_cut_fraction: 0.3,
            heal_rate: 0.04,
            disk_delay_max_ticks: 2,
            crash_rate: 0.01,
            crash_in_ready_rate: 0.002,
            crash_in_election_rate: 0.05,
            crash_all_rate: 0.002,
            down_ticks_max: 40,
            quick_restart_fraction: 0.3,
            state_machine_lost_rate: 0.2,
            state_machine_partial_rate: 0.3,
            vary_core_settings: true,
            ..Scenario::quiet("five_replicas_mixed_faults", 5)
        }
    }

    /// Three replicas where single links are cut (one replica bridges the
    /// two ends, which both try to lead), elections are interrupted by
    /// crashes that lose unsynced promises, and crashed replicas come back
    /// at once.
    pub fn elections_across_bridges() -> Scenario {
        Scenario {
            drop_rate: 0.02,
            delay_max_ticks: 3,
            partition_rate: 0.05,
            link_cut_fraction: 0.8,
            one_way_fraction: 0.5,
            heal_rate: 0.03,
            disk_delay_max_ticks: 3,
            crash_rate: 0.003,
            crash_in_ready_rate: 0.002,
            crash_in_election_rate: 0.3,
            down_ticks_max: 20,
            quick_restart_fraction: 0.7,
            state_machine_lost_rate: 0.2,
            state_machine_partial_rate: 0.3,
            read_rate: 0.3,
            ..Scenario::quiet("elections_across_bridges", 3)
        }
    }

    /// Three replicas under many linearizable reads, with loss, partitions
    /// (so stale leaders exist) and crashes.
    pub fn reads_under_faults() -> Scenario {
        Scenario {
            drop_rate: 0.05,
            duplicate_rate: 0.03,
            delay_max_ticks: 4,
            reorder_rate: 0.05,
            reorder_delay_max_ticks: 20,
            partition_rate: 0.03,
            one_way_fraction: 0.5,
            link_cut_fraction: 0.4,
            heal_rate: 0.05,
            disk_delay_max_ticks: 2,
            crash_rate: 0.006,
            crash_in_ready_rate: 0.002,
            down_ticks_max: 30,
            state_machine_lost_rate: 0.2,
            state_machine_partial_rate: 0.3,
            read_rate: 0.5,
            misdirect_rate: 0.2,
            ..Scenario::quiet("reads_under_faults", 3)
        }
    }

    /// Every fault at once on three replicas: the long soak's mixture.
    pub fn mixed_faults() -> Scenario {
        Scenario {
            drop_rate: 0.08,
            duplicate_rate: 0.05,
            delay_max_ticks: 4,
            reorder_rate: 0.05,
            reorder_delay_max_ticks: 25,
            partition_rate: 0.02,
            one_way_fraction: 0.4,
            link_cut_fraction: 0.3,
            heal_rate: 0.04,
            disk_delay_max_ticks: 2,
            crash_rate: 0.01,
            crash_in_ready_rate: 0.003,
            crash_in_election_rate: 0.05,
            crash_all_rate: 0.003,
            down_ticks_max: 40,
            quick_restart_fraction: 0.3,
            state_machine_lost_rate: 0.2,
            state_machine_partial_rate: 0.3,
            read_rate: 0.2,
            vary_core_settings: true,
            ..Scenario::quiet("mixed_faults", 3)
        }
    }

    /// Three replicas that take snapshots and compact their logs often,
    /// under crashes (some while snapshotting), loss and partitions, while
    /// one replica at a time is kept down or cut off for long stretches, so
    /// it falls behind the others' compaction points and can only come back
    /// through a snapshot (or, when it campaigns, is refused leadership by a
    /// compacted promise).
    pub fn compaction_and_snapshots() -> Scenario {
        Scenario {
            fault_ticks: 800,
            drop_rate: 0.05,
            duplicate_rate: 0.03,
            delay_max_ticks: 3,
            reorder_rate: 0.03,
            reorder_delay_max_ticks: 20,
            partition_rate: 0.01,
            one_way_fraction: 0.5,
            link_cut_fraction: 0.3,
            heal_rate: 0.05,
            disk_delay_max_ticks: 2,
            crash_rate: 0.006,
            crash_in_ready_rate: 0.003,
            crash_in_election_rate: 0.05,
            crash_all_rate: 0.002,
            down_ticks_max: 30,
            quick_restart_fraction: 0.3,
            state_machine_lost_rate: 0.3,
            state_machine_partial_rate: 0.3,
            snapshot_every: Some((5, 40)),
            snapshot_random_rate: 0.005,
            compact_partial_fraction: 0.3,
            crash_in_snapshot_rate: 0.03,
            crash_in_install_rate: 0.05,
            long_outage_rate: 0.01,
            long_outage_ticks: (60, 200),
            long_outage_isolate_fraction: 0.5,
            propose_rate: 0.4,
            read_rate: 0.2,
            ..Scenario::quiet("compaction_and_snapshots", 3)
        }
    }

    /// [`Scenario::five_replicas_mixed_faults`] (five replicas, every
    /// fault) with snapshots and compaction, longer, and a heavier client
    /// load (two replicas may be away for long stretches at once).
    pub fn compaction_five_replicas_mixed() -> Scenario {
        Scenario {
            name: "compaction_five_replicas_mixed",
            fault_ticks: 800,
            snapshot_every: Some((5, 40)),
            snapshot_random_rate: 0.003,
            compact_partial_fraction: 0.3,
            crash_in_snapshot_rate: 0.03,
            crash_in_install_rate: 0.05,
            long_outage_rate: 0.01,
            long_outage_ticks: (60, 200),
            long_outage_isolate_fraction: 0.5,
            propose_rate: 0.4,
            read_rate: 0.2,
            ..Scenario::five_replicas_mixed_faults()
        }
    }

    /// The long soak's mixture ([`Scenario::mixed_faults`]) with snapshots,
    /// compaction and long outages.
    pub fn compaction_mixed_faults() -> Scenario {
        Scenario {
            name: "compaction_mixed_faults",
            snapshot_every: Some((5, 40)),
            snapshot_random_rate: 0.004,
            compact_partial_fraction: 0.3,
            crash_in_snapshot_rate: 0.03,
            crash_in_install_rate: 0.05,
            long_outage_rate: 0.008,
            long_outage_ticks: (60, 200),
            long_outage_isolate_fraction: 0.5,
            ..Scenario::mixed_faults()
        }
    }

    /// Three genesis replicas and two spare machines, with frequent
    /// membership changes (adds, removes, replacements, of the leader too)
    /// on a lossy network with partitions, crashes (often of the machine
    /// being added or removed) and reads.
    pub fn membership_changes() -> Scenario {
        Scenario {
            spares: 2,
            drop_rate: 0.05,
            duplicate_rate: 0.03,
            delay_max_ticks: 4,
            reorder_rate: 0.05,
            reorder_delay_max_ticks: 20,
            partition_rate: 0.02,
            one_way_fraction: 0.4,
            link_cut_fraction: 0.3,
            heal_rate: 0.05,
            disk_delay_max_ticks: 2,
            crash_rate: 0.006,
            crash_in_ready_rate: 0.002,
            crash_in_election_rate: 0.03,
            down_ticks_max: 30,
            quick_restart_fraction: 0.3,
            state_machine_lost_rate: 0.2,
            state_machine_partial_rate: 0.3,
            read_rate: 0.2,
            reconfig_rate: 0.05,
            crash_changing_node_rate: 0.3,
            ..Scenario::quiet("membership_changes", 3)
        }
    }

    /// Five genesis replicas and two spares, every fault, membership
    /// changes, and core settings (α among them) drawn per run.
    pub fn membership_five_replicas_mixed() -> Scenario {
        Scenario {
            spares: 2,
            reconfig_rate: 0.05,
            crash_changing_node_rate: 0.3,
            ..Scenario {
                name: "membership_five_replicas_mixed",
                ..Scenario::five_replicas_mixed_faults()
            }
        }
    }

    /// No fault at all: a group of one replica and one spare machine, and
    /// membership changes (the spare added, the member replaced by the
    /// spare, and back). The smallest case of a handover: when the only
    /// member is replaced, the group's next leader must be the machine that
    /// replaced it.
    pub fn membership_one_member_handover() -> Scenario {
        Scenario {
            spares: 1,
            reconfig_rate: 0.05,
            ..Scenario::quiet("membership_one_member_handover", 1)
        }
    }

    /// Membership changes with snapshots, compaction and long outages: a
    /// machine added after the others compacted (a spare, or one down for
    /// long) can only catch up by installing a snapshot, which must carry
    /// the membership the compacted prefix decided.
    pub fn membership_with_compaction() -> Scenario {
        Scenario {
            name: "membership_with_compaction",
            spares: 2,
            reconfig_rate: 0.04,
            crash_changing_node_rate: 0.3,
            ..Scenario::compaction_and_snapshots()
        }
    }

    /// The long soak's mixture with snapshots and compaction
    /// ([`Scenario::compaction_mixed_faults`]), two spares and membership
    /// changes.
    pub fn membership_mixed_faults() -> Scenario {
        Scenario {
            name: "membership_mixed_faults",
            spares: 2,
            reconfig_rate: 0.04,
            crash_changing_node_rate: 0.3,
            ..Scenario::compaction_mixed_faults()
        }
    }
}
