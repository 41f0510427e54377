//! Panic boundaries around work on data from outside, and what a caught panic said, for the
//! error or log line that reports it.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Run `work` behind a panic boundary: a panic (a dependency's decoder indexing out of range on
/// a hostile file) becomes `Err` with its message, and the calling thread goes on. Use it only
/// around work whose state is local to the call, so nothing half-updated outlives the panic.
pub fn contain<T>(work: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(work)).map_err(|payload| panic_message(payload.as_ref()))
}

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
    fn a_panic_inside_the_boundary_is_an_error_with_its_message() {
        assert_eq!(contain(|| 7), Ok(7));
        let index = 9;
        let caught = contain(|| [1u8, 2, 3][index]);
        assert!(caught.unwrap_err().contains("index out of bounds"));
    }

    #[test]
    fn both_kinds_of_payload_give_their_message() {
        let literal = std::panic::catch_unwind(|| panic!("index out of bounds")).unwrap_err();
        let formatted = std::panic::catch_unwind(|| panic!("len is {}", 3)).unwrap_err();
        assert_eq!(panic_message(literal.as_ref()), "index out of bounds");
        assert_eq!(panic_message(formatted.as_ref()), "len is 3");
    }
}
