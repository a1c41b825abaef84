use lifecycle_core::Component;

#[derive(Component)]
struct Borrowing<'a> {
    config: &'a str,
}

fn main() {}
