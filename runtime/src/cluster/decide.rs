//! Who should own which tenant: a pure function of what the lease bucket and the metadata
//! store say, run by every node on every tick. Every node sees the same bucket, so every
//! node computes the same placement; each claims only what falls to itself, and a claim is
//! a create-only write, so two nodes that disagree for a moment cannot both win.

use std::collections::{BTreeMap, BTreeSet};

use vrsky_actors::TenantId;

/// A live node, as its record in the bucket shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its id.
    pub id: String,
    /// Stopping: it takes no tenants and hands its own over.
    pub draining: bool,
}

/// A tenant's lease as the bucket shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The node holding it.
    pub owner: String,
    /// The bucket revision of the lease (a renewal must name it).
    pub revision: u64,
}

/// What one node knows on one tick.
#[derive(Debug, Clone, Default)]
pub struct Situation {
    /// This node.
    pub me: String,
    /// This node is stopping (SIGTERM): it claims nothing and hands everything over.
    pub draining: bool,
    /// Every tenant of the metadata store (the desired state).
    pub tenants: BTreeSet<TenantId>,
    /// Every lease in the bucket.
    pub leases: BTreeMap<TenantId, Lease>,
    /// The live nodes (their records have not expired), this one included.
    pub nodes: Vec<Peer>,
    /// The tenants whose subtree runs here, with the lease revision this node holds.
    pub held: BTreeMap<TenantId, u64>,
    /// Tenants this node is giving up (their stop, and release, is under way): not adopted
    /// again, and counted for the node they will fall to, not for this one.
    pub releasing: BTreeSet<TenantId>,
}

/// One thing to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nobody holds the tenant and it falls to this node: a create-only claim, then start.
    Claim(TenantId),
    /// The lease names this node but no subtree runs here (a previous life of this node,
    /// or a restarted cluster actor): take it over at its revision, then start.
    Adopt(TenantId, u64),
    /// Give the tenant up: stop its subtree, then delete the lease at its revision, so
    /// the node it falls to claims it at once. For a hand-over, a deleted tenant, or a
    /// rebalance.
    Release(TenantId, u64),
}

/// How many tenants a node gives up per tick when it holds more than its share: nodes
/// that join take tenants over gradually, not all at once.
pub const REBALANCE_PER_TICK: usize = 1;

/// The steps for this node. Unowned tenants are dealt out one by one, in id order, each to
/// the node holding the fewest (ties to the smaller id); this node claims what it is dealt.
/// A node holding at least two more than the least-loaded one releases one per tick.
pub fn decide(s: &Situation) -> Vec<Step> {
    let mut steps = Vec::new();
    if s.draining {
        return s.held.iter().map(|(t, rev)| Step::Release(t.clone(), *rev)).collect();
    }
    // Held but deleted from the store: the deletion ran elsewhere (or half-way).
    for (t, rev) in &s.held {
        if !s.tenants.contains(t) {
            steps.push(Step::Release(t.clone(), *rev));
        }
    }
    for (t, lease) in &s.leases {
        if lease.owner == s.me && !s.held.contains_key(t) && !s.releasing.contains(t) && s.tenants.contains(t) {
            steps.push(Step::Adopt(t.clone(), lease.revision));
        }
    }
    // Load by the leases, which every node sees alike; this node's adoptions count too.
    let takers: Vec<&Peer> = s.nodes.iter().filter(|p| !p.draining).collect();
    let mut load: BTreeMap<&str, usize> = takers.iter().map(|p| (p.id.as_str(), 0)).collect();
    let mut released = Vec::new();
    for (t, lease) in &s.leases {
        if lease.owner == s.me && s.releasing.contains(t) {
            released.push(t);
        } else if let Some(n) = load.get_mut(lease.owner.as_str()) {
            *n += 1;
        }
    }
    // What this node is giving up goes, once its lease is deleted, to the least-loaded
    // other node: counted there already, so this node does not give up more than its share
    // while its releases are under way (they take a second or more).
    for _ in released {
        let least = load
            .iter()
            .filter(|(id, _)| **id != s.me)
            .min_by_key(|(id, n)| (**n, **id))
            .map(|(id, _)| *id);
        if let Some(n) = least.and_then(|id| load.get_mut(id)) {
            *n += 1;
        }
    }
    for t in s.tenants.iter().filter(|t| !s.leases.contains_key(*t)) {
        let Some((&least, _)) = load.iter().min_by_key(|(id, n)| (**n, **id)) else {
            break;
        };
        if least == s.me {
            steps.push(Step::Claim(t.clone()));
        }
        if let Some(n) = load.get_mut(least) {
            *n += 1;
        }
    }
    // Rebalance, with hysteresis: only a gap of two or more moves a tenant, so the
    // placement settles instead of flapping.
    let mine = load.get(s.me.as_str()).copied().unwrap_or(0);
    let least = load.values().min().copied().unwrap_or(mine);
    if mine >= least + 2 {
        let give = REBALANCE_PER_TICK.min((mine - least) / 2);
        let releasable = s
            .held
            .iter()
            .rev()
            .filter(|(t, _)| s.tenants.contains(*t) && s.leases.get(*t).is_some_and(|l| l.owner == s.me));
        for (t, rev) in releasable.take(give) {
            steps.push(Step::Release(t.clone(), *rev));
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn t(id: &str) -> TenantId {
        TenantId::new(id).unwrap()
    }

    fn peer(id: &str) -> Peer {
        Peer {
            id: id.into(),
            draining: false,
        }
    }

    fn situation(me: &str, nodes: &[&str], tenants: &[&str]) -> Situation {
        Situation {
            me: me.into(),
            draining: false,
            tenants: tenants.iter().map(|x| t(x)).collect(),
            leases: BTreeMap::new(),
            nodes: nodes.iter().map(|n| peer(n)).collect(),
            held: BTreeMap::new(),
            releasing: BTreeSet::new(),
        }
    }

    fn lease(owner: &str, revision: u64) -> Lease {
        Lease {
            owner: owner.into(),
            revision,
        }
    }

    /// Runs every node's decision on the same situation and applies the claims, as the
    /// bucket would (create-only: the first claim of a tenant wins).
    fn settle(nodes: &[&str], tenants: &[&str]) -> BTreeMap<String, Vec<String>> {
        let mut leases: BTreeMap<TenantId, Lease> = BTreeMap::new();
        let mut rev = 0;
        for n in nodes {
            let mut s = situation(n, nodes, tenants);
            s.leases = leases.clone();
            s.held = leases
                .iter()
                .filter(|(_, l)| l.owner == *n)
                .map(|(t, l)| (t.clone(), l.revision))
                .collect();
            for step in decide(&s) {
                if let Step::Claim(t) = step {
                    rev += 1;
                    leases.entry(t).or_insert_with(|| lease(n, rev));
                }
            }
        }
        let mut by_node: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (t, l) in leases {
            by_node.entry(l.owner).or_default().push(t.to_string());
        }
        by_node
    }

    #[test]
    fn unowned_tenants_are_dealt_out_evenly_and_every_node_agrees() {
        let tenants = ["a", "b", "c", "d", "e", "f", "g"];
        let by_node = settle(&["n1", "n2", "n3"], &tenants);
        let counts: Vec<usize> = by_node.values().map(Vec::len).collect();
        assert_eq!(counts, vec![3, 2, 2], "{by_node:?}");
        // Each node computed the same deal: nothing is left unclaimed, nothing twice.
        let all: BTreeSet<String> = by_node.values().flatten().cloned().collect();
        assert_eq!(all.len(), tenants.len());
    }

    #[test]
    fn a_node_alone_claims_everything() {
        let s = situation("n1", &["n1"], &["a", "b"]);
        assert_eq!(decide(&s), vec![Step::Claim(t("a")), Step::Claim(t("b"))]);
    }

    #[test]
    fn the_least_loaded_node_gets_a_new_tenant() {
        let mut s = situation("n2", &["n1", "n2"], &["a", "b", "new"]);
        s.leases.insert(t("a"), lease("n1", 1));
        s.leases.insert(t("b"), lease("n1", 2));
        assert_eq!(decide(&s), vec![Step::Claim(t("new"))]);
        s.me = "n1".into();
        s.held = [(t("a"), 1), (t("b"), 2)].into();
        // n1 does not claim it, and with the new one dealt to n2 (2/1) gives nothing up.
        assert!(decide(&s).is_empty());
        // Three against none, nothing unowned: n1 gives one up (the last by id).
        s.tenants.remove(&t("new"));
        s.tenants.insert(t("c"));
        s.leases.insert(t("c"), lease("n1", 3));
        s.held.insert(t("c"), 3);
        assert_eq!(decide(&s), vec![Step::Release(t("c"), 3)]);
    }

    #[test]
    fn a_node_restarted_with_its_id_adopts_its_leases_at_their_revision() {
        let mut s = situation("n1", &["n1", "n2"], &["a", "b"]);
        s.leases.insert(t("a"), lease("n1", 7));
        s.leases.insert(t("b"), lease("n2", 8));
        assert_eq!(decide(&s), vec![Step::Adopt(t("a"), 7)]);
    }

    #[test]
    fn a_dead_owners_tenants_are_claimed_once_its_leases_expire() {
        // n3 died: its node record and leases expired; n1 and n2 share its tenants.
        let mut leases = BTreeMap::new();
        leases.insert(t("a"), lease("n1", 1));
        leases.insert(t("b"), lease("n2", 2));
        let tenants = ["a", "b", "c", "d"];
        let mut claims = BTreeMap::new();
        for me in ["n1", "n2"] {
            let mut s = situation(me, &["n1", "n2"], &tenants);
            s.leases = leases.clone();
            s.held = leases
                .iter()
                .filter(|(_, l)| l.owner == me)
                .map(|(t, l)| (t.clone(), l.revision))
                .collect();
            claims.insert(me, decide(&s));
        }
        assert_eq!(claims["n1"], vec![Step::Claim(t("c"))]);
        assert_eq!(claims["n2"], vec![Step::Claim(t("d"))]);
    }

    #[test]
    fn a_draining_node_releases_everything_and_is_dealt_nothing() {
        let mut s = situation("n1", &["n1", "n2"], &["a", "b", "c"]);
        s.leases.insert(t("a"), lease("n1", 3));
        s.held = [(t("a"), 3)].into();
        s.draining = true;
        assert_eq!(decide(&s), vec![Step::Release(t("a"), 3)]);
        // The other node sees it draining: the unowned ones fall to n2 alone.
        let mut other = situation("n2", &["n1", "n2"], &["a", "b", "c"]);
        other.nodes[0].draining = true;
        other.leases = s.leases.clone();
        assert_eq!(decide(&other), vec![Step::Claim(t("b")), Step::Claim(t("c"))]);
    }

    #[test]
    fn a_deleted_tenant_is_released() {
        let mut s = situation("n1", &["n1"], &["a"]);
        s.leases.insert(t("a"), lease("n1", 1));
        s.leases.insert(t("gone"), lease("n1", 2));
        s.held = [(t("a"), 1), (t("gone"), 2)].into();
        assert_eq!(decide(&s), vec![Step::Release(t("gone"), 2)]);
    }

    #[test]
    fn a_balanced_cluster_moves_nothing() {
        // A gap of one is left alone (hysteresis): 2 / 1 never flaps.
        let mut s = situation("n1", &["n1", "n2"], &["a", "b", "c"]);
        s.leases.insert(t("a"), lease("n1", 1));
        s.leases.insert(t("b"), lease("n1", 2));
        s.leases.insert(t("c"), lease("n2", 3));
        s.held = [(t("a"), 1), (t("b"), 2)].into();
        assert!(decide(&s).is_empty());
    }

    /// A release takes a while (the subtree stops, then the lease is deleted a second
    /// later) and the node ticks meanwhile: it must not give up more than its share, nor
    /// claim back what it gave up.
    #[test]
    fn slow_releases_give_up_only_the_share_and_nothing_comes_back() {
        let names = ["j1", "j2", "j3", "j4"];
        let nodes = ["n1", "n2"];
        let mut leases: BTreeMap<TenantId, Lease> = names.iter().map(|x| (t(x), lease("n1", 1))).collect();
        // Tenant -> rounds left before its lease is deleted.
        let mut releasing: BTreeMap<TenantId, u32> = BTreeMap::new();
        let (mut releases, mut claims_back) = (0, 0);
        for _round in 0..12 {
            for (t, left) in releasing.iter_mut() {
                *left -= 1;
                if *left == 0 {
                    leases.remove(t);
                }
            }
            releasing.retain(|_, left| *left > 0);
            for n in nodes {
                let mut s = situation(n, &nodes, &names);
                s.leases = leases.clone();
                s.held = leases
                    .iter()
                    .filter(|(t, l)| l.owner == n && !releasing.contains_key(*t))
                    .map(|(t, l)| (t.clone(), l.revision))
                    .collect();
                if n == "n1" {
                    s.releasing = releasing.keys().cloned().collect();
                }
                for step in decide(&s) {
                    match step {
                        Step::Release(t, _) => {
                            releases += 1;
                            releasing.insert(t, 3);
                        }
                        Step::Claim(t) => {
                            if n == "n1" {
                                claims_back += 1;
                            }
                            leases.insert(t, lease(n, 1));
                        }
                        Step::Adopt(..) => {}
                    }
                }
            }
        }
        let on_n2 = leases.values().filter(|l| l.owner == "n2").count();
        assert_eq!((leases.len(), on_n2), (4, 2), "{leases:?}");
        assert_eq!((releases, claims_back), (2, 0), "over-released, or claimed back");
    }

    #[test]
    fn rebalancing_converges_from_one_node_to_three_without_flapping() {
        let tenants: Vec<String> = (0..9).map(|i| format!("t{i}")).collect();
        let names: Vec<&str> = tenants.iter().map(String::as_str).collect();
        let nodes = ["n1", "n2", "n3"];
        let mut leases: BTreeMap<TenantId, Lease> = names.iter().map(|x| (t(x), lease("n1", 1))).collect();
        let mut releases = 0;
        for _round in 0..20 {
            for n in nodes {
                let mut s = situation(n, &nodes, &names);
                s.leases = leases.clone();
                s.held = leases
                    .iter()
                    .filter(|(_, l)| l.owner == n)
                    .map(|(t, l)| (t.clone(), l.revision))
                    .collect();
                for step in decide(&s) {
                    match step {
                        Step::Release(t, _) => {
                            releases += 1;
                            leases.remove(&t);
                        }
                        Step::Claim(t) => {
                            leases.insert(t, lease(n, 1));
                        }
                        Step::Adopt(..) => {}
                    }
                }
            }
        }
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for l in leases.values() {
            *counts.entry(l.owner.as_str()).or_default() += 1;
        }
        assert_eq!(leases.len(), 9, "every tenant owned");
        assert!(counts.values().all(|&n| n == 3), "{counts:?}");
        // Each released tenant moved once: six moves take 9/0/0 to 3/3/3.
        assert_eq!(releases, 6, "no flapping");
    }
}
