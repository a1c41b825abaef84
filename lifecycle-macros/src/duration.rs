//! Human durations in attributes: `"5s"`, `"250ms"`, `"1m30s"`, `"1.5s"`.

/// The units a duration may use, with their length in nanoseconds.
const UNITS: [(&str, u128); 6] = [
    ("h", 3_600_000_000_000),
    ("m", 60_000_000_000),
    ("s", 1_000_000_000),
    ("ms", 1_000_000),
    ("us", 1_000),
    ("µs", 1_000),
];

const EXAMPLES: &str = "write it like \"5s\", \"250ms\" or \"1m30s\" (units: h, m, s, ms, us)";

/// Parses a timeout into nanoseconds, or says what is wrong with it.
pub(crate) fn parse(text: &str) -> Result<u64, String> {
    parse_nonzero(text, "a timeout of zero fails every hook at once")
}

/// Parses `text` into nanoseconds, or says what is wrong with it; `zero` says why zero is refused.
pub(crate) fn parse_nonzero(text: &str, zero: &str) -> Result<u64, String> {
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    if compact.is_empty() {
        return Err(format!("empty duration; {EXAMPLES}"));
    }
    let mut rest = compact.as_str();
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        let unit_len = after.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        if number.is_empty() {
            return Err(format!("`{unit}` has no number before it in \"{text}\"; {EXAMPLES}"));
        }
        if unit.is_empty() {
            return Err(format!("`{number}` has no unit in \"{text}\"; {EXAMPLES}"));
        }
        let Some(&(_, nanos_per_unit)) = UNITS.iter().find(|(name, _)| *name == unit) else {
            return Err(format!("unknown unit `{unit}` in \"{text}\"; {EXAMPLES}"));
        };
        total += scaled(number, nanos_per_unit)
            .ok_or_else(|| format!("`{number}` is not a number; {EXAMPLES}"))?;
        rest = next;
    }
    if total == 0 {
        return Err(format!("\"{text}\" is zero: {zero}"));
    }
    u64::try_from(total)
        .map_err(|_| format!("\"{text}\" is too long: durations here stop at about 584 years"))
}

/// `number` (digits with at most one decimal point) times `unit` nanoseconds, exactly.
fn scaled(number: &str, unit: u128) -> Option<u128> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
        return None;
    }
    let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().ok()? };
    let mut nanos = whole.checked_mul(unit)?;
    let mut scale = unit;
    for digit in fraction.chars() {
        scale /= 10;
        nanos = nanos.checked_add(u128::from(digit.to_digit(10)?) * scale)?;
    }
    Some(nanos)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn accepts_units_and_combinations() {
        assert_eq!(parse("5s"), Ok(5_000_000_000));
        assert_eq!(parse("250ms"), Ok(250_000_000));
        assert_eq!(parse("1m30s"), Ok(90_000_000_000));
        assert_eq!(parse("1m 30s"), Ok(90_000_000_000));
        assert_eq!(parse("1.5s"), Ok(1_500_000_000));
        assert_eq!(parse("2h"), Ok(7_200_000_000_000));
        assert_eq!(parse("10us"), Ok(10_000));
    }

    #[test]
    fn rejects_what_it_cannot_read() {
        assert!(parse("").unwrap_err().starts_with("empty duration"));
        assert!(parse("30").unwrap_err().starts_with("`30` has no unit"));
        assert!(parse("5sec").unwrap_err().starts_with("unknown unit `sec`"));
        assert!(parse("0s").unwrap_err().contains("is zero"));
        assert!(parse("1.2.3s").unwrap_err().contains("is not a number"));
        assert!(parse("99999999999h").unwrap_err().contains("too long"));
        assert!(parse("s").unwrap_err().contains("has no number"));
    }
}
