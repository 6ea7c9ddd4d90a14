//! Hone's edge agent.
//!
//! Installed on each edge device, it keeps an MQTT session with the coordinator's broker,
//! announces itself with a retained birth message (and a Last Will), receives signed benchmark
//! jobs, fetches and verifies the model over HTTP, benchmarks it with tract in a child process
//! and reports the result through a durable outbox.
//!
//! Module map:
//! - [`agent`]: the event loop (MQTT events, finished jobs, shutdown).
//! - [`mqtt`]: the only module that knows rumqttc.
//! - [`store`]: verified, resumable artifact downloads, stored by digest.
//! - [`trust`]: the pinned coordinator key and following its signed rotation chain.
//! - [`outbox`]: durable results, seen commands, the session counter and the last accepted
//!   sequence number of each kind of document.
//! - [`bench`]: benchmarks in a child process; [`bench::tract`] and `serve::model` are the only
//!   tract users.
//! - [`deploy`]: the serving supervisor (activation, durable pointers, restarts);
//!   [`serve`]: the serving process (KServe v2 over HTTP); [`loadgen`]: a load generator.
//! - [`host`]: host facts and process memory.
//! - [`throttle`]: device-profile emulation (cgroup quota, cpuset, memory cap, thermal model);
//!   [`calibrate`]: host speed; [`readings`]: temperatures and clocks.
//! - [`serve`]: the serving process (`serve-child`): KServe v2 over HTTP, one active model;
//!   [`loadgen`]: an open-loop load generator for it.
//! - [`config`]: validated configuration; [`enroll`]: the TLS identity (enrolment, renewal,
//!   re-enrolment).
//! - [`cli`]: the `edge-agent` command line (the binary is a thin wrapper around it).

pub mod agent;
pub mod bench;
pub mod calibrate;
pub mod cli;
pub mod config;
pub mod deploy;
pub mod doctor;
pub mod enroll;
pub mod host;
pub mod loadgen;
pub mod mqtt;
pub mod outbox;
pub mod readings;
pub mod serve;
pub mod store;
pub mod throttle;
pub mod trust;
