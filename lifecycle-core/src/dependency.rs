//! Dependencies between components: declared by name or by type, held as typed [`Dep`] handles.

use std::any::TypeId;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use crate::component::Up;
use crate::{Component, ComponentId};

/// One dependency a component declares: by name, or by type (which must then be unique).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Dependency {
    pub(crate) target: Target,
    optional: bool,
}

#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) enum Target {
    Name(ComponentId),
    Type { id: TypeId, name: &'static str },
}

impl Dependency {
    /// A dependency on the component with this name.
    pub fn on(name: impl Into<ComponentId>) -> Self {
        Self { target: Target::Name(name.into()), optional: false }
    }

    /// A dependency on the one registered component of type `T`.
    pub fn on_type<T: Component>() -> Self {
        Self {
            target: Target::Type { id: TypeId::of::<T>(), name: std::any::type_name::<T>() },
            optional: false,
        }
    }

    /// The same dependency, optional: the component still starts after it (or after its first
    /// start failed), stops before it, and keeps running while it is down or restarting; it
    /// asks [`Dep::is_up`] before using it. The service is then degraded, not unready.
    #[must_use]
    pub fn optional(mut self) -> Self {
        self.optional = true;
        self
    }

    /// Whether the dependency is optional.
    pub fn is_optional(&self) -> bool {
        self.optional
    }
}

impl fmt::Display for Dependency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            Target::Name(name) => write!(f, "`{name}`"),
            Target::Type { name, .. } => write!(f, "type `{name}`"),
        }?;
        if self.optional { f.write_str(" (optional)") } else { Ok(()) }
    }
}

impl fmt::Debug for Dependency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl From<ComponentId> for Dependency {
    fn from(name: ComponentId) -> Self {
        Self::on(name)
    }
}

impl From<&'static str> for Dependency {
    fn from(name: &'static str) -> Self {
        Self::on(name)
    }
}

impl<T> From<&Dep<T>> for Dependency {
    fn from(dep: &Dep<T>) -> Self {
        dep.dependency()
    }
}

/// A typed, shared handle to a registered component.
///
/// [`RegistryBuilder::add`](crate::RegistryBuilder::add) returns one through
/// [`Registration::dep`](crate::Registration::dep); pass it to the components that need it and
/// list it in their [`Component::dependencies`], so the registry starts it first and stops it
/// last. [`Context::dep`](crate::Context::dep) finds one by type from inside a hook.
pub struct Dep<T> {
    id: ComponentId,
    component: Arc<T>,
    up: Up,
}

impl<T> Dep<T> {
    pub(crate) fn new(id: ComponentId, component: Arc<T>, up: Up) -> Self {
        Self { id, component, up }
    }

    /// Whether the component is running now: started, and not stopping or restarting. A
    /// component that depends on it [optionally](Dependency::optional) checks this first.
    pub fn is_up(&self) -> bool {
        self.up.get()
    }

    /// The name of the component this handle points to.
    pub fn id(&self) -> &ComponentId {
        &self.id
    }

    /// The dependency to list in [`Component::dependencies`].
    pub fn dependency(&self) -> Dependency {
        Dependency::on(self.id.clone())
    }

    /// The shared component itself.
    pub fn shared(&self) -> &Arc<T> {
        &self.component
    }
}

impl<T> Clone for Dep<T> {
    fn clone(&self) -> Self {
        Self { id: self.id.clone(), component: Arc::clone(&self.component), up: self.up.clone() }
    }
}

impl<T> Deref for Dep<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.component
    }
}

impl<T> fmt::Debug for Dep<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dep").field("id", &self.id).field("type", &std::any::type_name::<T>()).finish()
    }
}
