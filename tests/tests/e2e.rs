//! End-to-end scenarios: real coordinator and agent processes, real brokers and databases,
//! real models. One integration binary; each module is a topic.

mod airflow;
mod campaign;
mod compare;
mod corpus;
mod demo;
mod deploy;
mod doctor;
mod dvc;
mod faults;
mod fleet_tls;
mod hostile;
mod mlflow;
mod optimize;
mod package;
mod pipeline;
mod prune;
mod replay;
mod report;
mod runtime;
mod scale;
mod security;
