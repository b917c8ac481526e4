//! The scheduler's view of the cluster, fed by watches and kept up to date incrementally.
//!
//! Besides each node's running totals ([`NodeInfo`]) it keeps the indexes that make pod
//! affinity and spreading cheap at thousands of nodes: pods grouped by (namespace,
//! labels) with how many of each group sit on each node, the (anti-)affinity terms of
//! placed pods grouped the same way, and per controlling owner the nodes its pods are
//! on. For every topology key a pending pod's rules name (a *tracked* key), each group
//! also keeps its pods per domain, and the cache the nodes per domain, all updated as
//! pods and nodes come and go. A rule then looks at a few groups' domain counts instead
//! of every pod or every node.
//!
//! A pod chosen for a node is *assumed* there at once, before its binding is written,
//! so the next decision already sees it; the watch event of the bound pod replaces the
//! assumption, and a failed binding forgets it.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use indexmap::IndexMap;
use k8s_openapi::api::core::v1::Node;

use super::node_info::NodeInfo;
use super::pod_info::{AffinityTerm, Labels, PodInfo, PodRef};

/// Topology domain -> how many pods (of one group) are in it.
pub type DomainCounts = HashMap<String, i64>;

/// Pods with the same namespace and labels, and how many sit on each node.
#[derive(Debug, Default)]
pub struct LabelGroup {
    /// Their namespace.
    pub namespace: String,
    /// Their labels.
    pub labels: Labels,
    /// Node name -> pods of the group on it.
    pub nodes: HashMap<String, u32>,
    /// Tracked topology key -> the group's pods per domain.
    domains: HashMap<String, DomainCounts>,
}

/// Placed pods sharing one required anti-affinity term, and their nodes.
#[derive(Debug)]
pub struct TermGroup {
    /// The term (resolved in its pod's namespace).
    pub term: AffinityTerm,
    /// Weight for preferred terms (positive: affinity, negative: anti-affinity); zero
    /// for a required anti-affinity term.
    pub weight: i64,
    /// Node name -> pods with this term on it.
    pub nodes: HashMap<String, u32>,
    /// Those pods per domain of the term's topology key.
    domains: DomainCounts,
}

type GroupKey = (String, Vec<(String, String)>);

/// Where a cached pod stands.
#[derive(Debug, Clone)]
struct Placed {
    pod: PodRef,
    node: String,
    /// Chosen by this scheduler, binding not yet seen by the watch.
    assumed: bool,
}

/// The cluster as the scheduler sees it.
#[derive(Debug, Default)]
pub struct Cache {
    /// Nodes by name, kept in one vector: the search visits hundreds per pod by
    /// position, and a hash lookup for each (a cache miss on a map of 5,000) was a fifth
    /// of the scheduler's time.
    nodes: IndexMap<String, NodeInfo>,
    /// Positions in `nodes` of the nodes with a Node object, in a stable order for
    /// round-robin search.
    order: Vec<usize>,
    placed: HashMap<String, Placed>,
    groups: HashMap<GroupKey, LabelGroup>,
    terms: HashMap<String, TermGroup>,
    owners: HashMap<String, HashMap<String, u32>>,
    namespaces: HashMap<String, Labels>,
    /// Tracked topology key -> domain -> existing nodes in it.
    key_domains: HashMap<String, DomainCounts>,
}

fn group_key(pod: &PodInfo) -> GroupKey {
    let labels = pod.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    (pod.namespace.clone(), labels)
}

/// The terms of a placed pod that other pods must respect or may be drawn to, keyed by
/// their content so identical terms share one group.
fn terms_of(pod: &PodInfo) -> Vec<(String, i64, &AffinityTerm)> {
    let key = |kind: &str, weight: i64, t: &AffinityTerm| {
        format!(
            "{kind}|{weight}|{}|{:?}|{:?}|{:?}",
            t.topology_key, t.namespaces, t.selector, t.namespace_selector
        )
    };
    let mut out: Vec<(String, i64, &AffinityTerm)> =
        pod.anti_affinity.iter().map(|t| (key("anti", 0, t), 0, t)).collect();
    out.extend(
        pod.preferred_affinity
            .iter()
            .map(|w| (key("pref", w.weight, &w.term), w.weight, &w.term)),
    );
    out.extend(
        pod.preferred_anti_affinity
            .iter()
            .map(|w| (key("pref", -w.weight, &w.term), -w.weight, &w.term)),
    );
    out
}

/// Adds `delta` to `domain`'s count, dropping it at zero.
fn adjust(map: &mut DomainCounts, domain: &str, delta: i64) {
    match map.get_mut(domain) {
        Some(n) => {
            *n += delta;
            if *n <= 0 {
                map.remove(domain);
            }
        }
        None if delta > 0 => {
            map.insert(domain.to_string(), delta);
        }
        None => {}
    }
}

/// The pods per domain of `key` of a group on `nodes`.
fn count_domains(all: &IndexMap<String, NodeInfo>, nodes: &HashMap<String, u32>, key: &str) -> DomainCounts {
    let mut out = DomainCounts::new();
    for (node, n) in nodes {
        if let Some(d) = all.get(node).filter(|i| i.exists).and_then(|i| i.domain(key)) {
            *out.entry(d.to_string()).or_default() += i64::from(*n);
        }
    }
    out
}

fn bump(map: &mut HashMap<String, u32>, node: &str, up: bool) -> bool {
    if up {
        *map.entry(node.to_string()).or_default() += 1;
    } else if let Some(n) = map.get_mut(node) {
        *n -= 1;
        if *n == 0 {
            map.remove(node);
        }
    }
    map.is_empty()
}

impl Cache {
    /// Adds or updates a Node; returns whether pending pods should look again.
    pub fn set_node(&mut self, node: &Node) -> bool {
        let Some(name) = node.metadata.name.clone() else {
            return false;
        };
        let entry = self.nodes.entry(name.clone());
        let index = entry.index();
        let info = entry.or_insert_with(|| NodeInfo::placeholder(&name));
        let new = !info.exists;
        let old_labels = info.labels.clone();
        let changed = info.set_node(node);
        let relabelled = new || info.labels != old_labels;
        let has_pods = !info.pods.is_empty();
        if new {
            self.order.push(index);
        }
        if relabelled {
            let new_labels = info.labels.clone();
            for (key, domains) in &mut self.key_domains {
                if let Some(d) = old_labels.get(key).filter(|_| !new) {
                    adjust(domains, d, -1);
                }
                if let Some(d) = new_labels.get(key) {
                    adjust(domains, d, 1);
                }
            }
            if has_pods {
                // Its pods now count in other domains (or at all): rare, so recount whole.
                self.recount();
            }
        }
        changed
    }

    /// Removes a Node (its pods stay counted until their own deletion is seen).
    pub fn remove_node(&mut self, name: &str) {
        let Some((index, _, info)) = self.nodes.get_full_mut(name) else {
            return;
        };
        if !info.exists {
            return;
        }
        info.exists = false;
        let has_pods = !info.pods.is_empty();
        for (key, domains) in &mut self.key_domains {
            if let Some(d) = info.labels.get(key) {
                adjust(domains, d, -1);
            }
        }
        self.order.retain(|i| *i != index);
        if !has_pods {
            self.forget_node(index);
        }
        if has_pods {
            self.recount();
        }
    }

    /// Keeps per-domain counts for `key` from now on.
    pub fn track_key(&mut self, key: &str) {
        if self.key_domains.contains_key(key) {
            return;
        }
        let mut domains = HashMap::new();
        for info in self.nodes.values().filter(|n| n.exists) {
            if let Some(d) = info.domain(key) {
                adjust(&mut domains, d, 1);
            }
        }
        self.key_domains.insert(key.to_string(), domains);
        for group in self.groups.values_mut() {
            group
                .domains
                .insert(key.to_string(), count_domains(&self.nodes, &group.nodes, key));
        }
    }

    /// Tracks every topology key the rules of `pod` name.
    pub fn track_pod_keys(&mut self, pod: &PodInfo) {
        let keys: Vec<String> = pod
            .affinity
            .iter()
            .chain(&pod.anti_affinity)
            .map(|t| t.topology_key.clone())
            .chain(
                pod.preferred_affinity
                    .iter()
                    .chain(&pod.preferred_anti_affinity)
                    .map(|w| w.term.topology_key.clone()),
            )
            .chain(pod.spread.iter().map(|c| c.topology_key.clone()))
            .collect();
        for key in keys {
            self.track_key(&key);
        }
    }

    /// Recomputes every per-domain count (after a node holding pods changed labels,
    /// appeared or went).
    fn recount(&mut self) {
        let keys: Vec<String> = self.key_domains.keys().cloned().collect();
        self.key_domains.clear();
        for group in self.groups.values_mut() {
            group.domains.clear();
        }
        for key in keys {
            self.track_key(&key);
        }
        for tg in self.terms.values_mut() {
            tg.domains = count_domains(&self.nodes, &tg.nodes, &tg.term.topology_key);
        }
    }

    /// Node names known to exist, for a relist to drop those that vanished.
    pub fn node_names(&self) -> Vec<String> {
        self.nodes().map(|n| n.name.clone()).collect()
    }

    /// Records a namespace's labels (for namespace selectors in affinity terms).
    pub fn set_namespace(&mut self, name: &str, labels: Labels) {
        self.namespaces.insert(name.to_string(), labels);
    }

    /// Forgets a namespace.
    pub fn remove_namespace(&mut self, name: &str) {
        self.namespaces.remove(name);
    }

    /// The labels of namespace `name`.
    pub fn namespace_labels(&self, name: &str) -> Option<&Labels> {
        self.namespaces.get(name)
    }

    /// Takes note of a pod as the watch shows it: a bound, unfinished pod is counted on
    /// its node (replacing an assumption for it); any other is not counted. Returns
    /// whether the pod had been assumed and is now confirmed or gone.
    pub fn set_pod(&mut self, pod: PodRef) -> bool {
        let was_assumed = self.placed.get(&pod.uid).is_some_and(|p| p.assumed);
        if was_assumed && pod.node_name.is_none() && !pod.terminal {
            // The watch is still behind our binding: keep the assumption.
            return false;
        }
        if let Some(placed) = self.placed.get_mut(&pod.uid) {
            // Nothing counted changed (our binding seen, a status written): the counts
            // stay, and only an assumption becomes a fact.
            if *placed.pod == *pod {
                placed.assumed = false;
                return was_assumed;
            }
        }
        self.remove_pod(&pod.uid);
        if pod.occupies_node() {
            let node = pod.node_name.clone().unwrap_or_default();
            self.place(pod, node, false);
        }
        was_assumed
    }

    /// Counts `pod` on `node` before its binding is written.
    pub fn assume(&mut self, pod: &PodRef, node: &str) {
        let mut bound = (**pod).clone();
        bound.node_name = Some(node.to_string());
        self.remove_pod(&pod.uid);
        self.place(Arc::new(bound), node.to_string(), true);
    }

    /// Drops an assumption whose binding failed; true if there was one.
    pub fn forget(&mut self, uid: &str) -> bool {
        if self.placed.get(uid).is_some_and(|p| p.assumed) {
            self.remove_pod(uid);
            return true;
        }
        false
    }

    /// The node the pod with `uid` is counted on, if any.
    pub fn node_of(&self, uid: &str) -> Option<&str> {
        self.placed.get(uid).map(|p| p.node.as_str())
    }

    /// Whether the pod with `uid` is assumed or bound.
    pub fn is_placed(&self, uid: &str) -> bool {
        self.placed.contains_key(uid)
    }

    /// Uids of every counted pod, for a relist to drop those that vanished.
    pub fn placed_uids(&self) -> HashSet<String> {
        self.placed.keys().cloned().collect()
    }

    fn place(&mut self, pod: PodRef, node: String, assumed: bool) {
        self.index(&pod, &node, true);
        self.nodes
            .entry(node.clone())
            .or_insert_with(|| NodeInfo::placeholder(&node))
            .add_pod(pod.clone());
        self.placed.insert(pod.uid.clone(), Placed { pod, node, assumed });
    }

    /// Stops counting the pod with `uid`.
    pub fn remove_pod(&mut self, uid: &str) -> Option<PodRef> {
        let placed = self.placed.remove(uid)?;
        self.index(&placed.pod, &placed.node, false);
        if let Some((index, _, info)) = self.nodes.get_full_mut(&placed.node) {
            info.remove_pod(uid);
            if !info.exists && info.pods.is_empty() {
                self.forget_node(index);
            }
        }
        Some(placed.pod)
    }

    /// Drops the entry at `index` of a node not in the search order; the positions after
    /// it move down one (rare: a node removed, or the last pod of a vanished one gone).
    fn forget_node(&mut self, index: usize) {
        self.nodes.shift_remove_index(index);
        for i in &mut self.order {
            if *i > index {
                *i -= 1;
            }
        }
    }

    fn index(&mut self, pod: &PodInfo, node: &str, up: bool) {
        for (_, _, term) in terms_of(pod) {
            self.track_key(&term.topology_key);
        }
        let delta = if up { 1 } else { -1 };
        let node_labels = self.nodes.get(node).filter(|n| n.exists).map(|n| &n.labels);
        let key = group_key(pod);
        let group = self.groups.entry(key.clone()).or_insert_with(|| LabelGroup {
            namespace: pod.namespace.clone(),
            labels: pod.labels.clone(),
            ..Default::default()
        });
        for tracked in self.key_domains.keys() {
            let domains = group.domains.entry(tracked.clone()).or_default();
            if let Some(d) = node_labels.and_then(|l| l.get(tracked)) {
                adjust(domains, d, delta);
            }
        }
        if bump(&mut group.nodes, node, up) {
            self.groups.remove(&key);
        }
        for (key, weight, term) in terms_of(pod) {
            let group = self.terms.entry(key.clone()).or_insert_with(|| TermGroup {
                term: term.clone(),
                weight,
                nodes: HashMap::new(),
                domains: DomainCounts::new(),
            });
            if let Some(d) = node_labels.and_then(|l| l.get(&term.topology_key)) {
                adjust(&mut group.domains, d, delta);
            }
            if bump(&mut group.nodes, node, up) {
                self.terms.remove(&key);
            }
        }
        if let Some(owner) = &pod.owner_uid {
            let nodes = self.owners.entry(owner.clone()).or_default();
            if bump(nodes, node, up) {
                self.owners.remove(owner);
            }
        }
    }

    /// The pods of `group` per domain of `key` (counted on the spot if `key` is not
    /// tracked).
    pub fn group_domains<'a>(&'a self, group: &'a LabelGroup, key: &str) -> Cow<'a, DomainCounts> {
        match group.domains.get(key) {
            Some(d) if self.key_domains.contains_key(key) => Cow::Borrowed(d),
            _ => Cow::Owned(count_domains(&self.nodes, &group.nodes, key)),
        }
    }

    /// The pods of a term group per domain of its topology key.
    pub fn term_domains<'a>(&'a self, group: &'a TermGroup) -> &'a DomainCounts {
        &group.domains
    }

    /// Domain of `key` -> how many existing nodes are in it (counted on the spot if
    /// `key` is not tracked).
    pub fn key_domains(&self, key: &str) -> Cow<'_, DomainCounts> {
        match self.key_domains.get(key) {
            Some(d) => Cow::Borrowed(d),
            None => {
                let mut out = HashMap::new();
                for info in self.nodes() {
                    if let Some(d) = info.domain(key) {
                        adjust(&mut out, d, 1);
                    }
                }
                Cow::Owned(out)
            }
        }
    }

    /// The node named `name`, if it exists.
    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.nodes.get(name).filter(|n| n.exists)
    }

    /// How many nodes exist.
    pub fn node_count(&self) -> usize {
        self.order.len()
    }

    /// The `i`th existing node in the round-robin order.
    pub fn node_at(&self, i: usize) -> Option<&NodeInfo> {
        self.order.get(i).and_then(|i| self.nodes.get_index(*i)).map(|(_, n)| n)
    }

    /// Every existing node.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeInfo> {
        self.order
            .iter()
            .filter_map(|i| self.nodes.get_index(*i))
            .map(|(_, n)| n)
    }

    /// Groups of placed pods by (namespace, labels).
    pub fn label_groups(&self) -> impl Iterator<Item = &LabelGroup> {
        self.groups.values()
    }

    /// Terms of placed pods (required anti-affinity, preferred affinity and anti-affinity).
    pub fn term_groups(&self) -> impl Iterator<Item = &TermGroup> {
        self.terms.values()
    }

    /// Node name -> how many pods of controlling owner `uid` are on it.
    pub fn owner_nodes(&self, uid: &str) -> Option<&HashMap<String, u32>> {
        self.owners.get(uid)
    }

    /// Pods on node `name` (bound and assumed).
    pub fn pods_on(&self, name: &str) -> impl Iterator<Item = &PodRef> {
        self.nodes.get(name).into_iter().flat_map(|n| n.pods.values())
    }

    /// For each topology domain of `key` (among existing nodes), the pods in it that a
    /// group filter accepts, summed from the label groups.
    pub fn domain_counts(
        &self,
        key: &str,
        mut accept: impl FnMut(&LabelGroup) -> bool,
        mut node_ok: impl FnMut(&NodeInfo) -> bool,
    ) -> BTreeMap<String, i64> {
        let mut counts = BTreeMap::new();
        for group in self.groups.values().filter(|g| accept(g)) {
            for (node, n) in &group.nodes {
                let Some(info) = self.node(node) else { continue };
                if !node_ok(info) {
                    continue;
                }
                if let Some(domain) = info.domain(key) {
                    *counts.entry(domain.to_string()).or_default() += i64::from(*n);
                }
            }
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str) -> Node {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": {"zone": "a"}},
            "status": {"allocatable": {"cpu": "1", "memory": "1Gi", "pods": "10"},
                "conditions": [{"type": "Ready", "status": "True"}]}}))
        .expect("node")
    }

    fn pod(uid: &str, node: Option<&str>, cpu: &str) -> PodRef {
        let p: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
            "metadata": {"name": uid, "namespace": "default", "uid": uid, "labels": {"app": "web"}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]}}))
        .expect("pod");
        Arc::new(PodInfo::new(&p))
    }

    #[test]
    fn the_search_order_survives_removals() {
        let mut cache = Cache::default();
        // A pod on a node not seen yet makes a placeholder ahead of the real nodes.
        cache.set_pod(pod("early", Some("ghost"), "100m"));
        for name in ["n1", "n2", "n3", "n4"] {
            cache.set_node(&node(name));
        }
        let order = |c: &Cache| {
            (0..c.node_count())
                .filter_map(|i| c.node_at(i).map(|n| n.name.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(order(&cache), ["n1", "n2", "n3", "n4"]);
        // Removing a node, and dropping the placeholder before the others, keeps the rest
        // in order and reachable by position.
        cache.remove_node("n2");
        cache.remove_pod("early");
        assert_eq!(order(&cache), ["n1", "n3", "n4"]);
        assert_eq!(cache.node_names(), ["n1", "n3", "n4"]);
        // A removed node that still holds a pod stays known, out of the search, until
        // the pod goes.
        cache.set_pod(pod("late", Some("n3"), "100m"));
        cache.remove_node("n3");
        assert_eq!(order(&cache), ["n1", "n4"]);
        assert_eq!(cache.pods_on("n3").count(), 1);
        cache.remove_pod("late");
        assert_eq!(cache.pods_on("n3").count(), 0);
        cache.set_node(&node("n5"));
        assert_eq!(order(&cache), ["n1", "n4", "n5"]);
        assert!(cache.node("n3").is_none() && cache.node("n5").is_some());
    }

    #[test]
    fn totals_follow_binds_assumptions_and_deletes() {
        let mut cache = Cache::default();
        assert!(cache.set_node(&node("n1")));
        assert!(!cache.set_node(&node("n1")), "an unchanged node is not news");
        cache.set_pod(pod("a", Some("n1"), "100m"));
        cache.assume(&pod("b", None, "200m"), "n1");
        assert_eq!(cache.node("n1").map(|n| n.requested.milli_cpu), Some(300));
        // An update of b from before its binding keeps the assumption.
        assert!(!cache.set_pod(pod("b", None, "200m")));
        assert_eq!(cache.node("n1").map(|n| n.requested.milli_cpu), Some(300));
        // The bound b replaces the assumption instead of counting twice.
        assert!(cache.set_pod(pod("b", Some("n1"), "200m")));
        assert_eq!(cache.node("n1").map(|n| n.requested.milli_cpu), Some(300));
        assert!(!cache.forget("b"), "a confirmed pod is not forgotten");
        // Seen again unchanged (its status written), b still counts once; resized, it
        // counts its new requests.
        assert!(!cache.set_pod(pod("b", Some("n1"), "200m")));
        assert_eq!(cache.node("n1").map(|n| n.requested.milli_cpu), Some(300));
        cache.set_pod(pod("b", Some("n1"), "250m"));
        assert_eq!(cache.node("n1").map(|n| n.requested.milli_cpu), Some(350));
        cache.assume(&pod("c", None, "300m"), "n1");
        assert!(cache.forget("c"));
        // Assumed on n1 but bound elsewhere (another scheduler won): counted where bound.
        cache.set_node(&node("n2"));
        cache.assume(&pod("d", None, "400m"), "n1");
        assert!(cache.set_pod(pod("d", Some("n2"), "400m")));
        assert_eq!(cache.node("n1").map(|n| n.requested.milli_cpu), Some(350));
        assert_eq!(cache.node("n2").map(|n| n.requested.milli_cpu), Some(400));
        cache.remove_pod("d");
        cache.remove_node("n2");
        cache.remove_pod("a");
        assert_eq!(cache.node("n1").map(|n| n.requested.milli_cpu), Some(250));
        let groups: Vec<_> = cache.label_groups().map(|g| g.nodes.clone()).collect();
        assert_eq!(groups, [HashMap::from([("n1".to_string(), 1)])]);
    }

    #[test]
    fn tracked_domain_counts_follow_pods_and_relabelled_nodes() {
        let mut cache = Cache::default();
        cache.set_node(&node("n1"));
        cache.set_pod(pod("a", Some("n1"), "1m"));
        cache.track_key("zone");
        let web = |c: &Cache| {
            let g = c.label_groups().next().map(|g| c.group_domains(g, "zone").into_owned());
            g.unwrap_or_default()
        };
        assert_eq!(web(&cache), HashMap::from([("a".to_string(), 1)]));
        cache.set_pod(pod("b", Some("n1"), "1m"));
        assert_eq!(web(&cache), HashMap::from([("a".to_string(), 2)]));
        assert_eq!(*cache.key_domains("zone"), HashMap::from([("a".to_string(), 1)]));
        // n1 moves to zone b: its pods move with it.
        let mut moved = node("n1");
        moved.metadata.labels = Some([("zone".to_string(), "b".to_string())].into());
        cache.set_node(&moved);
        assert_eq!(web(&cache), HashMap::from([("b".to_string(), 2)]));
        assert_eq!(*cache.key_domains("zone"), HashMap::from([("b".to_string(), 1)]));
        cache.remove_pod("a");
        cache.remove_pod("b");
        assert!(cache.label_groups().next().is_none());
        cache.remove_node("n1");
        assert!(cache.key_domains("zone").is_empty());
    }

    #[test]
    fn pods_on_an_unseen_node_wait_for_it() {
        let mut cache = Cache::default();
        cache.set_pod(pod("a", Some("late"), "500m"));
        assert!(cache.node("late").is_none());
        assert_eq!(cache.node_count(), 0);
        cache.set_node(&node("late"));
        assert_eq!(cache.node("late").map(|n| n.requested.milli_cpu), Some(500));
        cache.remove_node("late");
        assert!(cache.node("late").is_none());
        cache.remove_pod("a");
        assert!(cache.nodes.is_empty());
    }
}
