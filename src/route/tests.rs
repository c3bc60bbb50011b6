//! The route stage's offset book-keeping: an input offset is safe only once every
//! record made from it is acknowledged, and acknowledgements of an earlier
//! assignment move nothing.

use std::sync::Arc;

use super::{Acks, Ticket};

fn ticket(topic: &Arc<str>, epoch: u32, offset: i64) -> Ticket {
    Ticket {
        topic: Arc::clone(topic),
        partition: 0,
        epoch,
        offset,
        dead_letter: false,
    }
}

fn safe(a: &mut Acks) -> Vec<i64> {
    let tpl = a.offsets_to_commit(&[], true);
    tpl.elements()
        .iter()
        .filter_map(|e| match e.offset() {
            rdkafka::Offset::Offset(o) => Some(o),
            _ => None,
        })
        .collect()
}

#[test]
fn an_offset_is_safe_once_every_record_of_it_is_acknowledged() {
    let t: Arc<str> = Arc::from("in");
    let mut a = Acks::default();
    a.assign("in", 0);
    assert_eq!(a.track(&t, 0, 10, 2), Some(1));
    assert_eq!(a.track(&t, 0, 11, 1), Some(1));
    assert_eq!(a.track(&t, 0, 12, 0), Some(1), "a message of no records");
    assert_eq!(safe(&mut a), vec![10], "nothing acknowledged");
    a.done(&ticket(&t, 1, 11));
    assert_eq!(safe(&mut a), vec![10], "a later offset acknowledged first");
    a.done(&ticket(&t, 1, 10));
    assert_eq!(safe(&mut a), vec![10], "one of offset 10's two records");
    a.done(&ticket(&t, 1, 10));
    assert_eq!(
        safe(&mut a),
        vec![13],
        "all: one past the last message read"
    );
}

#[test]
fn a_revoked_partition_is_skipped_and_its_old_acknowledgements_ignored() {
    let t: Arc<str> = Arc::from("in");
    let mut a = Acks::default();
    a.assign("in", 0);
    a.track(&t, 0, 5, 1);
    a.revoke("in", 0);
    assert_eq!(a.track(&t, 0, 6, 1), None, "read after the revoke");
    assert!(safe(&mut a).is_empty());
    a.assign("in", 0);
    a.track(&t, 0, 5, 1);
    a.done(&ticket(&t, 1, 5));
    assert_eq!(safe(&mut a), vec![5], "the first assignment's ack");
    a.done(&ticket(&t, 2, 5));
    assert_eq!(safe(&mut a), vec![6]);
}

#[test]
fn only_moved_offsets_are_committed_again_unless_all_are_asked_for() {
    let t: Arc<str> = Arc::from("in");
    let mut a = Acks::default();
    a.assign("in", 0);
    a.track(&t, 0, 0, 0);
    assert_eq!(a.offsets_to_commit(&[], false).count(), 1);
    assert_eq!(a.offsets_to_commit(&[], false).count(), 0, "unchanged");
    assert_eq!(
        a.offsets_to_commit(&[], true).count(),
        1,
        "every assigned partition"
    );
    let tpl = a.offsets_to_commit(&[], true);
    a.forget_committed(&tpl);
    assert_eq!(
        a.offsets_to_commit(&[], false).count(),
        1,
        "a failed commit is retried"
    );
}
