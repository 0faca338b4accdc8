//! The one `cel::Env` every expression is compiled and evaluated with.

use super::functions;
use cel::{extensions, Context, DeclarationError, Env};
use std::sync::{Arc, LazyLock};

static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| {
    // Only declarations made in this crate can fail, and a test builds them.
    Arc::new(build().expect("the CEL environment declares no overload twice"))
});

/// Builds the standard library with the optional syntax (`a.?b`,
/// `optional.of`), cel's strings, lists and math extensions, and the
/// Kubernetes functions.
fn build() -> Result<Env, DeclarationError> {
    let mut env = Env::stdlib().with_optional_support(true);
    env.add_extension(extensions::strings)?;
    env.add_extension(extensions::lists)?;
    env.add_extension(extensions::math)?;
    functions::register(&mut env)?;
    Ok(env)
}

pub(crate) fn shared() -> &'static Arc<Env> {
    &ENV
}

/// Tells whether the shared `Env` declares overloads of a function name.
///
/// cel 0.15 keeps that lookup private. `Context::add_function` performs it
/// publicly and fails with `OverloadConflict` for a declared name, so a
/// throwaway context serves as the probe.
pub(crate) struct FunctionCheck {
    probe: Context<'static, 'static>,
}

impl FunctionCheck {
    pub(crate) fn new() -> Self {
        FunctionCheck {
            probe: Context::with_env(Arc::clone(shared())),
        }
    }

    pub(crate) fn is_declared(&mut self, name: &str) -> bool {
        let declared = self.probe.add_function(name, |x: i64| x);
        matches!(declared, Err(DeclarationError::OverloadConflict { .. }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_builds() {
        assert!(build().is_ok());
    }

    #[test]
    fn function_check_tells_declared_from_unknown() {
        let mut check = FunctionCheck::new();
        for name in [
            "size",
            "startsWith",
            "jsonpatch.escapeKey",
            "quantity",
            "isLessThan",
        ] {
            assert!(check.is_declared(name), "{name}");
        }
        assert!(!check.is_declared("startWith"));
        assert!(
            !check.is_declared("startWith"),
            "asking twice gives the same answer"
        );
    }
}
