//! Multi-Paxos replicated log: the agreement every replica group and the
//! shard controller run on.
//!
//! ```text
//!            ticks, proposals, messages in
//!                        │
//!                ┌───────▼────────┐
//!                │    Replica     │  pure, deterministic: no I/O, no clock,
//!                │   (core/)      │  no threads, randomness from a seed
//!                └───────┬────────┘
//!                        │ Ready
//!   messages ──► send    │    persist ──► AcceptorStore (one fsync)
//!                        │    persisted_messages ──► send after the fsync
//!                        │    chosen ──► apply to the state machine
//!                        ▼
//!                     advance()
//! ```
//!
//! The core ([`Replica`]) is a plain struct stepped by the driver:
//! [`Replica::tick`] for time, [`Replica::propose`] for new commands,
//! [`Replica::step`] for messages from peers, then [`Replica::ready`] to
//! collect what to do and [`Replica::advance`] once it is done. Because the
//! core never touches a socket, a file or a clock, tests run thousands of
//! seeded schedules of message loss, reordering, partitions and crashes per
//! minute and replay any failing seed exactly.
//!
//! The protocol is Multi-Paxos with a stable leader: ballots are
//! `(round, node_id)`; phase 1 covers every slot from the first one not known
//! chosen; a new leader re-proposes the highest-ballot value of each open
//! slot and fills holes with no-ops; phase 2 runs on batches of slots, several
//! in flight at once. See `docs/protocol.md`.

pub mod config;
pub mod core;
pub mod driver;
pub mod error;
pub mod membership;
pub mod message;
pub mod net;
pub mod ready;
pub mod state_machine;
pub mod store;
pub mod transport;
pub mod types;

pub use crate::config::Config;
pub use crate::core::{Replica, Role};
pub use crate::driver::{DriverOptions, Node, NodeError, NodeHandle, NodeMetrics, StartError};
pub use crate::error::{ConfigError, ProposeError};
pub use crate::membership::Membership;
pub use crate::message::{Envelope, Message, PromisedSlot, SlotValue};
pub use crate::net::{NetLimits, TarpcTransport, TlsConfig};
pub use crate::ready::{PersistOp, ReadReady, Ready};
pub use crate::state_machine::{SharedStateMachine, StateMachine};
pub use crate::store::{AcceptorStore, MemAcceptorStore, RecoveredState, WalAcceptorStore};
pub use crate::transport::{ChannelTransport, Transport};
pub use crate::types::{Ballot, Command, Entry, NodeId, Slot, Value};
