//! The parsed form of a filter: [`Filter`] and the expression tree under it. Plain data,
//! built only by the parser (`parse`), read by the evaluator (`eval`), the printer
//! (`print`) and the index (`index`).

use std::cmp::Ordering;

use super::path::FieldPath;

/// A parsed filter. Build with [`Filter::parse`]; evaluate with [`Filter::matches`].
#[derive(Clone, Debug, PartialEq)]
pub struct Filter {
    pub(super) root: Expr,
}

/// `And`/`Or` hold at least two operands; parentheses leave no node of their own, so the
/// tree is exactly what canonical printing reproduces.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Expr {
    Or(Vec<Expr>),
    And(Vec<Expr>),
    Not(Box<Expr>),
    Cmp(FieldPath, Op, Literal),
    In(FieldPath, Vec<Literal>),
    Truthy(FieldPath),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Op {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        }
    }

    #[inline]
    pub(super) fn holds(self, ord: Ordering) -> bool {
        match self {
            Op::Eq => ord == Ordering::Equal,
            Op::Ne => ord != Ordering::Equal,
            Op::Lt => ord == Ordering::Less,
            Op::Le => ord != Ordering::Greater,
            Op::Gt => ord == Ordering::Greater,
            Op::Ge => ord != Ordering::Less,
        }
    }
}

/// Numbers are always finite (the parser rejects the rest).
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Literal {
    Null,
    Bool(bool),
    Num(f64),
    Str(Box<str>),
}
