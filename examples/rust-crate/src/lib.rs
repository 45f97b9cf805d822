//! Greetings, the library half of the example crate.

/// The greeting for `name`.
pub fn greeting(name: &str) -> String {
    format!("hello, {name}!")
}

#[cfg(test)]
mod tests {
    use super::greeting;

    #[test]
    fn greeting_names_the_person() {
        assert_eq!(greeting("kruntimes"), "hello, kruntimes!");
    }
}
