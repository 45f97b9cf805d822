//! Prints a greeting for its first argument (default: `world`).

fn main() {
    let name = std::env::args().nth(1).unwrap_or_else(|| "world".into());
    println!("{}", greet::greeting(&name));
}
