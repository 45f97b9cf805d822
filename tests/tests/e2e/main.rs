mod cli;
mod crds;
mod run;
mod runtime;
mod store;
mod tls;
