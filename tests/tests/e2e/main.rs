mod cli;
mod cluster;
mod cluster_harness;
mod crds;
mod run;
mod runtime;
mod store;
mod tls;
