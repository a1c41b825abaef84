//! The dependency graph: resolving declared dependencies to components, and rejecting cycles.

use std::collections::{HashMap, HashSet};

use crate::dependency::Target;
use crate::error::BuildError;
use crate::{ComponentId, Dependency};

/// What the graph needs to know about one component.
pub(crate) struct GraphInput<'a> {
    pub(crate) id: &'a ComponentId,
    pub(crate) type_id: std::any::TypeId,
    pub(crate) type_name: &'static str,
    pub(crate) dependencies: &'a [Dependency],
}

/// Components by index, with edges both ways. Indices are registration order.
#[derive(Debug)]
pub(crate) struct Graph {
    dependencies: Vec<Vec<usize>>,
    dependents: Vec<Vec<usize>>,
    /// Edges declared optional only, as (dependent, dependency).
    optional: HashSet<(usize, usize)>,
}

impl Graph {
    /// Resolves every declared dependency and checks names are unique and edges form no cycle.
    /// Returns every problem found, not only the first.
    pub(crate) fn build(nodes: &[GraphInput<'_>]) -> Result<Self, Vec<BuildError>> {
        let mut errors = Vec::new();
        let mut by_name: HashMap<&str, usize> = HashMap::with_capacity(nodes.len());
        for (index, node) in nodes.iter().enumerate() {
            if let Some(&first) = by_name.get(node.id.as_str()) {
                errors.push(BuildError::DuplicateName {
                    name: node.id.clone(),
                    first_type: nodes[first].type_name,
                    second_type: node.type_name,
                });
                continue;
            }
            by_name.insert(node.id.as_str(), index);
        }

        let mut dependencies = vec![Vec::new(); nodes.len()];
        let mut dependents = vec![Vec::new(); nodes.len()];
        let mut optional = HashSet::new();
        for (index, node) in nodes.iter().enumerate() {
            for dependency in node.dependencies {
                let target = match resolve(nodes, &by_name, node.id, dependency) {
                    Ok(target) => target,
                    Err(error) => {
                        errors.push(error);
                        continue;
                    }
                };
                // A dependency declared twice is one edge, optional only if declared so each time.
                if !dependencies[index].contains(&target) {
                    dependencies[index].push(target);
                    dependents[target].push(index);
                    if dependency.is_optional() {
                        optional.insert((index, target));
                    }
                } else if !dependency.is_optional() {
                    optional.remove(&(index, target));
                }
            }
        }

        let graph = Self { dependencies, dependents, optional };
        // Among the edges that resolved, so a typo elsewhere does not hide a cycle.
        if let Some(cycle) = graph.find_cycle() {
            errors.push(BuildError::Cycle { path: cycle.into_iter().map(|i| nodes[i].id.clone()).collect() });
        }
        if errors.is_empty() { Ok(graph) } else { Err(errors) }
    }

    pub(crate) fn len(&self) -> usize {
        self.dependencies.len()
    }

    /// What `index` depends on.
    pub(crate) fn dependencies(&self, index: usize) -> &[usize] {
        &self.dependencies[index]
    }

    /// What depends on `index`.
    pub(crate) fn dependents(&self, index: usize) -> &[usize] {
        &self.dependents[index]
    }

    /// Whether `dependent` depends on `dependency` optionally: it starts without it, and keeps
    /// running while it restarts.
    pub(crate) fn is_optional(&self, dependent: usize, dependency: usize) -> bool {
        !self.optional.is_empty() && self.optional.contains(&(dependent, dependency))
    }

    /// A cycle as a path whose first node is repeated at its end, if there is one.
    fn find_cycle(&self) -> Option<Vec<usize>> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            OnPath,
            Done,
        }
        let mut marks = vec![Mark::New; self.len()];
        // Iterative depth-first search: a 1,000-deep chain must not overflow the stack.
        for root in 0..self.len() {
            if marks[root] != Mark::New {
                continue;
            }
            let mut path: Vec<(usize, usize)> = vec![(root, 0)];
            marks[root] = Mark::OnPath;
            while let Some(&mut (node, ref mut next_edge)) = path.last_mut() {
                if let Some(&next) = self.dependencies[node].get(*next_edge) {
                    *next_edge += 1;
                    match marks[next] {
                        Mark::New => {
                            marks[next] = Mark::OnPath;
                            path.push((next, 0));
                        }
                        Mark::OnPath => {
                            let start = path.iter().position(|&(n, _)| n == next).unwrap_or(0);
                            let mut cycle: Vec<usize> = path[start..].iter().map(|&(n, _)| n).collect();
                            cycle.push(next);
                            return Some(cycle);
                        }
                        Mark::Done => {}
                    }
                } else {
                    marks[node] = Mark::Done;
                    path.pop();
                }
            }
        }
        None
    }
}

fn resolve(
    nodes: &[GraphInput<'_>],
    by_name: &HashMap<&str, usize>,
    component: &ComponentId,
    dependency: &Dependency,
) -> Result<usize, BuildError> {
    match &dependency.target {
        Target::Name(name) => {
            by_name.get(name.as_str()).copied().ok_or_else(|| BuildError::MissingDependency {
                component: component.clone(),
                dependency: dependency.clone(),
                suggestions: suggest(name.as_str(), others(nodes, component)),
            })
        }
        Target::Type { id, name } => {
            let matches: Vec<usize> = (0..nodes.len()).filter(|&i| nodes[i].type_id == *id).collect();
            match matches.as_slice() {
                [one] => Ok(*one),
                [] => Err(BuildError::MissingDependency {
                    component: component.clone(),
                    dependency: dependency.clone(),
                    suggestions: suggest(
                        &ComponentId::of_type_name(name).to_string(),
                        others(nodes, component),
                    ),
                }),
                many => Err(BuildError::AmbiguousDependency {
                    component: component.clone(),
                    dependency: dependency.clone(),
                    candidates: many.iter().map(|&i| nodes[i].id.clone()).collect(),
                }),
            }
        }
    }
}

/// The names a component could have meant: never its own.
fn others<'a>(
    nodes: &'a [GraphInput<'_>],
    component: &'a ComponentId,
) -> impl Iterator<Item = &'a ComponentId> {
    nodes.iter().map(|n| n.id).filter(move |id| *id != component)
}

/// Registered names close enough to `wanted` to be what the user meant, closest first.
fn suggest<'a>(wanted: &str, names: impl Iterator<Item = &'a ComponentId>) -> Vec<ComponentId> {
    let wanted_lower = wanted.to_lowercase();
    let limit = (wanted.chars().count() / 3).max(2);
    let mut close: Vec<(usize, &ComponentId)> = names
        .filter_map(|name| {
            let candidate = name.as_str().to_lowercase();
            let distance = strsim::levenshtein(&wanted_lower, &candidate);
            // Containment counts only for names long enough to mean something: `a` is in everything.
            let long_enough = candidate.chars().count().min(wanted_lower.chars().count()) >= 3;
            let related =
                long_enough && (candidate.contains(&wanted_lower) || wanted_lower.contains(&candidate));
            (distance <= limit || related).then_some((distance, name))
        })
        .collect();
    close.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)));
    close.into_iter().take(3).map(|(_, name)| name.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_are_close_names_only() {
        let names = [ComponentId::from("database"), ComponentId::from("cache"), ComponentId::from("http")];
        assert_eq!(suggest("databse", names.iter()), vec![ComponentId::from("database")]);
        assert!(suggest("metrics", names.iter()).is_empty());
    }
}
