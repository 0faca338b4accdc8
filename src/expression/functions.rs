//! The Kubernetes CEL functions that policies call: `jsonpatch.escapeKey`
//! and the quantity library, declared as overloads on the shared `Env`.

use super::quantity::{Quantity, QUANTITY_TYPE};
use cel::common::functions::Function;
use cel::common::types::{CelBool, CelDouble, CelInt, CelString, INT_TYPE, STRING_TYPE};
use cel::common::value::CowVal;
use cel::{DeclarationError, Env, ExecutionError};
use std::cmp::Ordering;

type Outcome<'b, 'v> = Result<CowVal<'b, 'v>, ExecutionError>;

/// Declares the functions on `env`.
pub(crate) fn register(env: &mut Env) -> Result<(), DeclarationError> {
    env.add_overload(
        "jsonpatch.escapeKey",
        "jsonpatch_escapeKey_string",
        vec![STRING_TYPE],
        escape_key,
    )?;

    let quantity = || QUANTITY_TYPE.to_owned();
    env.add_overload("quantity", "string_to_quantity", vec![STRING_TYPE], parse)?;
    env.add_overload(
        "isQuantity",
        "isQuantity_string",
        vec![STRING_TYPE],
        is_quantity,
    )?;
    env.add_overload("string", "quantity_to_string", vec![quantity()], to_string)?;
    let unary: [(&str, Function); 4] = [
        ("sign", sign),
        ("isInteger", is_integer),
        ("asInteger", as_integer),
        ("asApproximateFloat", as_approximate_float),
    ];
    for (name, function) in unary {
        let id = format!("quantity_{name}");
        env.add_member_overload(name, &id, quantity(), vec![], function)?;
    }

    let binary: [(&str, Function); 3] = [
        ("compareTo", compare_to),
        ("isLessThan", is_less_than),
        ("isGreaterThan", is_greater_than),
    ];
    for (name, function) in binary {
        let id = format!("quantity_{name}_quantity");
        env.add_member_overload(name, &id, quantity(), vec![quantity()], function)?;
    }

    let arithmetic: [(&str, Function); 2] = [("add", add), ("sub", sub)];
    for (name, function) in arithmetic {
        let id = format!("quantity_{name}_quantity");
        env.add_member_overload(name, &id, quantity(), vec![quantity()], function)?;
        let id = format!("quantity_{name}_int");
        env.add_member_overload(name, &id, quantity(), vec![INT_TYPE], function)?;
    }
    Ok(())
}

/// Escapes a map key for a JSON Patch path (RFC 6901): `~` becomes `~0`
/// and `/` becomes `~1`.
fn escape_key<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Outcome<'b, 'v> {
    let escaped = match string_arg("escapeKey", &args)? {
        key if key.contains(['~', '/']) => key.replace('~', "~0").replace('/', "~1"),
        // Hand the argument back: it may borrow the request.
        _ => return args.into_iter().next().ok_or_else(missing),
    };
    Ok(CowVal::owned(CelString::from(escaped)))
}

fn parse<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Outcome<'b, 'v> {
    let text = string_arg("quantity", &args)?;
    let quantity =
        Quantity::parse(text).map_err(|e| ExecutionError::function_error("quantity", e))?;
    Ok(CowVal::owned(quantity))
}

fn is_quantity<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Outcome<'b, 'v> {
    let text = string_arg("isQuantity", &args)?;
    Ok(boolean(Quantity::parse(text).is_ok()))
}

fn to_string<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Outcome<'b, 'v> {
    let quantity = quantity_arg(&args, 0)?;
    Ok(CowVal::owned(CelString::from(quantity.to_string())))
}

fn sign<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Outcome<'b, 'v> {
    Ok(CowVal::owned(CelInt::from(quantity_arg(&args, 0)?.sign())))
}

fn is_integer<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Outcome<'b, 'v> {
    Ok(boolean(quantity_arg(&args, 0)?.as_integer().is_some()))
}

fn as_integer<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Outcome<'b, 'v> {
    let quantity = quantity_arg(&args, 0)?;
    let integer = quantity.as_integer().ok_or_else(|| {
        let message = format!(
            "{quantity} is not a whole number within the range of int; test it with isInteger() first"
        );
        ExecutionError::function_error("asInteger", message)
    })?;
    Ok(CowVal::owned(CelInt::from(integer)))
}

fn as_approximate_float<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Outcome<'b, 'v> {
    let float = quantity_arg(&args, 0)?.as_approximate_float();
    Ok(CowVal::owned(CelDouble::from(float)))
}

fn compare_to<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Outcome<'b, 'v> {
    let ordering = quantity_arg(&args, 0)?.cmp(quantity_arg(&args, 1)?);
    Ok(CowVal::owned(CelInt::from(ordering as i64)))
}

fn is_less_than<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Outcome<'b, 'v> {
    let ordering = quantity_arg(&args, 0)?.cmp(quantity_arg(&args, 1)?);
    Ok(boolean(ordering == Ordering::Less))
}

fn is_greater_than<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Outcome<'b, 'v> {
    let ordering = quantity_arg(&args, 0)?.cmp(quantity_arg(&args, 1)?);
    Ok(boolean(ordering == Ordering::Greater))
}

fn add<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Outcome<'b, 'v> {
    let (lhs, rhs) = operands(&args)?;
    let sum = lhs
        .checked_add(&rhs)
        .ok_or_else(|| overflow("add", &lhs, &rhs))?;
    Ok(CowVal::owned(sum))
}

fn sub<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Outcome<'b, 'v> {
    let (lhs, rhs) = operands(&args)?;
    let difference = lhs
        .checked_sub(&rhs)
        .ok_or_else(|| overflow("sub", &lhs, &rhs))?;
    Ok(CowVal::owned(difference))
}

/// Returns the receiver and argument of `add` or `sub`, taking an `int`
/// argument as a quantity of that many units.
fn operands(args: &[CowVal<'_, '_>]) -> Result<(Quantity, Quantity), ExecutionError> {
    let lhs = *quantity_arg(args, 0)?;
    let rhs = match args.get(1).and_then(|arg| arg.downcast_ref::<CelInt>()) {
        Some(units) => lhs.with_units(*units.inner()),
        None => *quantity_arg(args, 1)?,
    };
    Ok((lhs, rhs))
}

fn overflow(function: &str, lhs: &Quantity, rhs: &Quantity) -> ExecutionError {
    let message = format!("{lhs} and {rhs} overflow the range of a quantity");
    ExecutionError::function_error(function, message)
}

fn boolean<'b, 'v>(value: bool) -> CowVal<'b, 'v> {
    CowVal::owned(CelBool::from(value))
}

fn missing() -> ExecutionError {
    ExecutionError::invalid_argument_count(1, 0)
}

fn string_arg<'x>(function: &str, args: &'x [CowVal<'_, '_>]) -> Result<&'x str, ExecutionError> {
    let arg = args.first().ok_or_else(missing)?;
    let string = arg.downcast_ref::<CelString>().ok_or_else(|| {
        let got = arg.get_type().name().to_owned();
        ExecutionError::function_error(function, format!("expected a string, got {got}"))
    })?;
    Ok(string.inner())
}

fn quantity_arg<'x>(
    args: &'x [CowVal<'_, '_>],
    index: usize,
) -> Result<&'x Quantity, ExecutionError> {
    let arg = args.get(index).ok_or_else(missing)?;
    arg.downcast_ref::<Quantity>()
        .ok_or_else(|| ExecutionError::UnexpectedType {
            got: arg.get_type().name().to_owned(),
            want: QUANTITY_TYPE.name().to_owned(),
        })
}
