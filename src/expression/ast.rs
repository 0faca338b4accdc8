//! Analysis of the variables and functions an expression uses, from its
//! parsed AST, and the one rewrite applied to the AST before evaluation.

use super::env::{self, FunctionCheck};
use cel::common::ast::operators::{
    ADD, CONDITIONAL, DIVIDE, EQUALS, GREATER, GREATER_EQUALS, IN, INDEX, LESS, LESS_EQUALS,
    LOGICAL_AND, LOGICAL_NOT, LOGICAL_OR, MODULO, MULTIPLY, NEGATE, NOT_EQUALS, NOT_STRICTLY_FALSE,
    OPT_INDEX, OPT_SELECT, SUBSTRACT,
};
use cel::common::ast::{CallExpr, EntryExpr, Expr, LiteralValue};
use cel::IdedExpr;
use std::collections::{BTreeMap, BTreeSet};

/// The operators the interpreter evaluates itself rather than as overloads.
const OPERATORS: [&str; 21] = [
    ADD,
    CONDITIONAL,
    DIVIDE,
    EQUALS,
    GREATER,
    GREATER_EQUALS,
    IN,
    INDEX,
    LESS,
    LESS_EQUALS,
    LOGICAL_AND,
    LOGICAL_NOT,
    LOGICAL_OR,
    MODULO,
    MULTIPLY,
    NEGATE,
    NOT_EQUALS,
    NOT_STRICTLY_FALSE,
    OPT_INDEX,
    OPT_SELECT,
    SUBSTRACT,
];

/// The variables an expression reads and the functions it calls.
#[derive(Debug, Default)]
pub(crate) struct Analysis {
    /// Identifiers read from the activation, not bound by a comprehension.
    pub(crate) roots: BTreeSet<String>,
    /// Field names selected on a root with `.f`, `["f"]`, `.?f` or `[?"f"]`.
    pub(crate) members: BTreeMap<String, BTreeSet<String>>,
    /// Roots also read other than by a literal field name.
    pub(crate) read_whole: BTreeSet<String>,
    /// The first call of a function the `Env` does not declare, with the
    /// id of its node.
    pub(crate) unknown_function: Option<(String, u64)>,
    /// The nesting depth of the AST: a chain `a + b + c` nests one level
    /// per operator.
    pub(crate) depth: usize,
}

impl Analysis {
    pub(crate) fn of(expr: &IdedExpr) -> Analysis {
        let mut walker = Walker {
            functions: FunctionCheck::new(),
            scope: Vec::new(),
            analysis: Analysis::default(),
            depth: 0,
        };
        walker.walk(expr);
        walker.analysis
    }
}

struct Walker<'e> {
    functions: FunctionCheck,
    /// The variables of the enclosing comprehensions.
    scope: Vec<&'e str>,
    analysis: Analysis,
    /// The depth of the node being walked.
    depth: usize,
}

impl<'e> Walker<'e> {
    fn walk(&mut self, expr: &'e IdedExpr) {
        self.depth += 1;
        self.analysis.depth = self.analysis.depth.max(self.depth);
        self.walk_node(expr);
        self.depth -= 1;
    }

    fn walk_node(&mut self, expr: &'e IdedExpr) {
        match &expr.expr {
            Expr::Ident(_) => {
                if let Some(root) = self.root(expr) {
                    self.read(root, None);
                }
            }
            Expr::Select(select) => match self.root(&select.operand) {
                Some(root) => self.read(root, Some(&select.field)),
                None => self.walk(&select.operand),
            },
            Expr::Call(call) => self.call(expr.id, call),
            Expr::Comprehension(comprehension) => {
                self.walk(&comprehension.iter_range);
                self.walk(&comprehension.accu_init);
                let depth = self.scope.len();
                self.scope.push(&comprehension.iter_var);
                self.scope.extend(comprehension.iter_var2.as_deref());
                self.scope.push(&comprehension.accu_var);
                self.walk(&comprehension.loop_cond);
                self.walk(&comprehension.loop_step);
                self.walk(&comprehension.result);
                self.scope.truncate(depth);
            }
            Expr::List(list) => list.elements.iter().for_each(|e| self.walk(e)),
            Expr::Map(map) => map.entries.iter().for_each(|e| self.entry(&e.expr)),
            Expr::Struct(r#struct) => r#struct.entries.iter().for_each(|e| self.entry(&e.expr)),
            Expr::Literal(_) | Expr::Unspecified => {}
        }
    }

    fn entry(&mut self, entry: &'e EntryExpr) {
        match entry {
            EntryExpr::MapEntry(entry) => {
                self.walk(&entry.key);
                self.walk(&entry.value);
            }
            EntryExpr::StructField(field) => self.walk(&field.value),
        }
    }

    fn call(&mut self, id: u64, call: &'e CallExpr) {
        let indexes = [INDEX, OPT_INDEX, OPT_SELECT].contains(&call.func_name.as_str());
        if let ([operand, key], true) = (call.args.as_slice(), indexes) {
            if let (Some(root), Expr::Literal(LiteralValue::String(field))) =
                (self.root(operand), &key.expr)
            {
                self.read(root, Some(field.inner()));
                return;
            }
        }
        match &call.target {
            Some(target) => {
                // `jsonpatch.escapeKey(k)` calls a function: `jsonpatch` is its namespace.
                let qualified = qualified_name(target).map(|t| format!("{t}.{}", call.func_name));
                if !qualified.is_some_and(|name| self.functions.is_declared(&name)) {
                    self.check(id, &call.func_name);
                    self.walk(target);
                }
            }
            None if OPERATORS.contains(&call.func_name.as_str()) => {}
            None => self.check(id, &call.func_name),
        }
        call.args.iter().for_each(|arg| self.walk(arg));
    }

    fn check(&mut self, id: u64, function: &str) {
        if self.analysis.unknown_function.is_none() && !self.functions.is_declared(function) {
            self.analysis.unknown_function = Some((function.to_owned(), id));
        }
    }

    /// Returns the variable `expr` names, if it is an identifier that no
    /// enclosing comprehension binds and that is not a type name such as `int`.
    fn root(&self, expr: &'e IdedExpr) -> Option<&'e str> {
        let Expr::Ident(name) = &expr.expr else {
            return None;
        };
        let is_type = env::shared().types().find_type(name).is_some();
        (!self.scope.contains(&name.as_str()) && !is_type).then_some(name)
    }

    fn read(&mut self, root: &str, member: Option<&str>) {
        let analysis = &mut self.analysis;
        analysis.roots.insert(root.to_owned());
        match member {
            Some(member) => {
                let members = analysis.members.entry(root.to_owned()).or_default();
                members.insert(member.to_owned());
            }
            None => {
                analysis.read_whole.insert(root.to_owned());
            }
        }
    }
}

/// `a.b.c` for the identifier `a` and the selections `.b.c` on it.
fn qualified_name(expr: &IdedExpr) -> Option<String> {
    match &expr.expr {
        Expr::Ident(name) => Some(name.clone()),
        Expr::Select(select) if !select.test => {
            qualified_name(&select.operand).map(|prefix| format!("{prefix}.{}", select.field))
        }
        _ => None,
    }
}

/// Puts list and map literals on the right of `==` and `!=`.
///
/// cel 0.15 evaluates equality by calling `equals` on the left operand, and
/// a `CelMap` or `CelList` there only equals its own kind, so
/// `{"a": "b"} == object.metadata.labels` would be false against a view.
/// The views compare with any map or list, and equality is symmetric.
pub(crate) fn put_literals_right(expr: &mut IdedExpr) {
    if let Expr::Call(call) = &mut expr.expr {
        let is_equality = [EQUALS, NOT_EQUALS].contains(&call.func_name.as_str());
        if let ([lhs, rhs], true) = (call.args.as_mut_slice(), is_equality) {
            if is_container_literal(lhs) && !is_container_literal(rhs) {
                std::mem::swap(lhs, rhs);
            }
        }
    }
    for child in children(expr) {
        put_literals_right(child);
    }
}

fn is_container_literal(expr: &IdedExpr) -> bool {
    matches!(expr.expr, Expr::List(_) | Expr::Map(_))
}

fn children(expr: &mut IdedExpr) -> Vec<&mut IdedExpr> {
    match &mut expr.expr {
        Expr::Call(call) => call
            .target
            .as_deref_mut()
            .into_iter()
            .chain(&mut call.args)
            .collect(),
        Expr::Select(select) => vec![&mut *select.operand],
        Expr::Comprehension(c) => vec![
            &mut c.iter_range,
            &mut c.accu_init,
            &mut c.loop_cond,
            &mut c.loop_step,
            &mut c.result,
        ],
        Expr::List(list) => list.elements.iter_mut().collect(),
        Expr::Map(map) => map
            .entries
            .iter_mut()
            .flat_map(|e| entry_children(&mut e.expr))
            .collect(),
        Expr::Struct(s) => s
            .entries
            .iter_mut()
            .flat_map(|e| entry_children(&mut e.expr))
            .collect(),
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => Vec::new(),
    }
}

fn entry_children(entry: &mut EntryExpr) -> Vec<&mut IdedExpr> {
    match entry {
        EntryExpr::MapEntry(entry) => vec![&mut entry.key, &mut entry.value],
        EntryExpr::StructField(field) => vec![&mut field.value],
    }
}
