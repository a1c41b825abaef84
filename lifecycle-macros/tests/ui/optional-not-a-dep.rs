use lifecycle_core::{Component, Dep};

#[derive(Component)]
struct Db;

#[derive(Component)]
struct Server {
    #[component(optional)]
    db: Option<Dep<Db>>,
}

fn main() {}
