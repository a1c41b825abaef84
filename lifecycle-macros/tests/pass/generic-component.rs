use lifecycle_core::{BoxError, Component, Dep, Registry};

#[derive(Component)]
struct Store;

/// Generic components are supported: the impl requires `Self: Send + Sync + 'static`.
#[derive(Component)]
#[component(start = warm, stop_timeout = "1m30s", critical = false)]
struct Cache<V: Send + Sync + 'static> {
    store: Dep<Store>,
    values: std::sync::Mutex<Vec<V>>,
}

impl<V: Send + Sync + 'static> Cache<V> {
    async fn warm(&self) -> Result<(), BoxError> {
        let _ = &self.store;
        Ok(())
    }
}

/// A tuple struct with a resource field.
#[derive(Component)]
struct Guard(#[component(close)] lifecycle_core::CancellationToken);

fn main() {
    let mut builder = Registry::builder();
    let store = builder.add(Store).dep();
    builder.add(Cache::<u64> { store, values: Default::default() });
    builder.add(Guard(Default::default()));
    assert!(builder.build().is_ok());
}
