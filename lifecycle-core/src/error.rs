//! Errors in how components were put together, found before anything starts.

use std::fmt;

use crate::text::joined;
use crate::{ComponentId, Dependency};

/// Why [`RegistryBuilder::build`](crate::RegistryBuilder::build) rejected the components.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// Two components have the same name.
    #[error("component name `{name}` is used twice: {}; give one of them another name", Owners(.first_type, .second_type))]
    DuplicateName {
        /// The name used twice.
        name: ComponentId,
        /// Type of the first component with this name.
        first_type: &'static str,
        /// Type of the second component with this name.
        second_type: &'static str,
    },
    /// A component depends on something that is not registered.
    #[error("component `{component}` depends on {dependency}, which is not registered{}", Suggestions(.suggestions))]
    MissingDependency {
        /// The component that declared the dependency.
        component: ComponentId,
        /// The dependency that was not found.
        dependency: Dependency,
        /// Registered names close to the one asked for.
        suggestions: Vec<ComponentId>,
    },
    /// A dependency by type matches more than one component.
    #[error("component `{component}` depends on {dependency}, but {} components have that type ({}); depend on one by name", .candidates.len(), List(.candidates))]
    AmbiguousDependency {
        /// The component that declared the dependency.
        component: ComponentId,
        /// The dependency by type.
        dependency: Dependency,
        /// Every component of that type.
        candidates: Vec<ComponentId>,
    },
    /// Components depend on each other in a circle.
    #[error("dependency cycle: {}", Cycle(.path))]
    Cycle {
        /// The components on the cycle, the first repeated at the end.
        path: Vec<ComponentId>,
    },
    /// A run setting has a value it cannot work with.
    #[error("setting `{setting}` is {value}, but must be {expected}")]
    InvalidSetting {
        /// The setting's name, as the builder method that sets it.
        setting: &'static str,
        /// The value given.
        value: String,
        /// What it must be.
        expected: &'static str,
    },
    /// A component's option has a value it cannot work with.
    #[error("component `{component}`: option `{setting}` is {value}, but must be {expected}")]
    InvalidComponentSetting {
        /// The component.
        component: ComponentId,
        /// The option's name.
        setting: &'static str,
        /// The value given.
        value: String,
        /// What it must be.
        expected: &'static str,
    },
    /// A component that cannot start twice depends, directly or not, on one with a restart
    /// policy: a restart of that one would have to restart it too.
    #[error(
        "component `{component}` cannot start twice (it is not restartable), but a restart of `{restarted_with}` would restart it, as it depends on it; remove the restart policy of `{restarted_with}`"
    )]
    NotRestartable {
        /// The component that cannot start twice.
        component: ComponentId,
        /// The component with a restart policy it depends on.
        restarted_with: ComponentId,
    },
    /// More than one of the above; each is listed.
    #[error("{} problems:\n{}", .0.len(), Lines(.0))]
    Several(Vec<BuildError>),
}

impl BuildError {
    /// One error as itself, several as [`BuildError::Several`].
    pub(crate) fn from_list(mut errors: Vec<BuildError>) -> Self {
        if errors.len() == 1 {
            if let Some(error) = errors.pop() {
                return error;
            }
        }
        BuildError::Several(errors)
    }

    /// Every problem, one by one (a single error is a list of one).
    pub fn problems(&self) -> Vec<&BuildError> {
        match self {
            BuildError::Several(errors) => errors.iter().collect(),
            one => vec![one],
        }
    }
}

struct Lines<'a>(&'a [BuildError]);

impl fmt::Display for Lines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        joined(f, self.0, "\n", |f, error| write!(f, "  - {error}"))
    }
}

/// The two types that claimed one name: the same type twice says so.
struct Owners<'a>(&'a str, &'a str);

impl fmt::Display for Owners<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == self.1 {
            write!(f, "two components of type `{}` have it", self.0)
        } else {
            write!(f, "by `{}` and by `{}`", self.0, self.1)
        }
    }
}

/// Why [`Context::dep`](crate::Context::dep) found no handle.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DependencyError {
    /// None of the component's declared dependencies has the type asked for.
    #[error("component `{component}` asked for a dependency of type `{type_name}`, but declares none of that type (it declares: {})", List(.declared))]
    NotDeclared {
        /// The component that asked.
        component: ComponentId,
        /// The type asked for.
        type_name: &'static str,
        /// What the component does depend on.
        declared: Vec<ComponentId>,
    },
    /// Several declared dependencies have the type asked for.
    #[error("component `{component}` asked for its dependency of type `{type_name}`, but it has several ({}); use `dep_named`", List(.candidates))]
    Ambiguous {
        /// The component that asked.
        component: ComponentId,
        /// The type asked for.
        type_name: &'static str,
        /// The dependencies of that type.
        candidates: Vec<ComponentId>,
    },
    /// The named dependency has another type.
    #[error("component `{component}` asked for dependency `{name}` as `{type_name}`, but it is a `{actual}`")]
    WrongType {
        /// The component that asked.
        component: ComponentId,
        /// The dependency's name.
        name: ComponentId,
        /// The type asked for.
        type_name: &'static str,
        /// The dependency's real type.
        actual: &'static str,
    },
}

struct List<'a>(&'a [ComponentId]);

impl fmt::Display for List<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("nothing");
        }
        joined(f, self.0, ", ", |f, id| write!(f, "`{id}`"))
    }
}

struct Suggestions<'a>(&'a [ComponentId]);

impl fmt::Display for Suggestions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            [] => Ok(()),
            [one] => write!(f, "; did you mean `{one}`?"),
            many => write!(f, "; did you mean one of {}?", List(many)),
        }
    }
}

/// `a` depends on `b`, which depends on `a`.
struct Cycle<'a>(&'a [ComponentId]);

impl fmt::Display for Cycle<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some((first, rest)) = self.0.split_first() else { return Ok(()) };
        write!(f, "`{first}` depends on ")?;
        joined(f, rest, ", which depends on ", |f, id| write!(f, "`{id}`"))?;
        if rest.len() == 1 {
            f.write_str(" (itself)")?;
        }
        Ok(())
    }
}
