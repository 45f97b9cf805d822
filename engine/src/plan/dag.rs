//! Graph algorithms over job needs: cycles (with their path), reachability
//! and levels. Built on petgraph.

use petgraph::algo::tarjan_scc;
use petgraph::graph::{DiGraph, NodeIndex};

/// `needs[i]` lists the jobs job `i` needs.
pub type Needs = [Vec<usize>];

fn graph(needs: &Needs) -> DiGraph<(), ()> {
    let mut g = DiGraph::with_capacity(needs.len(), needs.iter().map(Vec::len).sum());
    for _ in needs {
        g.add_node(());
    }
    for (i, ns) in needs.iter().enumerate() {
        for &n in ns {
            // Edge i -> n reads "i needs n".
            g.add_edge(NodeIndex::new(i), NodeIndex::new(n), ());
        }
    }
    g
}

/// Every dependency cycle, one path per strongly connected component, as
/// job indices `[a, b, c]` meaning `a needs b needs c needs a`. Each path
/// starts at the component's lowest index; cycles are sorted by it.
/// `None` when the graph is acyclic.
pub fn find_cycles(needs: &Needs) -> Option<Vec<Vec<usize>>> {
    let g = graph(needs);
    let mut cycles = Vec::new();
    for scc in tarjan_scc(&g) {
        let self_loop = scc.len() == 1 && needs[scc[0].index()].contains(&scc[0].index());
        if scc.len() < 2 && !self_loop {
            continue;
        }
        let members: std::collections::BTreeSet<usize> = scc.iter().map(|n| n.index()).collect();
        let start = *members.iter().next().expect("non-empty component");
        cycles.push(shortest_cycle(needs, &members, start));
    }
    if cycles.is_empty() {
        return None;
    }
    cycles.sort();
    Some(cycles)
}

/// Breadth-first search inside one component for the shortest way back to
/// `start`.
fn shortest_cycle(
    needs: &Needs,
    members: &std::collections::BTreeSet<usize>,
    start: usize,
) -> Vec<usize> {
    let mut prev: std::collections::HashMap<usize, usize> = std::collections::HashMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(at) = queue.pop_front() {
        for &n in &needs[at] {
            if n == start {
                let mut path = vec![at];
                let mut cur = at;
                while cur != start {
                    cur = prev[&cur];
                    path.push(cur);
                }
                path.reverse();
                return path;
            }
            if members.contains(&n) && !prev.contains_key(&n) && n != start {
                prev.insert(n, at);
                queue.push_back(n);
            }
        }
    }
    vec![start]
}

/// True when job `from` needs job `to`, directly or transitively.
pub fn reaches(needs: &Needs, from: usize, to: usize) -> bool {
    let mut seen = vec![false; needs.len()];
    let mut stack = vec![from];
    while let Some(at) = stack.pop() {
        for &n in &needs[at] {
            if n == to {
                return true;
            }
            if !std::mem::replace(&mut seen[n], true) {
                stack.push(n);
            }
        }
    }
    false
}

/// Level of each job in an acyclic graph: 0 without needs, else one more
/// than its highest need.
pub fn levels(needs: &Needs) -> Vec<usize> {
    let g = graph(needs);
    let order = petgraph::algo::toposort(&g, None).expect("levels of a cyclic graph");
    let mut level = vec![0usize; needs.len()];
    // toposort lists a job before the jobs it needs (edges point at needs),
    // so walk it backwards: needs first.
    for n in order.into_iter().rev() {
        let i = n.index();
        level[i] = needs[i].iter().map(|&d| level[d] + 1).max().unwrap_or(0);
    }
    level
}
