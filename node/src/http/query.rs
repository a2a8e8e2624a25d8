//! Query strings (`application/x-www-form-urlencoded`): split, percent-decoded, bounded.

use super::problem::Problem;

/// Most parameters read from one query string.
pub const MAX_PARAMS: usize = 32;

/// Decodes `%XX` escapes and `+` (a space). Invalid escapes are kept literally; the result
/// must be UTF-8.
pub fn decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// The `name=value` pairs of a query string, decoded, in order.
pub fn parse(query: Option<&str>) -> Result<Vec<(String, String)>, Problem> {
    let Some(query) = query.filter(|q| !q.is_empty()) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        if out.len() == MAX_PARAMS {
            return Err(Problem::bad_request(
                "request.query",
                format!("more than {MAX_PARAMS} query parameters"),
            ));
        }
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match (decode(name), decode(value)) {
            (Some(name), Some(value)) => out.push((name, value)),
            _ => {
                return Err(Problem::bad_request(
                    "request.query",
                    "the query string is not valid UTF-8",
                ))
            }
        }
    }
    Ok(out)
}

/// Refuses parameters not in `known` with 400, so a typo is not silently ignored.
pub fn only(params: &[(String, String)], known: &[&str]) -> Result<(), Problem> {
    match params
        .iter()
        .find(|(name, _)| !known.contains(&name.as_str()))
    {
        None => Ok(()),
        Some((name, _)) => Err(Problem::bad_request(
            "request.query",
            format!(
                "unknown query parameter {name:?}; known: {}",
                known.join(", ")
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_split_and_decoded() {
        let pairs = parse(Some("state=failed&limit=10&q=a+b%2Fc&flag&&x=%zz")).unwrap();
        let expected = [
            ("state", "failed"),
            ("limit", "10"),
            ("q", "a b/c"),
            ("flag", ""),
            ("x", "%zz"),
        ];
        let got: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        assert_eq!(got, expected);
        assert!(parse(None).unwrap().is_empty());
        assert_eq!(decode("%"), Some("%".into()));
        assert_eq!(decode("%4"), Some("%4".into()));
        assert_eq!(decode("%41"), Some("A".into()));
        assert_eq!(decode("%C3%A9"), Some("é".into()));
        assert_eq!(decode("%ff"), None);
    }

    #[test]
    fn bad_queries_are_400() {
        assert_eq!(parse(Some("a=%ff")).unwrap_err().status, 400);
        let many = vec!["a=1"; MAX_PARAMS + 1].join("&");
        assert_eq!(parse(Some(&many)).unwrap_err().code, "request.query");
        let params = parse(Some("limit=1&lmit=2")).unwrap();
        let error = only(&params, &["limit", "state"]).unwrap_err();
        assert!(error.detail.contains("\"lmit\""), "{}", error.detail);
        assert!(only(&params[..1], &["limit"]).is_ok());
    }
}
