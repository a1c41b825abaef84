use lifecycle_core::Component;

#[derive(Component)]
union Bits {
    int: u32,
    float: f32,
}

fn main() {}
