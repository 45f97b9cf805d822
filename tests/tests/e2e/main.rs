mod cli;
mod crds;
mod tls;
