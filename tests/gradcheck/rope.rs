use crate::Case;

pub fn cases() -> Vec<Case> {
    vec![]
}
