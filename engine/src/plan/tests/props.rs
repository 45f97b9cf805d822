//! Property tests of planner invariants over random workflows.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use proptest::prelude::*;

use crate::plan::plan_str;

/// A random DAG: job `i` may need any job `j < i`.
fn dag_strategy() -> impl Strategy<Value = Vec<Vec<usize>>> {
    (1usize..40).prop_flat_map(|n| {
        (0..n)
            .map(|i| {
                proptest::collection::btree_set(0..i.max(1), 0..=i.min(3))
                    .prop_map(move |s| s.into_iter().filter(|&j| j < i).collect::<Vec<_>>())
            })
            .collect::<Vec<_>>()
    })
}

fn yaml(needs: &[Vec<usize>], order: &[usize]) -> String {
    let mut y = String::from("jobs:\n");
    for &i in order {
        let _ = writeln!(y, "  j{i}:");
        if !needs[i].is_empty() {
            let ns: Vec<String> = needs[i].iter().map(|j| format!("j{j}")).collect();
            let _ = writeln!(y, "    needs: [{}]", ns.join(", "));
        }
        let _ = writeln!(y, "    run: echo {i}");
    }
    y
}

proptest! {
    #[test]
    fn topological_order_respects_needs(needs in dag_strategy(), seed in any::<u64>()) {
        // Write the jobs in a shuffled order: the plan must not depend on it.
        let mut order: Vec<usize> = (0..needs.len()).collect();
        let mut s = seed;
        for i in (1..order.len()).rev() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            order.swap(i, (s >> 33) as usize % (i + 1));
        }
        let p = plan_str("p.yaml", &yaml(&needs, &order)).map_err(|d| TestCaseError::fail(d.render(false)))?;
        prop_assert_eq!(p.nodes.len(), needs.len());
        let pos: std::collections::HashMap<&str, usize> = p.nodes.iter().enumerate().map(|(i, n)| (n.name.as_str(), i)).collect();
        for (i, ns) in needs.iter().enumerate() {
            let me = pos[format!("j{i}").as_str()];
            for j in ns {
                let dep = pos[format!("j{j}").as_str()];
                prop_assert!(dep < me, "j{} is ordered before its need j{}", i, j);
                prop_assert!(p.nodes[dep].level < p.nodes[me].level);
            }
        }
        let longest = p.nodes.iter().map(|n| n.level + 1).max().unwrap();
        prop_assert_eq!(p.critical_path, longest);
    }

    #[test]
    fn cycle_detection_finds_every_injected_cycle(
        needs in dag_strategy(),
        rings in proptest::collection::vec(1usize..5, 1..4),
    ) {
        // Disjoint rings r{k}_0 -> r{k}_1 -> ... -> r{k}_0, plus an acyclic
        // part whose jobs may need ring members (which adds no cycle).
        let mut y = yaml(&needs, &(0..needs.len()).collect::<Vec<_>>());
        for (k, &len) in rings.iter().enumerate() {
            for m in 0..len {
                let _ = writeln!(y, "  r{k}-{m}:\n    needs: [r{k}-{}]\n    run: x", (m + 1) % len);
            }
        }
        let d = plan_str("c.yaml", &y).expect_err("cycles must be rejected");
        let cycles: Vec<&str> = d.items.iter().map(|d| d.message.as_str()).filter(|m| m.starts_with("dependency cycle") || m.ends_with("needs itself")).collect();
        prop_assert_eq!(cycles.len(), rings.len(), "{:?}", cycles);
        for (k, &len) in rings.iter().enumerate() {
            let members: BTreeSet<String> = (0..len).map(|m| format!("r{k}-{m}")).collect();
            let found = cycles.iter().any(|c| {
                let named: BTreeSet<String> = c.trim_start_matches("dependency cycle: ").split(" -> ").map(|s| s.trim_start_matches("job `").split('`').next().unwrap_or("").to_string()).collect();
                named == members
            });
            prop_assert!(found, "ring {} ({:?}) not reported in {:?}", k, members, cycles);
        }
    }

    #[test]
    fn matrix_expansion_is_the_product_minus_exclusions(
        sizes in proptest::collection::vec(1usize..5, 1..4),
        excludes in proptest::collection::vec(proptest::collection::vec(0usize..5, 1..4), 0..4),
    ) {
        let axes: Vec<String> = (0..sizes.len()).map(|a| format!("a{a}")).collect();
        let mut y = String::from("jobs:\n  t:\n    matrix:\n");
        for (a, &n) in sizes.iter().enumerate() {
            let vals: Vec<String> = (0..n).map(|v| v.to_string()).collect();
            let _ = writeln!(y, "      a{a}: [{}]", vals.join(", "));
        }
        // Each exclude names a prefix of the axes with values in range.
        let mut rules: Vec<Vec<(usize, usize)>> = Vec::new();
        for e in &excludes {
            let rule: Vec<(usize, usize)> = e.iter().enumerate().take(sizes.len()).map(|(a, v)| (a, v % sizes[a])).collect();
            rules.push(rule);
        }
        if !rules.is_empty() {
            y.push_str("      exclude:\n");
            for r in &rules {
                let fields: Vec<String> = r.iter().map(|(a, v)| format!("{}: {v}", axes[*a])).collect();
                let _ = writeln!(y, "        - {{{}}}", fields.join(", "));
            }
        }
        y.push_str("    run: x\n");
        // Brute force the expected count.
        let total: usize = sizes.iter().product();
        let mut expected = 0;
        for mut c in 0..total {
            let mut cell = vec![0; sizes.len()];
            for a in (0..sizes.len()).rev() {
                cell[a] = c % sizes[a];
                c /= sizes[a];
            }
            if !rules.iter().any(|r| r.iter().all(|(a, v)| cell[*a] == *v)) {
                expected += 1;
            }
        }
        match plan_str("m.yaml", &y) {
            Ok(p) => {
                prop_assert_eq!(p.nodes.len(), expected);
                let names: BTreeSet<&str> = p.nodes.iter().map(|n| n.name.as_str()).collect();
                prop_assert_eq!(names.len(), expected, "names are unique");
            }
            Err(d) => {
                prop_assert_eq!(expected, 0, "{}", d.render(false));
            }
        }
    }
}
