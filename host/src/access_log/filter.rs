//! Access-log filters: the part of CEL that Istio's Telemetry examples use to pick which calls
//! are logged — comparisons of `response.code` with numbers and of `request.method` and
//! `request.path` with strings, joined with `&&`, `||`, `!` and parentheses
//! (`response.code >= 400`). An expression outside that part is refused when the resource is
//! applied, naming what was not understood, rather than logging something else.

/// A parsed filter.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter(Expr);

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Or(Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Code(Op, i64),
    Text(Attr, bool, String),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Attr {
    Method,
    Path,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// What a filter is judged on.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// The response code (0 when none was sent).
    pub code: u16,
    /// The request method.
    pub method: &'a str,
    /// The request path.
    pub path: &'a str,
}

impl Filter {
    /// Parses an expression.
    pub fn parse(text: &str) -> Result<Filter, String> {
        let tokens = tokens(text)?;
        let mut p = Parser { tokens, at: 0 };
        let e = p.or()?;
        match p.tokens.get(p.at) {
            None => Ok(Filter(e)),
            Some(t) => Err(format!("unexpected {t:?}")),
        }
    }

    /// Whether a call is logged.
    pub fn admits(&self, call: &Call<'_>) -> bool {
        eval(&self.0, call)
    }
}

fn eval(e: &Expr, c: &Call<'_>) -> bool {
    match e {
        Expr::Or(a, b) => eval(a, c) || eval(b, c),
        Expr::And(a, b) => eval(a, c) && eval(b, c),
        Expr::Not(a) => !eval(a, c),
        Expr::Code(op, n) => {
            let code = i64::from(c.code);
            match op {
                Op::Eq => code == *n,
                Op::Ne => code != *n,
                Op::Lt => code < *n,
                Op::Le => code <= *n,
                Op::Gt => code > *n,
                Op::Ge => code >= *n,
            }
        }
        Expr::Text(attr, equal, value) => {
            let have = match attr {
                Attr::Method => c.method,
                Attr::Path => c.path,
            };
            (have == value) == *equal
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Int(i64),
    Str(String),
    Op(&'static str),
}

fn tokens(text: &str) -> Result<Vec<Token>, String> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let two = text.get(i..i + 2);
        if let Some(op) = ["&&", "||", "==", "!=", "<=", ">="]
            .into_iter()
            .find(|op| two == Some(*op))
        {
            out.push(Token::Op(op));
            i += 2;
            continue;
        }
        if let Some(op) = ["<", ">", "!", "(", ")"]
            .into_iter()
            .find(|op| op.as_bytes()[0] == c)
        {
            out.push(Token::Op(op));
            i += 1;
            continue;
        }
        if c.is_ascii_digit() {
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            let n = text[start..i]
                .parse()
                .map_err(|_| format!("{:?} is not a number", &text[start..i]))?;
            out.push(Token::Int(n));
            continue;
        }
        if c == b'"' || c == b'\'' {
            let end = text[i + 1..]
                .find(char::from(c))
                .ok_or("a string is not closed")?;
            let s = &text[i + 1..i + 1 + end];
            if s.contains('\\') {
                return Err("escapes in strings are not supported".into());
            }
            out.push(Token::Str(s.to_string()));
            i += end + 2;
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'.') {
                i += 1;
            }
            out.push(Token::Ident(text[start..i].to_string()));
            continue;
        }
        let shown: String = text[i..].chars().take(12).collect();
        return Err(format!("{shown:?} is not understood"));
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn eat(&mut self, op: &str) -> bool {
        if self.tokens.get(self.at)
            == Some(&Token::Op(match op {
                "&&" => "&&",
                "||" => "||",
                "!" => "!",
                "(" => "(",
                ")" => ")",
                _ => return false,
            }))
        {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn or(&mut self) -> Result<Expr, String> {
        let mut e = self.and()?;
        while self.eat("||") {
            e = Expr::Or(Box::new(e), Box::new(self.and()?));
        }
        Ok(e)
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut e = self.unary()?;
        while self.eat("&&") {
            e = Expr::And(Box::new(e), Box::new(self.unary()?));
        }
        Ok(e)
    }

    fn unary(&mut self) -> Result<Expr, String> {
        if self.eat("!") {
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        if self.eat("(") {
            let e = self.or()?;
            if !self.eat(")") {
                return Err("a `(` is not closed".into());
            }
            return Ok(e);
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Expr, String> {
        let ident = match self.tokens.get(self.at) {
            Some(Token::Ident(i)) => i.clone(),
            Some(t) => return Err(format!("expected an attribute, found {t:?}")),
            None => return Err("the expression ends too early".into()),
        };
        if !matches!(
            ident.as_str(),
            "response.code" | "request.method" | "request.path"
        ) {
            return Err(format!(
                "attribute {ident} is not supported (supported: response.code, request.method, request.path)"
            ));
        }
        let op = match self.tokens.get(self.at + 1) {
            Some(Token::Op(o)) => match *o {
                "==" => Op::Eq,
                "!=" => Op::Ne,
                "<" => Op::Lt,
                "<=" => Op::Le,
                ">" => Op::Gt,
                ">=" => Op::Ge,
                other => {
                    return Err(format!(
                        "expected a comparison after {ident}, found {other}"
                    ));
                }
            },
            _ => return Err(format!("expected a comparison after {ident}")),
        };
        let Some(value) = self.tokens.get(self.at + 2).cloned() else {
            return Err("the expression ends too early".into());
        };
        let value = Some(value);
        self.at += 3;
        match (ident.as_str(), value) {
            ("response.code", Some(Token::Int(n))) => Ok(Expr::Code(op, n)),
            ("request.method" | "request.path", Some(Token::Str(s)))
                if matches!(op, Op::Eq | Op::Ne) =>
            {
                let attr = if ident == "request.method" {
                    Attr::Method
                } else {
                    Attr::Path
                };
                Ok(Expr::Text(attr, op == Op::Eq, s))
            }
            _ => Err(format!(
                "{ident}: compare response.code with a number, request.method and request.path with a string (== or !=)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(code: u16, method: &'static str) -> Call<'static> {
        Call {
            code,
            method,
            path: "/charge",
        }
    }

    #[test]
    fn istios_examples_read_and_judge() {
        let errors = Filter::parse("response.code >= 400").expect("parses");
        assert!(errors.admits(&call(503, "GET")));
        assert!(!errors.admits(&call(200, "GET")));
        let f = Filter::parse(
            "response.code >= 500 || (request.method == 'POST' && !(request.path == \"/health\"))",
        )
        .expect("parses");
        assert!(f.admits(&call(500, "GET")));
        assert!(f.admits(&call(200, "POST")));
        assert!(!f.admits(&call(200, "GET")));
    }

    #[test]
    fn what_is_not_understood_is_refused_with_the_reason() {
        for (text, why) in [
            ("response.code >= ", "ends too early"),
            ("response.code > '4'", "compare response.code with a number"),
            (
                "connection.mtls",
                "attribute connection.mtls is not supported",
            ),
            ("response.code", "expected a comparison after response.code"),
            (
                "upstream.port == 80",
                "attribute upstream.port is not supported",
            ),
            ("request.path.startsWith('/a')", "not supported"),
            ("response.code >= 400 &&", "ends too early"),
            ("(response.code == 200", "not closed"),
            ("response.code == 200 200", "unexpected"),
            ("response.code @ 2", "is not understood"),
        ] {
            let err = Filter::parse(text).expect_err(text);
            assert!(err.contains(why), "{text}: {err}");
        }
    }
}
