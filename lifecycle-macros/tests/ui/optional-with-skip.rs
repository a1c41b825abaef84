use lifecycle_core::{Component, Dep};

#[derive(Component)]
struct Db;

#[derive(Component)]
struct Server {
    #[component(skip, optional)]
    db: Dep<Db>,
    #[component(optional)]
    #[component(close)]
    token: lifecycle_core::CancellationToken,
}

fn main() {}
