//! ddc-edge: an edge agent that turns a Raspberry Pi-class board into a node of a
//! decentralized data center.
//!
//! The crate is split into a pure core, which is told the time and its inputs and returns
//! decisions (no I/O, deterministic tests), and thin drivers that do the I/O and feed it.
//! `docs/architecture.md` has the module map and how data travels through the agent.
//!
//! Pure core: [`units`], [`config`], [`boards`].
//! Drivers and wiring: [`agent`], [`cli`], [`fsutil`], [`logging`].

pub mod agent;
pub mod bandwidth;
pub mod boards;
pub mod cli;
pub mod config;
pub mod control;
pub mod ctl;
pub mod dataplane;
pub mod demo;
pub mod fleet;
pub mod fsutil;
pub mod history;
pub mod identity;
pub mod logging;
pub mod metrics;
pub mod mqtt;
pub mod nodes;
pub mod protocol;
pub mod replication;
pub mod sdnotify;
pub mod sensors;
pub mod signaling;
pub mod simulate;
pub mod store;
pub mod throttle;
pub mod transfer;
pub mod units;
pub mod web;
