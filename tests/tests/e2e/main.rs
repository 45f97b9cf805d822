mod cli;
mod crds;
mod runtime;
mod store;
mod tls;
