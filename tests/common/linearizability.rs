//! A linearizability checker for histories of reads and writes of registers (one
//! register per key), after Wing & Gong with Lowe's memoization, as Knossos and
//! Porcupine do it.
//!
//! A history is linearizable when every operation can be placed at one instant between
//! its call and its return such that, in that order, every read returns the last value
//! written. Linearizability is local, so each key is checked on its own. A write whose
//! outcome is unknown (the client saw an error or a timeout) may take effect at any time
//! after its call, or never: it has no return, and a linearization need not contain it.
//! A read that failed tells nothing and is left out of the history.

use std::collections::{BTreeMap, HashSet};

/// What an operation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Set the register to this value.
    Write(String),
    /// Read the register and saw this value (`None`: the key did not exist).
    Read(Option<String>),
}

/// One operation of a history: when it was called and returned (one clock for all
/// clients), on which key, and what it did.
#[derive(Debug, Clone)]
pub struct Op {
    /// Which client ran it (for the report).
    pub client: usize,
    /// The key (register) it touched.
    pub key: String,
    /// When it was called.
    pub call: u64,
    /// When it returned; `None` for a write whose outcome is unknown.
    pub ret: Option<u64>,
    /// What it did.
    pub kind: Kind,
}

/// Checks a whole history: every key's operations, each key starting at `initial`.
/// Returns a description of the first key with no linearization.
pub fn check(initial: Option<&str>, history: &[Op]) -> Result<(), String> {
    let mut by_key: BTreeMap<&str, Vec<Op>> = BTreeMap::new();
    for op in history {
        by_key.entry(&op.key).or_default().push(op.clone());
    }
    for (key, ops) in by_key {
        check_register(initial, &ops).map_err(|why| format!("key {key}: {why}"))?;
    }
    Ok(())
}

/// One level of the depth-first search: the operations that may come next, which of
/// them is being tried, and the value before it.
struct Frame {
    candidates: Vec<usize>,
    next: usize,
    chosen: Option<usize>,
    before: Option<String>,
}

/// Checks the operations of one register.
pub fn check_register(initial: Option<&str>, ops: &[Op]) -> Result<(), String> {
    // A write of unknown outcome whose value no read saw may as well never have taken
    // effect: leaving it out changes no read. Without them the search stays small.
    let observed: HashSet<&str> = ops
        .iter()
        .filter_map(|op| match &op.kind {
            Kind::Read(Some(v)) => Some(v.as_str()),
            _ => None,
        })
        .collect();
    let ops: Vec<Op> = ops
        .iter()
        .filter(|op| match &op.kind {
            Kind::Write(v) => op.ret.is_some() || observed.contains(v.as_str()),
            Kind::Read(_) => true,
        })
        .cloned()
        .collect();
    let n = ops.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| ops[i].call);
    let required = ops.iter().filter(|op| op.ret.is_some()).count();
    let mut done = vec![false; n];
    let mut bits = vec![0u64; n.div_ceil(64)];
    let mut done_required = 0;
    let mut value: Option<String> = initial.map(str::to_string);
    let mut seen: HashSet<(Vec<u64>, Option<String>)> = HashSet::new();
    // The deepest point reached, for the report.
    let mut deepest = (0, Vec::new());

    // An operation may come next if it was called before every pending operation
    // returned: otherwise one of those returned before it began, and must precede it.
    let candidates = |done: &[bool]| -> Vec<usize> {
        let first_return = (0..n)
            .filter(|&i| !done[i])
            .filter_map(|i| ops[i].ret)
            .min()
            .unwrap_or(u64::MAX);
        order
            .iter()
            .copied()
            .take_while(|&i| ops[i].call < first_return)
            .filter(|&i| !done[i])
            .collect()
    };

    let mut stack = vec![Frame {
        candidates: candidates(&done),
        next: 0,
        chosen: None,
        before: None,
    }];
    loop {
        if done_required == required {
            return Ok(());
        }
        let Some(top) = stack.last_mut() else {
            let (linearized, stuck) = deepest;
            let stuck: Vec<String> = stuck.iter().map(|&i: &usize| format!("  {:?}", ops[i])).collect();
            return Err(format!(
                "not linearizable: at most {linearized} of {n} operations could be ordered; \
                 none of these could come next:\n{}",
                stuck.join("\n")
            ));
        };
        // Undo this level's previous choice before trying the next one.
        if let Some(c) = top.chosen.take() {
            done[c] = false;
            bits[c / 64] &= !(1 << (c % 64));
            value = top.before.take();
            if ops[c].ret.is_some() {
                done_required -= 1;
            }
        }
        if top.next >= top.candidates.len() {
            stack.pop();
            continue;
        }
        let c = top.candidates[top.next];
        top.next += 1;
        let after = match &ops[c].kind {
            Kind::Write(v) => Some(v.clone()),
            Kind::Read(seen) if *seen == value => value.clone(),
            Kind::Read(_) => continue,
        };
        done[c] = true;
        bits[c / 64] |= 1 << (c % 64);
        if ops[c].ret.is_some() {
            done_required += 1;
        }
        let before = std::mem::replace(&mut value, after);
        top.chosen = Some(c);
        top.before = before;
        if !seen.insert((bits.clone(), value.clone())) {
            // This set of operations ending at this value was already explored.
            continue;
        }
        let next = candidates(&done);
        let linearized = done.iter().filter(|d| **d).count();
        if linearized > deepest.0 {
            deepest = (linearized, next.clone());
        }
        stack.push(Frame {
            candidates: next,
            next: 0,
            chosen: None,
            before: None,
        });
    }
}
