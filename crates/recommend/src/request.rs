//! A price request: parsing from query strings or JSON, validation, the grid
//! rule and the normalised cache key.

use features::SummaryRow;
use serde::{Deserialize, Serialize};

use crate::{PriceGrid, RecommendError, Result};

/// Default number of candidate prices (the original's `num_price_bins`).
pub const DEFAULT_PRICE_BINS: usize = 100;
/// The parameters [`PriceRequest::from_pairs`] accepts (the pricing routes'
/// query, and the fields of the JSON body besides the stock code).
pub const QUERY_PARAMETERS: [&str; 12] = [
    "unitprice_min",
    "unitprice_max",
    "num_price_bins",
    "country",
    "customerid",
    "objective",
    "basis",
    "unit_cost",
    "max_change",
    "price_ending",
    "min_margin",
    "current_price",
];
/// Fewest candidate prices a request may ask for.
pub const MIN_PRICE_BINS: usize = 2;
/// Most candidate prices a request may ask for.
pub const MAX_PRICE_BINS: usize = 1000;
/// Highest unit price a request may name (GBP): larger is a typo.
const MAX_UNIT_PRICE: f64 = 1.0e6;
/// Longest accepted stock code (the data's longest is 12 characters).
const MAX_STOCKCODE_LEN: usize = 16;
/// Longest accepted country name.
const MAX_COUNTRY_LEN: usize = 64;

/// What a client asks for. Build it with [`PriceRequest::new`] and the
/// builder methods, or parse it with [`PriceRequest::from_pairs`].
///
/// ```
/// let req = recommend::PriceRequest::new("85123A").price_range(2.0, 4.0).bins(50);
/// assert!(req.validate().is_ok());
/// let bad = recommend::PriceRequest::new("85123A").price_range(4.0, 2.0);
/// assert!(bad.validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct PriceRequest {
    /// Product (letters and digits only: it ends up in cache keys and paths).
    pub stockcode: String,
    /// Lowest candidate price; default from the product's observed prices.
    pub unitprice_min: Option<f64>,
    /// Highest candidate price; default from the product's observed prices.
    pub unitprice_max: Option<f64>,
    /// Number of candidate prices, 2..=1000.
    pub num_price_bins: usize,
    /// Price for customers in this country instead of the recent buyers' own.
    pub country: Option<String>,
    /// A registered customer's id: prices for registered customers.
    pub customer_id: Option<String>,
    /// What to maximise (default: revenue).
    pub objective: Objective,
    /// Per order line or per week (default: [`Basis::DEFAULT`]).
    pub basis: Option<Basis>,
    /// Unit cost for `profit` and `min_margin` (default: the product's cost on
    /// file, if any).
    pub unit_cost: Option<f64>,
    /// Largest change from the current price, as a fraction (0.1: ±10 %).
    pub max_change: Option<f64>,
    /// Candidate prices must end like this.
    pub price_ending: Option<PriceEnding>,
    /// Smallest margin `(price − cost) / price`, as a fraction.
    pub min_margin: Option<f64>,
    /// The price charged now, as the shop's catalogue has it (default: the
    /// list price of the product's latest sales lines). The uplift, the
    /// "keep the price" candidate and `max_change` are relative to it.
    pub current_price: Option<f64>,
}

/// What a recommendation maximises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    /// `price × quantity`.
    #[default]
    Revenue,
    /// `(price − unit cost) × quantity`.
    Profit,
}

/// The quantity a recommendation maximises over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Basis {
    /// Units per order line at the product's recent buyers (the original's
    /// basis: it ignores that a price also changes how many orders come).
    Line,
    /// Units per week: orders per week × units per order.
    Week,
}

impl Default for Basis {
    fn default() -> Self {
        Basis::DEFAULT
    }
}

impl Basis {
    /// The default basis: per week. The backtest (`cargo xtask backtest`,
    /// README) shows the line basis recommends edge prices whenever orders
    /// respond to price, because it cannot see them.
    pub const DEFAULT: Basis = Basis::Week;
}

/// How candidate prices must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum PriceEnding {
    /// `x.99`.
    #[serde(rename = "99")]
    Ninety9,
    /// `x.49` or `x.99`.
    #[serde(rename = "49")]
    Forty9,
    /// Multiples of 0.05.
    #[serde(rename = "0.05")]
    Step05,
}

impl PriceEnding {
    /// Whether a price in pence ends like this.
    pub fn accepts_pence(self, pence: i64) -> bool {
        match self {
            PriceEnding::Ninety9 => pence % 100 == 99,
            PriceEnding::Forty9 => matches!(pence % 100, 49 | 99),
            PriceEnding::Step05 => pence % 5 == 0,
        }
    }

    /// The parameter value.
    pub fn name(self) -> &'static str {
        match self {
            PriceEnding::Ninety9 => "99",
            PriceEnding::Forty9 => "49",
            PriceEnding::Step05 => "0.05",
        }
    }
}

impl PriceRequest {
    /// A request with every optional parameter at its default.
    pub fn new(stockcode: impl Into<String>) -> Self {
        Self {
            stockcode: stockcode.into(),
            unitprice_min: None,
            unitprice_max: None,
            num_price_bins: DEFAULT_PRICE_BINS,
            country: None,
            customer_id: None,
            objective: Objective::Revenue,
            basis: None,
            unit_cost: None,
            max_change: None,
            price_ending: None,
            min_margin: None,
            current_price: None,
        }
    }

    /// Maximise profit with this unit cost.
    pub fn profit(mut self, unit_cost: f64) -> Self {
        self.objective = Objective::Profit;
        self.unit_cost = Some(unit_cost);
        self
    }

    /// Prices from this current price instead of the one inferred from the
    /// product's latest sales.
    pub fn current_price(mut self, price: f64) -> Self {
        self.current_price = Some(price);
        self
    }

    /// Sets the basis.
    pub fn basis(mut self, basis: Basis) -> Self {
        self.basis = Some(basis);
        self
    }

    /// Sets both price bounds.
    pub fn price_range(mut self, min: f64, max: f64) -> Self {
        self.unitprice_min = Some(min);
        self.unitprice_max = Some(max);
        self
    }

    /// Sets the number of candidate prices.
    pub fn bins(mut self, n: usize) -> Self {
        self.num_price_bins = n;
        self
    }

    /// Parses the original API's parameters (`unitprice_min`, `unitprice_max`,
    /// `num_price_bins`, `country`, `customerid`) from name/value pairs, such
    /// as a decoded query string. Unknown names are rejected, as are repeated
    /// ones; empty values mean "default". The result is validated.
    pub fn from_pairs<'a>(
        stockcode: &str,
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self> {
        let mut req = Self::new(stockcode);
        let mut seen: Vec<&str> = Vec::new();
        for (name, value) in pairs {
            let Some(&parameter) = QUERY_PARAMETERS.iter().find(|k| **k == name) else {
                return Err(RecommendError::InvalidParameter {
                    parameter: "query",
                    reason: format!(
                        "unknown parameter `{}` (expected one of {})",
                        truncate(name),
                        QUERY_PARAMETERS.join(", ")
                    ),
                });
            };
            if seen.contains(&parameter) {
                return Err(invalid(parameter, "given more than once"));
            }
            seen.push(parameter);
            let value = value.trim();
            if value.is_empty() {
                continue;
            }
            match parameter {
                "unitprice_min" => req.unitprice_min = Some(parse_price(parameter, value)?),
                "unitprice_max" => req.unitprice_max = Some(parse_price(parameter, value)?),
                "num_price_bins" => {
                    req.num_price_bins = value.parse::<usize>().map_err(|_| {
                        invalid(
                            parameter,
                            &format!(
                                "`{}` is not a whole number in {MIN_PRICE_BINS}..={MAX_PRICE_BINS}",
                                truncate(value)
                            ),
                        )
                    })?
                }
                "country" => req.country = Some(value.to_string()),
                "customerid" => req.customer_id = Some(value.to_string()),
                "objective" => {
                    req.objective = match value {
                        "revenue" => Objective::Revenue,
                        "profit" => Objective::Profit,
                        _ => {
                            return Err(invalid(
                                parameter,
                                &format!("`{}` is not revenue or profit", truncate(value)),
                            ));
                        }
                    }
                }
                "basis" => {
                    req.basis = Some(match value {
                        "line" => Basis::Line,
                        "week" => Basis::Week,
                        _ => {
                            return Err(invalid(
                                parameter,
                                &format!("`{}` is not line or week", truncate(value)),
                            ));
                        }
                    })
                }
                "unit_cost" => req.unit_cost = Some(parse_number(parameter, value)?),
                "max_change" => req.max_change = Some(parse_number(parameter, value)?),
                "min_margin" => req.min_margin = Some(parse_number(parameter, value)?),
                "current_price" => req.current_price = Some(parse_price(parameter, value)?),
                _ => {
                    req.price_ending = Some(match value {
                        "99" | ".99" | "0.99" => PriceEnding::Ninety9,
                        "49" | ".49" | "0.49" => PriceEnding::Forty9,
                        "0.05" | ".05" | "5" => PriceEnding::Step05,
                        _ => {
                            return Err(invalid(
                                parameter,
                                &format!("`{}` is not 99, 49 or 0.05", truncate(value)),
                            ));
                        }
                    })
                }
            }
        }
        req.validate()?;
        Ok(req)
    }

    /// Parses the original's SageMaker-style JSON body
    /// (`{"stockcode": "85123A", "unitprice_min": 1.5, ...}`); numbers may be
    /// JSON numbers or strings.
    pub fn from_json(body: &serde_json::Value) -> Result<Self> {
        let obj = body
            .as_object()
            .ok_or_else(|| RecommendError::InvalidParameter {
                parameter: "body",
                reason: "expected a JSON object".into(),
            })?;
        let stockcode = match obj.get("stockcode") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            Some(_) => return Err(invalid("stockcode", "must be a string")),
            None => return Err(invalid("stockcode", "is required")),
        };
        let mut text: Vec<(String, String)> = Vec::new();
        for (k, v) in obj {
            if k == "stockcode" {
                continue;
            }
            let value = match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Null => String::new(),
                other => {
                    return Err(RecommendError::InvalidParameter {
                        parameter: "body",
                        reason: format!(
                            "`{}` must be a number or a string, not {other}",
                            truncate(k)
                        ),
                    });
                }
            };
            text.push((k.clone(), value));
        }
        Self::from_pairs(
            &stockcode,
            text.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )
    }

    /// Checks every parameter; errors name the parameter.
    pub fn validate(&self) -> Result<()> {
        let code = &self.stockcode;
        if code.is_empty()
            || code.len() > MAX_STOCKCODE_LEN
            || !code.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(invalid(
                "stockcode",
                &format!(
                    "`{}` is not a stock code (1-{MAX_STOCKCODE_LEN} ASCII letters and digits)",
                    truncate(code)
                ),
            ));
        }
        for (name, v) in [
            ("unitprice_min", self.unitprice_min),
            ("unitprice_max", self.unitprice_max),
            ("current_price", self.current_price),
        ] {
            if let Some(v) = v {
                check_price(name, v)?;
            }
        }
        if let (Some(lo), Some(hi)) = (self.unitprice_min, self.unitprice_max)
            && lo > hi
        {
            return Err(invalid(
                "unitprice_min",
                &format!("{lo} is above unitprice_max {hi}"),
            ));
        }
        if !(MIN_PRICE_BINS..=MAX_PRICE_BINS).contains(&self.num_price_bins) {
            return Err(invalid(
                "num_price_bins",
                &format!(
                    "{} is outside {MIN_PRICE_BINS}..={MAX_PRICE_BINS}",
                    self.num_price_bins
                ),
            ));
        }
        if let Some(c) = &self.country
            && (c.is_empty()
                || c.len() > MAX_COUNTRY_LEN
                || !c
                    .chars()
                    .all(|ch| ch.is_alphabetic() || " .-'&()".contains(ch)))
        {
            return Err(invalid(
                "country",
                &format!("`{}` is not a country name", truncate(c)),
            ));
        }
        if let Some(c) = self.unit_cost
            && !(c.is_finite() && (0.0..=MAX_UNIT_PRICE).contains(&c))
        {
            return Err(invalid(
                "unit_cost",
                &format!("{c} is not a cost in 0..={MAX_UNIT_PRICE}"),
            ));
        }
        if let Some(m) = self.max_change
            && !(m.is_finite() && m > 0.0 && m <= 1.0)
        {
            return Err(invalid(
                "max_change",
                &format!("{m} is not a fraction in (0, 1] (0.1 allows ±10 %)"),
            ));
        }
        if let Some(m) = self.min_margin
            && !(m.is_finite() && (0.0..1.0).contains(&m))
        {
            return Err(invalid(
                "min_margin",
                &format!("{m} is not a fraction in [0, 1) (0.3 is 30 %)"),
            ));
        }
        if let Some(id) = &self.customer_id {
            let digits = id.strip_suffix(".0").unwrap_or(id);
            if digits.is_empty() || digits.len() > 12 || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(invalid(
                    "customerid",
                    &format!("`{}` is not a customer id (digits)", truncate(id)),
                ));
            }
        }
        Ok(())
    }

    /// The candidate-price grid for `product`, whose current price is
    /// `current` (see the crate docs for the rule). With `max_change` and
    /// neither bound given, the grid is the allowed range around the current
    /// price: the question is then "which price within ±m", and the
    /// observed range (often topped by the current price) must not hide it.
    pub fn grid(&self, product: &SummaryRow, current: f64) -> Result<PriceGrid> {
        if let (Some(m), None, None) = (self.max_change, self.unitprice_min, self.unitprice_max)
            && current.is_finite()
            && current > 0.0
        {
            return Ok(PriceGrid {
                unitprice_min: (current * (1.0 - m)).max(0.01 * current),
                unitprice_max: current * (1.0 + m),
                num_price_bins: self.num_price_bins,
                rule: format!(
                    "±{:.0}% around the current price {current:.2} (max_change)",
                    100.0 * m
                ),
            });
        }
        let (mut lo, mut hi) = (product.price_p05, product.price_p95);
        let mut rule = "5th-95th percentile of the product's observed prices".to_string();
        if !(lo.is_finite() && hi.is_finite() && lo > 0.0 && hi > lo) {
            let mid = product.price_median;
            lo = 0.8 * mid;
            hi = 1.2 * mid;
            rule = "±20% around the product's only observed price".into();
        }
        let (lo, hi, rule) = match (self.unitprice_min, self.unitprice_max) {
            (Some(a), Some(b)) => (a, b, "as requested".to_string()),
            (Some(a), None) => {
                if a > hi {
                    return Err(invalid(
                        "unitprice_min",
                        &format!("{a} is above the default unitprice_max {hi:.4} ({rule})"),
                    ));
                }
                (a, hi, format!("unitprice_min as requested; max: {rule}"))
            }
            (None, Some(b)) => {
                if b < lo {
                    return Err(invalid(
                        "unitprice_max",
                        &format!("{b} is below the default unitprice_min {lo:.4} ({rule})"),
                    ));
                }
                (lo, b, format!("unitprice_max as requested; min: {rule}"))
            }
            (None, None) => (lo, hi, rule),
        };
        Ok(PriceGrid {
            unitprice_min: lo,
            unitprice_max: hi,
            num_price_bins: self.num_price_bins,
            rule,
        })
    }

    /// A cache key of the normalised request: equal for requests that get the
    /// same answer (a customer id only makes the request a registered one).
    pub fn cache_key(&self) -> String {
        let bound = |v: Option<f64>| v.map_or_else(|| "auto".to_string(), |v| format!("{v:?}"));
        format!(
            "{}|{}|{}|{}|{}|{}|{:?}|{:?}|{}|{}|{}|{}|{}",
            self.stockcode,
            bound(self.unitprice_min),
            bound(self.unitprice_max),
            self.num_price_bins,
            self.country.as_deref().unwrap_or("*"),
            if self.customer_id.is_some() {
                "registered"
            } else {
                "*"
            },
            self.objective,
            self.basis.unwrap_or(Basis::DEFAULT),
            bound(self.unit_cost),
            bound(self.max_change),
            self.price_ending.map_or("*", PriceEnding::name),
            bound(self.min_margin),
            bound(self.current_price),
        )
    }
}

fn invalid(parameter: &'static str, reason: &str) -> RecommendError {
    RecommendError::InvalidParameter {
        parameter,
        reason: reason.to_string(),
    }
}

/// At most 40 characters of client input, for error messages.
fn truncate(s: &str) -> String {
    let mut t: String = s.chars().take(40).collect();
    if t.len() < s.len() {
        t.push('…');
    }
    t
}

fn parse_number(parameter: &'static str, value: &str) -> Result<f64> {
    value
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| {
            invalid(
                parameter,
                &format!("`{}` is not a finite number", truncate(value)),
            )
        })
}

fn parse_price(parameter: &'static str, value: &str) -> Result<f64> {
    let v = value
        .parse::<f64>()
        .map_err(|_| invalid(parameter, &format!("`{}` is not a number", truncate(value))))?;
    check_price(parameter, v)?;
    Ok(v)
}

fn check_price(parameter: &'static str, v: f64) -> Result<()> {
    if !v.is_finite() {
        return Err(invalid(parameter, &format!("{v} is not a finite number")));
    }
    if v <= 0.0 {
        return Err(invalid(parameter, &format!("{v} is not a positive price")));
    }
    if v > MAX_UNIT_PRICE {
        return Err(invalid(
            parameter,
            &format!("{v} is above the largest accepted price {MAX_UNIT_PRICE}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param_of(e: RecommendError) -> &'static str {
        match e {
            RecommendError::InvalidParameter { parameter, .. } => parameter,
            other => panic!("expected an invalid parameter, got {other}"),
        }
    }

    #[test]
    fn every_bad_input_names_its_parameter() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case<'_>] = &[
            ("85123A", &[("unitprice_min", "abc")], "unitprice_min"),
            ("85123A", &[("unitprice_max", "NaN")], "unitprice_max"),
            ("85123A", &[("unitprice_min", "inf")], "unitprice_min"),
            ("85123A", &[("unitprice_min", "-1")], "unitprice_min"),
            ("85123A", &[("unitprice_max", "0")], "unitprice_max"),
            (
                "85123A",
                &[("unitprice_min", "5"), ("unitprice_max", "2")],
                "unitprice_min",
            ),
            ("85123A", &[("num_price_bins", "1")], "num_price_bins"),
            ("85123A", &[("num_price_bins", "1001")], "num_price_bins"),
            ("85123A", &[("num_price_bins", "2.5")], "num_price_bins"),
            ("85123A", &[("num_price_bins", "-3")], "num_price_bins"),
            ("85123A", &[("customerid", "12a")], "customerid"),
            ("85123A", &[("country", "<script>")], "country"),
            ("85123A", &[("colour", "red")], "query"),
            (
                "85123A",
                &[("num_price_bins", "5"), ("num_price_bins", "6")],
                "num_price_bins",
            ),
            ("85123A/../x", &[], "stockcode"),
            ("85123A*", &[], "stockcode"),
            ("", &[], "stockcode"),
            ("ABCDEFGHIJKLMNOPQ", &[], "stockcode"),
        ];
        for (code, pairs, expected) in cases {
            let err = PriceRequest::from_pairs(code, pairs.iter().copied())
                .expect_err(&format!("{code} {pairs:?} must be rejected"));
            assert_eq!(param_of(err), *expected, "{code} {pairs:?}");
        }
    }

    #[test]
    fn good_input_parses_and_normalises() {
        let r = PriceRequest::from_pairs(
            "85123A",
            [
                ("unitprice_min", "1.5"),
                ("unitprice_max", " 3 "),
                ("num_price_bins", "20"),
                ("country", "United Kingdom"),
                ("customerid", "17850.0"),
            ],
        )
        .unwrap();
        assert_eq!(r.unitprice_min, Some(1.5));
        assert_eq!(r.unitprice_max, Some(3.0));
        assert_eq!(r.num_price_bins, 20);
        let other_customer = PriceRequest {
            customer_id: Some("12345".into()),
            ..r.clone()
        };
        assert_eq!(r.cache_key(), other_customer.cache_key());
        assert_ne!(r.cache_key(), PriceRequest::new("85123A").cache_key());
        // The catalogue's current price changes the answer, so the key.
        let priced = PriceRequest::from_pairs("85123A", [("current_price", "2.95")]).unwrap();
        assert_eq!(priced.current_price, Some(2.95));
        assert_ne!(priced.cache_key(), PriceRequest::new("85123A").cache_key());
        // Empty values mean "default".
        let d = PriceRequest::from_pairs("85123A", [("unitprice_min", "")]).unwrap();
        assert_eq!(d, PriceRequest::new("85123A"));
    }

    #[test]
    fn json_body_accepts_numbers_and_strings() {
        let body = serde_json::json!({"stockcode": "85123A", "unitprice_min": 1.5, "num_price_bins": "10"});
        let r = PriceRequest::from_json(&body).unwrap();
        assert_eq!((r.unitprice_min, r.num_price_bins), (Some(1.5), 10));
        let missing = serde_json::json!({"unitprice_min": 1.5});
        assert_eq!(
            param_of(PriceRequest::from_json(&missing).unwrap_err()),
            "stockcode"
        );
        assert_eq!(
            param_of(PriceRequest::from_json(&serde_json::json!([1])).unwrap_err()),
            "body"
        );
    }
}
