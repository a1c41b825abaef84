use lifecycle_core::{Component, Dep};

#[derive(Component)]
struct Node {
    parent: Dep<Node>,
}

#[derive(Component)]
#[component(depends_on(Self))]
struct Loop;

fn main() {}
