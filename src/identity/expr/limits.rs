//! How large and how expensive an expression may be, checked when it is
//! compiled, so that one profile cannot take down or hold the operator.
//!
//! Three shapes did: an expression nested thousands of brackets deep
//! overflowed the parser's stack (which aborts the process, and the
//! operator then crash-looped on it); a few nested comprehensions over
//! literal lists held a core for minutes; a `.replace` chain built strings
//! of hundreds of megabytes. The checks here refuse the first two before
//! anything runs; [`super::budget`] bounds what evaluation still does.
//!
//! Order matters: the length and the bracket nesting are read from the
//! source text without recursion, before the parser (which recurses per
//! bracket, with large frames) sees it; the parsed tree's depth is measured
//! without recursion before the recursive walks (the checks here, the
//! interpreter) see it. Parsing itself runs on a thread with a large stack
//! ([`COMPILE_STACK`]), because operator chains (`a + a + …`,
//! `x.f().f()…`) nest the parse tree without brackets: within
//! [`MAX_EXPRESSION_LENGTH`] they need up to a few megabytes of stack.

use kube_cel::cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue};

/// The longest expression, in characters: the CRD schema's `maxLength`,
/// held here too for specs that did not pass the schema.
pub use idsync_api::identity_profile::MAX_EXPRESSION_LENGTH;
/// The deepest nesting of brackets (`(`, `[`, `{`) in an expression's
/// source. The parser needs roughly 100 KiB of stack per level in a debug
/// build (a 2 MiB thread overflows at 20); real expressions nest a handful.
pub const MAX_NESTING: usize = 32;
/// The deepest parsed expression tree: operators, calls, selections and
/// comprehensions nested in one another. The interpreter recurses once (or,
/// for a comprehension, a few times) per level.
pub const MAX_TREE_DEPTH: usize = 100;
/// The largest estimated cost of one expression (see [`estimated_cost`]),
/// as Kubernetes bounds CRD validation rules (its per-expression limit is
/// the same order).
pub const MAX_ESTIMATED_COST: u64 = 1_000_000;
/// How many elements a list of unknown size (an account's groups, an
/// attribute) is assumed to have when estimating: nested comprehensions
/// over accounts' lists multiply it.
pub const ASSUMED_LIST_SIZE: u64 = 100;
/// The stack of the thread that parses and checks expressions. Measured: the
/// longest operator chains that fit in [`MAX_EXPRESSION_LENGTH`] parse in
/// under 64 MiB in a debug build; the memory is reserved, not used.
pub const COMPILE_STACK: usize = 128 << 20;

/// Why an expression is refused as too large or too expensive.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TooComplex {
    #[error("is {length} characters long; expressions are limited to {limit}")]
    Length { length: usize, limit: usize },
    #[error("nests brackets {depth} deep; expressions may nest at most {limit}")]
    Nesting { depth: usize, limit: usize },
    #[error("nests operations {depth} deep; expressions may nest at most {limit}")]
    Depth { depth: usize, limit: usize },
    #[error(
        "nested comprehensions (all, exists, exists_one, map, filter): estimated cost {cost} exceeds the limit of \
         {limit} (a list of unknown size counts as {ASSUMED_LIST_SIZE} elements)"
    )]
    Cost { cost: u64, limit: u64 },
}

/// What can be said of the source text before parsing it.
pub fn check_source(source: &str) -> Result<(), TooComplex> {
    let length = source.chars().count();
    if length > MAX_EXPRESSION_LENGTH {
        return Err(TooComplex::Length { length, limit: MAX_EXPRESSION_LENGTH });
    }
    let depth = bracket_nesting(source);
    if depth > MAX_NESTING {
        return Err(TooComplex::Nesting { depth, limit: MAX_NESTING });
    }
    Ok(())
}

/// What can be said of the parsed tree before walking it recursively.
pub fn check_tree(expr: &IdedExpr) -> Result<(), TooComplex> {
    let depth = tree_depth(expr);
    if depth > MAX_TREE_DEPTH {
        return Err(TooComplex::Depth { depth, limit: MAX_TREE_DEPTH });
    }
    let cost = estimated_cost(expr);
    if cost > MAX_ESTIMATED_COST {
        return Err(TooComplex::Cost { cost, limit: MAX_ESTIMATED_COST });
    }
    Ok(())
}

/// The deepest nesting of brackets outside string literals and comments.
/// Unbalanced text is the parser's to report; this only counts.
pub fn bracket_nesting(source: &str) -> usize {
    let mut chars = source.chars().peekable();
    let (mut depth, mut deepest) = (0usize, 0usize);
    // The character before a quote, to tell a raw string (`r'…'`).
    let mut previous = ' ';
    while let Some(c) = chars.next() {
        match c {
            '(' | '[' | '{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            '/' if chars.peek() == Some(&'/') => {
                // A comment runs to the end of the line.
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '\'' | '"' => {
                let raw = matches!(previous, 'r' | 'R');
                skip_string(&mut chars, c, raw);
            }
            _ => {}
        }
        previous = c;
    }
    deepest
}

/// Skips a string literal whose opening `quote` was just read: `'…'`,
/// `'''…'''` (either quote), with backslash escapes unless `raw`.
fn skip_string(chars: &mut std::iter::Peekable<std::str::Chars<'_>>, quote: char, raw: bool) {
    let mut lookahead = chars.clone();
    let triple = lookahead.next() == Some(quote) && lookahead.next() == Some(quote);
    if triple {
        chars.next();
        chars.next();
    } else if chars.peek() == Some(&quote) {
        // The empty string.
        chars.next();
        return;
    }
    let mut run = 0;
    while let Some(c) = chars.next() {
        if c == '\\' && !raw {
            chars.next();
            run = 0;
            continue;
        }
        if c == quote {
            run += 1;
            if !triple || run == 3 {
                return;
            }
        } else {
            run = 0;
        }
    }
}

/// The children of a node, in no particular order.
fn children(expr: &IdedExpr) -> Vec<&IdedExpr> {
    match &expr.expr {
        Expr::Unspecified | Expr::Ident(_) | Expr::Literal(_) | Expr::Struct(_) => Vec::new(),
        Expr::Select(select) => vec![&select.operand],
        Expr::Call(call) => call.target.iter().map(|t| t.as_ref()).chain(call.args.iter()).collect(),
        Expr::Comprehension(c) => vec![&c.iter_range, &c.accu_init, &c.loop_cond, &c.loop_step, &c.result],
        Expr::List(list) => list.elements.iter().collect(),
        Expr::Map(map) => map
            .entries
            .iter()
            .filter_map(|entry| match &entry.expr {
                EntryExpr::MapEntry(entry) => Some([&entry.key, &entry.value]),
                EntryExpr::StructField(_) => None,
            })
            .flatten()
            .collect(),
    }
}

/// The depth of the tree (a leaf is 1), measured with a stack of our own
/// rather than by recursion, since the tree may be deeper than a thread's
/// stack allows recursing.
pub fn tree_depth(expr: &IdedExpr) -> usize {
    let mut deepest = 0;
    let mut pending = vec![(expr, 1usize)];
    while let Some((node, depth)) = pending.pop() {
        deepest = deepest.max(depth);
        pending.extend(children(node).into_iter().map(|child| (child, depth + 1)));
    }
    deepest
}

/// An estimate of the work one evaluation does: one unit per node, and a
/// comprehension's condition and step once per element of its range. As
/// Kubernetes' estimator does, nested comprehensions multiply: an `all`
/// inside an `all` over lists of 30 costs 900 inner evaluations. Ranges
/// whose size the text shows (a list or map literal, `lists.range(n)`, a
/// comprehension over one of those) count as that size; others as
/// [`ASSUMED_LIST_SIZE`]. Only called on trees within [`MAX_TREE_DEPTH`].
pub fn estimated_cost(expr: &IdedExpr) -> u64 {
    match &expr.expr {
        Expr::Comprehension(c) => {
            let per_element = estimated_cost(&c.loop_cond).saturating_add(estimated_cost(&c.loop_step));
            estimated_size(&c.iter_range)
                .saturating_mul(per_element)
                .saturating_add(estimated_cost(&c.iter_range))
                .saturating_add(estimated_cost(&c.accu_init))
                .saturating_add(estimated_cost(&c.result))
        }
        _ => children(expr).into_iter().fold(1u64, |cost, child| cost.saturating_add(estimated_cost(child))),
    }
}

/// How many elements a comprehension's range is estimated to have.
fn estimated_size(range: &IdedExpr) -> u64 {
    match &range.expr {
        Expr::List(list) => list.elements.len() as u64,
        Expr::Map(map) => map.entries.len() as u64,
        Expr::Call(call) if super::budget::qualified_name(call) == "lists.range" && call.args.len() == 1 => {
            match &call.args[0].expr {
                Expr::Literal(LiteralValue::Int(n)) => u64::try_from(*n.inner()).unwrap_or(0),
                _ => ASSUMED_LIST_SIZE,
            }
        }
        // `map` and `filter` yield at most as many elements as they read.
        Expr::Comprehension(c) => estimated_size(&c.iter_range),
        _ => ASSUMED_LIST_SIZE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube_cel::cel::parser::Parser;

    fn parsed(source: &str) -> IdedExpr {
        Parser::new().parse(source).expect("parses")
    }

    #[test]
    fn nesting_is_counted_outside_strings_and_comments() {
        assert_eq!(bracket_nesting("f(a[1], {'k': (2)})"), 3);
        assert_eq!(bracket_nesting("'((((' + \"[[[\" + '''(('''"), 0);
        assert_eq!(bracket_nesting(r#"'it\'s (' + r'\' + ("x")"#), 1);
        assert_eq!(bracket_nesting("a // ((((\n + (b)"), 1);
        assert_eq!(bracket_nesting("''  + ((1))"), 2);
        assert_eq!(bracket_nesting(&format!("{}1{}", "(".repeat(7000), ")".repeat(7000))), 7000);
    }

    #[test]
    fn source_checks_name_the_limit() {
        let long = format!("'{}'", "a".repeat(MAX_EXPRESSION_LENGTH));
        assert_eq!(check_source(&long), Err(TooComplex::Length { length: 4098, limit: 4096 }));
        assert_eq!(
            check_source(&format!("{}1{}", "[".repeat(33), "]".repeat(33))),
            Err(TooComplex::Nesting { depth: 33, limit: 32 })
        );
        assert_eq!(check_source(&format!("{}1{}", "[".repeat(32), "]".repeat(32))), Ok(()));
        assert_eq!(
            TooComplex::Nesting { depth: 33, limit: 32 }.to_string(),
            "nests brackets 33 deep; expressions may nest at most 32"
        );
    }

    #[test]
    fn depth_is_measured_without_recursion() {
        assert_eq!(tree_depth(&parsed("1")), 1);
        assert_eq!(tree_depth(&parsed("1 + 2")), 2);
        assert_eq!(tree_depth(&parsed("1 + 2 + 3")), 3);
        assert_eq!(tree_depth(&parsed("a.b.c")), 3);
        let chain = parsed(&format!("1{}", " + 1".repeat(150)));
        assert_eq!(check_tree(&chain), Err(TooComplex::Depth { depth: 151, limit: MAX_TREE_DEPTH }));
    }

    #[test]
    fn nested_comprehensions_multiply() {
        let list = |n: usize| format!("[{}]", (1..=n).map(|i| i.to_string()).collect::<Vec<_>>().join(","));
        // One comprehension over 30 elements: cheap.
        let one = estimated_cost(&parsed(&format!("{}.all(a, a > 0)", list(30))));
        assert!(one < 1_000, "{one}");
        // Four nested: 30^4 evaluations of the innermost condition.
        let l = list(30);
        let four = format!("{l}.all(a, {l}.all(b, {l}.all(c, {l}.all(d, a + b + c + d > 0))))");
        let cost = estimated_cost(&parsed(&four));
        assert!(cost > 30u64.pow(4) * 5, "{cost}");
        assert!(matches!(check_tree(&parsed(&four)), Err(TooComplex::Cost { .. })));
        // Unknown lists count as ASSUMED_LIST_SIZE: a comprehension over
        // groups is fine, three nested ones over groups are not.
        assert_eq!(check_tree(&parsed("accounts.hr.groups.filter(g, g.startsWith('a'))")), Ok(()));
        let g = "accounts.hr.groups";
        let three = format!("{g}.all(a, {g}.all(b, {g}.exists(c, a + b == c)))");
        assert!(matches!(check_tree(&parsed(&three)), Err(TooComplex::Cost { .. })));
        assert!(estimated_cost(&parsed("lists.range(100000000).map(i, i)")) > MAX_ESTIMATED_COST);
    }
}
