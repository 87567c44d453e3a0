use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;

fn tp(t: &str, p: u32) -> TopicPartition {
    TopicPartition::new(t, p)
}

fn topics(list: &[(&str, u32)]) -> BTreeMap<String, u32> {
    list.iter().map(|(t, n)| (t.to_string(), *n)).collect()
}

fn join(group: &str, member: &str, subscribe: &[&str]) -> Heartbeat {
    Heartbeat {
        group: group.into(),
        member_id: member.into(),
        member_epoch: 0,
        instance_id: None,
        client_id: "test".into(),
        host: "127.0.0.1".into(),
        topics: Some(subscribe.iter().map(|s| s.to_string()).collect()),
        regex: None,
        owned: Some(Vec::new()),
        rebalance_timeout_ms: 30_000,
        session_timeout_ms: 10_000,
        assignor: None,
    }
}

/// A member heartbeating at `epoch`, reporting `owned`.
fn beat(group: &str, member: &str, epoch: i32, owned: &[TopicPartition]) -> Heartbeat {
    Heartbeat {
        member_epoch: epoch,
        topics: None,
        owned: Some(owned.to_vec()),
        ..join(group, member, &[])
    }
}

/// A cooperative client: remembers its epoch and assignment and reports it.
#[derive(Default, Clone)]
struct Client {
    epoch: i32,
    owned: Vec<TopicPartition>,
}

fn step(g: &mut Group, id: &str, c: &mut Client, t: &BTreeMap<String, u32>) {
    let reply = g
        .heartbeat(&beat(&g.name.clone(), id, c.epoch, &c.owned), t)
        .expect("heartbeat");
    c.epoch = reply.member_epoch;
    c.owned = reply.assignment;
}

fn assert_exclusive(g: &Group) {
    let mut seen = BTreeMap::new();
    for m in g.members.values() {
        for p in m.assigned.iter().chain(&m.revoking) {
            if let Some(other) = seen.insert(p.clone(), m.id.clone()) {
                panic!("{p} owned by {other} and {}", m.id);
            }
        }
    }
}

fn eligible(members: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
    members
        .iter()
        .map(|(m, ts)| (m.to_string(), ts.iter().map(|t| t.to_string()).collect()))
        .collect()
}

fn counts(a: &BTreeMap<String, BTreeSet<TopicPartition>>) -> Vec<usize> {
    a.values().map(BTreeSet::len).collect()
}

#[test]
fn uniform_assignor_table() {
    let parts = |t: &str, n: u32| (0..n).map(|p| tp(t, p)).collect::<Vec<_>>();
    // (partitions, members, expected counts)
    type Case<'a> = (
        Vec<TopicPartition>,
        Vec<(&'a str, &'a [&'a str])>,
        Vec<usize>,
    );
    let cases: Vec<Case> = vec![
        (
            parts("t", 6),
            vec![("a", &["t"]), ("b", &["t"]), ("c", &["t"])],
            vec![2, 2, 2],
        ),
        (
            parts("t", 1),
            vec![("a", &["t"]), ("b", &["t"]), ("c", &["t"])],
            vec![1, 0, 0],
        ),
        (
            parts("t", 7),
            vec![("a", &["t"]), ("b", &["t"]), ("c", &["t"])],
            vec![3, 2, 2],
        ),
        (
            parts("t", 100),
            (0..10).map(|_| ("x", &["t"][..])).take(0).collect(),
            vec![],
        ),
        // b subscribes to nothing that exists: a takes everything
        (
            parts("t", 4),
            vec![("a", &["t"]), ("b", &["u"])],
            vec![4, 0],
        ),
    ];
    for (i, (partitions, members, expected)) in cases.into_iter().enumerate() {
        let out = assign_uniform(&partitions, &eligible(&members), &BTreeMap::new());
        assert_eq!(counts(&out), expected, "case {i}");
        let total: usize = counts(&out).iter().sum();
        if !members.is_empty() && members.iter().any(|(_, t)| t.contains(&"t")) {
            assert_eq!(
                total,
                partitions.len(),
                "case {i}: every partition assigned"
            );
        }
    }
}

#[test]
fn uniform_assignor_is_sticky() {
    let parts: Vec<TopicPartition> = (0..6).map(|p| tp("t", p)).collect();
    let three = eligible(&[("a", &["t"]), ("b", &["t"]), ("c", &["t"])]);
    let first = assign_uniform(&parts, &three, &BTreeMap::new());
    // c leaves: a and b keep what they had and split c's two partitions
    let two = eligible(&[("a", &["t"]), ("b", &["t"])]);
    let second = assign_uniform(&parts, &two, &first);
    assert_eq!(counts(&second), vec![3, 3]);
    assert!(first["a"].is_subset(&second["a"]));
    assert!(first["b"].is_subset(&second["b"]));
    // d joins the two: exactly one partition moves from each of a and b
    let with_d = eligible(&[("a", &["t"]), ("b", &["t"]), ("d", &["t"])]);
    let third = assign_uniform(&parts, &with_d, &second);
    assert_eq!(counts(&third), vec![2, 2, 2]);
    assert_eq!(second["a"].intersection(&third["a"]).count(), 2);
    assert_eq!(second["b"].intersection(&third["b"]).count(), 2);
}

#[test]
fn uniform_assignor_heterogeneous_subscriptions() {
    let mut parts: Vec<TopicPartition> = (0..4).map(|p| tp("x", p)).collect();
    parts.extend((0..2).map(|p| tp("y", p)));
    let members = eligible(&[("a", &["x"]), ("b", &["x", "y"]), ("c", &["y"])]);
    let out = assign_uniform(&parts, &members, &BTreeMap::new());
    assert_eq!(counts(&out), vec![2, 2, 2]);
    assert!(out["a"].iter().all(|p| p.topic == "x"));
    assert!(out["c"].iter().all(|p| p.topic == "y"));
}

#[test]
fn range_assignor_table() {
    let t = topics(&[("x", 5), ("y", 2)]);
    let members = eligible(&[("a", &["x", "y"]), ("b", &["x", "y"])]);
    let out = assign_range(&t, &members);
    let names = |m: &str| out[m].iter().map(|p| p.to_string()).collect::<Vec<_>>();
    assert_eq!(names("a"), vec!["x/0", "x/1", "x/2", "y/0"]);
    assert_eq!(names("b"), vec!["x/3", "x/4", "y/1"]);
}

#[test]
fn seed_scenario_one_partition_then_three() {
    let mut t = topics(&[("orders", 1)]);
    let mut g = Group::new("g");
    let mut clients: BTreeMap<&str, Client> = BTreeMap::new();
    for id in ["m1", "m2", "m3"] {
        let r = g.heartbeat(&join("g", id, &["orders"]), &t).expect("join");
        clients.insert(
            id,
            Client {
                epoch: r.member_epoch,
                owned: r.assignment,
            },
        );
    }
    for _ in 0..3 {
        for (id, c) in clients.iter_mut() {
            step(&mut g, id, c, &t);
            assert_exclusive(&g);
        }
    }
    let busy: Vec<usize> = clients.values().map(|c| c.owned.len()).collect();
    assert_eq!(busy.iter().sum::<usize>(), 1, "{busy:?}");
    assert_eq!(g.state(), GroupState::Stable);

    t.insert("orders".into(), 3);
    for _ in 0..3 {
        for (id, c) in clients.iter_mut() {
            step(&mut g, id, c, &t);
            assert_exclusive(&g);
        }
    }
    for c in clients.values() {
        assert_eq!(c.owned.len(), 1);
    }
    assert_eq!(g.state(), GroupState::Stable);
}

#[test]
fn a_partition_moves_only_after_its_owner_revokes_it() {
    let t = topics(&[("t", 6)]);
    let mut g = Group::new("g");
    let mut a = Client::default();
    let r = g.heartbeat(&join("g", "a", &["t"]), &t).expect("join a");
    (a.epoch, a.owned) = (r.member_epoch, r.assignment);
    assert_eq!(a.owned.len(), 6);

    let mut b = Client::default();
    let r = g.heartbeat(&join("g", "b", &["t"]), &t).expect("join b");
    (b.epoch, b.owned) = (r.member_epoch, r.assignment);
    // b gets nothing yet: a still owns everything
    assert!(b.owned.is_empty());
    assert_eq!(g.state(), GroupState::Reconciling);

    // a heartbeats and is told to keep three (its epoch does not move while it revokes)
    let r = g
        .heartbeat(&beat("g", "a", a.epoch, &a.owned), &t)
        .expect("a");
    assert_eq!(r.assignment.len(), 3);
    assert_eq!(r.member_epoch, a.epoch);
    assert_eq!(g.members["a"].revoking.len(), 3);
    // b asks again before a confirmed: still nothing
    step(&mut g, "b", &mut b, &t);
    assert!(b.owned.is_empty());
    // a confirms by reporting the smaller set, moves to the new epoch
    a.owned = r.assignment;
    step(&mut g, "a", &mut a, &t);
    assert_eq!(a.epoch, g.assignment_epoch);
    assert!(g.members["a"].revoking.is_empty());
    step(&mut g, "b", &mut b, &t);
    assert_eq!(b.owned.len(), 3);
    assert_exclusive(&g);
    assert_eq!(g.state(), GroupState::Stable);
}

#[test]
fn fencing_of_commits_and_stale_heartbeats() {
    let t = topics(&[("t", 2)]);
    let mut groups = Groups::default();
    let out = groups.apply(GroupCommand::Heartbeat(join("g", "a", &["t"])), &t);
    let GroupOutcome::Heartbeat(Ok(reply)) = out else {
        panic!("{out:?}")
    };
    let commit = |member: &str, epoch: i32, p: u32| CommitRequest {
        group: "g".into(),
        member_id: member.into(),
        member_epoch: epoch,
        offsets: vec![OffsetCommit {
            partition: tp("t", p),
            offset: 10,
            metadata: String::new(),
        }],
    };
    let results = |out: GroupOutcome| match out {
        GroupOutcome::Committed(r) => r,
        other => panic!("{other:?}"),
    };
    let r = results(groups.apply(
        GroupCommand::CommitOffsets {
            time_ms: 1,
            commits: vec![
                commit("a", reply.member_epoch, 0),
                commit("a", reply.member_epoch + 5, 0),
                commit("zombie", 1, 0),
                commit("", 0, 0),
            ],
        },
        &t,
    ));
    assert_eq!(r[0], Ok(()));
    assert!(
        matches!(r[1], Err(GroupError::FencedEpoch { .. })),
        "{:?}",
        r[1]
    );
    assert!(matches!(r[2], Err(GroupError::UnknownMember { .. })));
    assert!(matches!(r[3], Err(GroupError::NotEmpty { .. })));
    assert_eq!(
        groups.committed("g", &tp("t", 0)).map(|c| c.offset),
        Some(10)
    );

    // b joins; a must give up one partition; once it is revoked a may not commit it
    let GroupOutcome::Heartbeat(Ok(b)) =
        groups.apply(GroupCommand::Heartbeat(join("g", "b", &["t"])), &t)
    else {
        panic!()
    };
    let GroupOutcome::Heartbeat(Ok(a2)) = groups.apply(
        GroupCommand::Heartbeat(beat("g", "a", reply.member_epoch, &reply.assignment)),
        &t,
    ) else {
        panic!()
    };
    let gone = reply
        .assignment
        .iter()
        .find(|p| !a2.assignment.contains(p))
        .cloned()
        .expect("a revokes one");
    // while revoking, a may still commit it (commit on revoke)
    let r = results(groups.apply(
        GroupCommand::CommitOffsets {
            time_ms: 2,
            commits: vec![commit("a", a2.member_epoch, gone.partition)],
        },
        &t,
    ));
    assert_eq!(r, vec![Ok(())]);
    let GroupOutcome::Heartbeat(Ok(a3)) = groups.apply(
        GroupCommand::Heartbeat(beat("g", "a", a2.member_epoch, &a2.assignment)),
        &t,
    ) else {
        panic!()
    };
    let r = results(groups.apply(
        GroupCommand::CommitOffsets {
            time_ms: 3,
            commits: vec![commit("a", a3.member_epoch, gone.partition)],
        },
        &t,
    ));
    assert!(matches!(r[0], Err(GroupError::NotOwned { .. })), "{r:?}");
    // the session of b runs out: it is removed, its later commits are refused
    assert_eq!(
        groups.apply(
            GroupCommand::RemoveMember {
                group: "g".into(),
                member_id: "b".into()
            },
            &t
        ),
        GroupOutcome::Removed(true)
    );
    let r = results(groups.apply(
        GroupCommand::CommitOffsets {
            time_ms: 4,
            commits: vec![commit("b", b.member_epoch, gone.partition)],
        },
        &t,
    ));
    assert!(matches!(r[0], Err(GroupError::UnknownMember { .. })));
    // a stale heartbeat epoch is fenced
    let out = groups.apply(GroupCommand::Heartbeat(beat("g", "a", 99, &[])), &t);
    assert!(matches!(
        out,
        GroupOutcome::Heartbeat(Err(GroupError::FencedEpoch { .. }))
    ));
}

#[test]
fn static_member_restart_keeps_partitions_and_fences_the_old_id() {
    let t = topics(&[("t", 4)]);
    let mut g = Group::new("g");
    let mut a = Client::default();
    let mut b = Client::default();
    let static_join = |id: &str, instance: &str| Heartbeat {
        instance_id: Some(instance.into()),
        ..join("g", id, &["t"])
    };
    let r = g.heartbeat(&static_join("a1", "host-a"), &t).expect("a");
    (a.epoch, a.owned) = (r.member_epoch, r.assignment);
    let r = g.heartbeat(&static_join("b1", "host-b"), &t).expect("b");
    (b.epoch, b.owned) = (r.member_epoch, r.assignment);
    for _ in 0..3 {
        step(&mut g, "a1", &mut a, &t);
        step(&mut g, "b1", &mut b, &t);
    }
    assert_eq!(g.state(), GroupState::Stable);
    let epoch = g.group_epoch;
    // a1 crashes; its replacement a2 with the same instance id joins
    let r = g.heartbeat(&static_join("a2", "host-a"), &t).expect("a2");
    assert_eq!(r.assignment, a.owned, "keeps the partitions");
    assert_eq!(g.group_epoch, epoch, "no rebalance");
    assert!(matches!(
        g.check_member("a1", a.epoch, &a.owned, true),
        Err(GroupError::UnknownMember { .. })
    ));
    // a temporary leave keeps the member and its partitions
    let mut leave = beat("g", "a2", STATIC_LEAVE, &[]);
    leave.instance_id = Some("host-a".into());
    g.heartbeat(&leave, &t).expect("leave");
    assert!(g.members["a2"].departed);
    assert_eq!(g.group_epoch, epoch);
}

#[test]
fn offsets_reset_and_delete_need_an_empty_group() {
    let t = topics(&[("t", 1)]);
    let mut groups = Groups::default();
    groups.apply(GroupCommand::Heartbeat(join("g", "a", &["t"])), &t);
    let reset = GroupCommand::ResetOffsets {
        group: "g".into(),
        time_ms: 1,
        offsets: vec![OffsetCommit {
            partition: tp("t", 0),
            offset: 5,
            metadata: String::new(),
        }],
    };
    assert!(matches!(
        groups.apply(reset.clone(), &t),
        GroupOutcome::Reset(Err(GroupError::NotEmpty { .. }))
    ));
    assert!(matches!(
        groups.apply(GroupCommand::DeleteGroup { group: "g".into() }, &t),
        GroupOutcome::Deleted(Err(GroupError::NotEmpty { .. }))
    ));
    groups.apply(GroupCommand::Heartbeat(beat("g", "a", LEAVE, &[])), &t);
    assert_eq!(groups.apply(reset, &t), GroupOutcome::Reset(Ok(())));
    assert_eq!(
        groups.committed("g", &tp("t", 0)).map(|c| c.offset),
        Some(5)
    );
    groups.topic_deleted("t");
    assert_eq!(groups.committed("g", &tp("t", 0)), None);
    assert_eq!(
        groups.apply(GroupCommand::DeleteGroup { group: "g".into() }, &t),
        GroupOutcome::Deleted(Ok(()))
    );
    assert!(groups.groups.is_empty());
    assert!(groups.offsets.is_empty());
}

#[test]
fn bad_heartbeats_are_refused() {
    let t = topics(&[("t", 1)]);
    let mut g = Group::new("g");
    let cases = [
        (
            Heartbeat {
                member_id: String::new(),
                ..join("g", "a", &["t"])
            },
            "member_id",
        ),
        (
            Heartbeat {
                member_epoch: -3,
                ..join("g", "a", &["t"])
            },
            "member_epoch",
        ),
        (
            Heartbeat {
                regex: Some("(".into()),
                ..join("g", "a", &["t"])
            },
            "subscribed_regex",
        ),
        (
            Heartbeat {
                topics: None,
                ..join("g", "a", &[])
            },
            "subscribed_topics",
        ),
        (
            Heartbeat {
                group: String::new(),
                ..join("", "a", &["t"])
            },
            "group",
        ),
    ];
    for (hb, field) in cases {
        match g.heartbeat(&hb, &t) {
            Err(GroupError::Invalid { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        }
    }
    assert!(g.members.is_empty());
    assert!(matches!(
        g.heartbeat(&beat("g", "nobody", 3, &[]), &t),
        Err(GroupError::UnknownMember { .. })
    ));
}

#[test]
fn regex_subscription_picks_up_new_topics() {
    let mut t = topics(&[("orders-eu", 1)]);
    let mut g = Group::new("g");
    let hb = Heartbeat {
        topics: None,
        regex: Some("orders-.*".into()),
        ..join("g", "a", &[])
    };
    let r = g.heartbeat(&hb, &t).expect("join");
    let mut a = Client {
        epoch: r.member_epoch,
        owned: r.assignment,
    };
    assert_eq!(a.owned, vec![tp("orders-eu", 0)]);
    t.insert("orders-us".into(), 2);
    t.insert("payments".into(), 2);
    step(&mut g, "a", &mut a, &t);
    assert_eq!(a.owned.len(), 3);
    assert!(a.owned.iter().all(|p| p.topic.starts_with("orders-")));
}

#[derive(Debug, Clone)]
enum Event {
    Join(usize),
    Leave(usize),
    Expire(usize),
    /// The member heartbeats; with `false` it does not yet give up what it is revoking.
    Beat(usize, bool),
    AddPartitions(u32),
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        (0..5usize).prop_map(Event::Join),
        (0..5usize).prop_map(Event::Leave),
        (0..5usize).prop_map(Event::Expire),
        (0..5usize, any::<bool>()).prop_map(|(m, c)| Event::Beat(m, c)),
        (0..5usize, any::<bool>()).prop_map(|(m, c)| Event::Beat(m, c)),
        (1..4u32).prop_map(Event::AddPartitions),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Under any sequence of joins, leaves, expiries, slow revocations and new partitions, no
    /// partition is ever owned by two members; once everyone heartbeats cooperatively the
    /// group settles with every partition owned and counts balanced.
    #[test]
    fn no_partition_has_two_owners(events in proptest::collection::vec(event(), 1..60)) {
        let mut t = topics(&[("t", 4), ("u", 3)]);
        let mut g = Group::new("g");
        let mut clients: BTreeMap<String, Client> = BTreeMap::new();
        for e in events {
            match e {
                Event::Join(i) => {
                    let id = format!("m{i}");
                    if let std::collections::btree_map::Entry::Vacant(slot) = clients.entry(id.clone()) {
                        let r = g.heartbeat(&join("g", &id, &["t", "u"]), &t).expect("join");
                        slot.insert(Client { epoch: r.member_epoch, owned: r.assignment });
                    }
                }
                Event::Leave(i) => {
                    let id = format!("m{i}");
                    if clients.remove(&id).is_some() {
                        g.heartbeat(&beat("g", &id, LEAVE, &[]), &t).expect("leave");
                    }
                }
                Event::Expire(i) => {
                    let id = format!("m{i}");
                    if clients.remove(&id).is_some() {
                        g.remove(&id);
                    }
                }
                Event::Beat(i, cooperative) => {
                    let id = format!("m{i}");
                    if let Some(c) = clients.get_mut(&id) {
                        let mut report = c.owned.clone();
                        if !cooperative {
                            report.extend(g.members[&id].revoking.iter().cloned());
                        }
                        let r = g.heartbeat(&beat("g", &id, c.epoch, &report), &t).expect("beat");
                        c.epoch = r.member_epoch;
                        c.owned = r.assignment;
                    }
                }
                Event::AddPartitions(n) => {
                    *t.get_mut("t").expect("t") += n;
                }
            }
            assert_exclusive(&g);
        }
        for _ in 0..4 {
            let ids: Vec<String> = clients.keys().cloned().collect();
            for id in ids {
                let c = clients.get_mut(&id).expect("client");
                step(&mut g, &id, c, &t);
                assert_exclusive(&g);
            }
        }
        if !clients.is_empty() {
            prop_assert_eq!(g.state(), GroupState::Stable);
            let owned: usize = clients.values().map(|c| c.owned.len()).sum();
            prop_assert_eq!(owned as u32, t.values().sum::<u32>());
            let loads: Vec<usize> = clients.values().map(|c| c.owned.len()).collect();
            let (lo, hi) = (loads.iter().min().copied().unwrap_or(0), loads.iter().max().copied().unwrap_or(0));
            prop_assert!(hi - lo <= 1, "unbalanced {:?}", loads);
        }
    }
}
