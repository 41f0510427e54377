//! What a caught panic said, for the error or log line that reports it.

use std::any::Any;

/// The message of a panic payload (`&str` or `String`, as `panic!` makes them).
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_kinds_of_payload_give_their_message() {
        let literal = std::panic::catch_unwind(|| panic!("index out of bounds")).unwrap_err();
        let formatted = std::panic::catch_unwind(|| panic!("len is {}", 3)).unwrap_err();
        assert_eq!(panic_message(literal.as_ref()), "index out of bounds");
        assert_eq!(panic_message(formatted.as_ref()), "len is 3");
    }
}
