use lifecycle_core::{Component, Dep};

#[derive(Component)]
struct Db;

#[derive(Component)]
struct Server {
    #[component(skip, dep)]
    db: Dep<Db>,
}

fn main() {}
